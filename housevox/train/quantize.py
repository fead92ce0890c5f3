"""Low-memory mode: the frozen DiT's Linear layers quantised with bitsandbytes under the LoRA (QLoRA style).

Only the transformer blocks (`dit.layers`) are quantised: they hold ~98 % of the weights and
every LoRA target; the small embedders and projections stay in the training dtype. It must
run before PEFT injection, so PEFT wraps the bitsandbytes layers with its bnb-aware LoRA.
bitsandbytes 0.50 quantises when a parameter is moved to its device, and has CPU kernels
for both modes, so CPU runs (tests, smoke benchmarks) take the same path as CUDA.
"""

import torch
from torch import nn

from housevox.acestep.loading import model_dtype
from housevox.errors import HousevoxError

QUANTIZE_MODES = ("none", "int8", "nf4")
QUANTISE_ROWS = 512
INT8_OUTLIER_THRESHOLD = 6.0  # LLM.int8(): input features above this run in fp16/bf16, the rest in int8


def _int8_by_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM.int8()'s row-wise quantisation, QUANTISE_ROWS rows at a time: the same bytes as one call (each row has its
    own scale), but the fp16 copy and the kernel's temporaries are a slice of the weight, not the whole of it."""
    import bitsandbytes as bnb

    cb = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scb = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], QUANTISE_ROWS):
        end = start + QUANTISE_ROWS
        cb[start:end], scb[start:end], _ = bnb.functional.int8_vectorwise_quant(weight[start:end].to(torch.float16))
    return cb, scb


def _quantized_copy(linear: nn.Linear, mode: str) -> nn.Module:
    """A bitsandbytes layer holding `linear`'s weights, quantised where the weights already are (no copy to host)."""
    import bitsandbytes as bnb

    weight, device = linear.weight.detach(), linear.weight.device
    has_bias = linear.bias is not None
    if mode == "int8":
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False,
                                    threshold=INT8_OUTLIER_THRESHOLD, device="meta")
        # Int8Params only quantises on a move *from* the CPU, so quantise explicitly (what its _quantize does).
        cb, scb = _int8_by_rows(weight)
        layer.weight = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False, CB=cb, SCB=scb)
    else:
        compute_dtype = model_dtype(device)
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias, compute_dtype=compute_dtype,
                                  quant_type="nf4", device="meta")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", module=layer)
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return layer.to(device)  # Params4bit quantises on this move; Int8Params just stays put


def _replace(dit: nn.Module, name: str, mode: str) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = dit.layers.get_submodule(parent_name) if parent_name else dit.layers
    setattr(parent, child, _quantized_copy(getattr(parent, child), mode))


def _mark(dit: nn.Module, mode: str) -> None:
    # The flags PEFT reads (transformers' names) to wrap bnb layers with its bnb-aware LoRA layers.
    dit.is_loaded_in_8bit = mode == "int8"
    dit.is_loaded_in_4bit = mode == "nf4"


def quantize_frozen_base(dit: nn.Module, mode: str) -> int:
    """Replace the DiT blocks' (remaining) Linear layers by bitsandbytes int8/NF4 layers in place; returns how many."""
    if mode not in QUANTIZE_MODES:
        raise HousevoxError(f"model.quantize_base: {mode!r} is not one of {', '.join(QUANTIZE_MODES)}")
    if mode == "none":
        return 0
    targets = [name for name, module in dit.layers.named_modules() if type(module) is nn.Linear]
    if targets and dit.layers.get_submodule(targets[0]).weight.device.type == "meta":
        raise HousevoxError(f"model.quantize_base={mode}: load the base weights before quantising (meta tensors)")
    for name in targets:
        _replace(dit, name, mode)
    _mark(dit, mode)
    return len(targets)


class QuantiseOnArrival:
    """`load_dit`'s `as_loaded` hook: each block Linear is quantised as soon as its last tensor is in.

    The bf16 weight then dies before the next one is read, so loading holds the quantised
    model plus one layer instead of the whole bf16 base (what the low-memory mode promises).
    """

    def __init__(self, mode: str):
        if mode not in QUANTIZE_MODES or mode == "none":
            raise HousevoxError(f"model.quantize_base: {mode!r} is not int8 or nf4")
        self.mode = mode
        self.quantised = 0

    def __call__(self, dit: nn.Module, name: str) -> None:
        if not name.startswith("layers."):
            return
        path = name.removeprefix("layers.").rpartition(".")[0]
        linear = dit.layers.get_submodule(path)
        if type(linear) is not nn.Linear or any(t.is_meta for t in linear.parameters()):
            return
        _replace(dit, path, self.mode)
        self.quantised += 1
        _mark(dit, self.mode)
