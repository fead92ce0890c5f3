"""Optimizers: bitsandbytes AdamW8bit (the seed's choice) or torch AdamW."""

import torch

from housevox.errors import HousevoxError

OPTIMIZERS = ("adamw8bit", "adamw")


def build_optimizer(params, kind: str, lr: float, weight_decay: float, min_8bit_size: int = 4096):
    """8-bit Adam states quarter the optimizer memory of r-128 LoRA; tensors below `min_8bit_size` stay fp32."""
    params = [p for p in params if p.requires_grad]
    if kind == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay, min_8bit_size=min_8bit_size)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)
    raise HousevoxError(f"model.optimizer_type: unknown optimizer {kind!r} (choose from {', '.join(OPTIMIZERS)})")
