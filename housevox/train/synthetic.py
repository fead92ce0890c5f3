"""The production `HouseVoxLoRA` on a base built from a config dict instead of a checkpoint folder.

Benchmarks train it on random-init weights (no download); the memory prediction builds it on
the meta device and runs its step on fake tensors. Only `describe_base`/`load_base` differ from
a real run: LoRA injection, quantisation, checkpointing, loss and optimizer are production's.
"""

import torch

from housevox.acestep.config import AceStepConfig
from housevox.acestep.modules import build_dit
from housevox.acestep.presets import PRESETS
from housevox.train.module import HouseVoxLoRA

SEGMENT_FRAMES = 750  # latent frames of a 30 s segment at 25 Hz
CONDITION_TOKENS = 769  # condition length the benchmarks use (caption + lyrics + timbre token)


def with_depth(raw: dict, layers: int) -> dict:
    """An upstream config dict with `layers` DiT blocks, its layer-type pattern repeated or cut."""
    types = raw.get("layer_types") or ["sliding_attention", "full_attention"]
    return {**raw, "num_hidden_layers": layers, "num_audio_decoder_hidden_layers": layers,
            "layer_types": (list(types) * layers)[:layers]}


def base_config(preset: str, layers: int | None = None, **overrides) -> dict:
    """An upstream config dict: a preset, optionally with another depth or other dimensions."""
    raw = {**PRESETS[preset], **overrides}
    return with_depth(raw, layers) if layers else raw


def meta_dit(cfg: AceStepConfig, dtype: torch.dtype) -> torch.nn.Module:
    """The DiT on the meta device with its parameters in `dtype` (no memory, no fp32 copy)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return build_dit(cfg, device="meta")
    finally:
        torch.set_default_dtype(default)


def random_dit(cfg: AceStepConfig, dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """The DiT allocated straight in `dtype` on `device`, weights ~ N(0, 1/fan_in), norms 1."""
    dit = meta_dit(cfg, dtype).to_empty(device=device)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=gen)
            else:
                p.fill_(1.0 if "norm" in name else 0.0)
    return dit


def synthetic_sample(cfg: AceStepConfig, frames: int, cond_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """One cache sample of the real shapes and dtypes (a step's cost does not depend on the values)."""
    gen = torch.Generator().manual_seed(seed)
    latent = cfg.audio_acoustic_hidden_dim
    return {
        "target_latents": torch.randn(frames, latent, generator=gen),
        "encoder_hidden_states": torch.randn(cond_len, cfg.encoder_hidden_size, generator=gen),
        "encoder_attention_mask": torch.ones(cond_len, dtype=torch.bool),
        "context_latents": torch.randn(frames, cfg.in_channels - latent, generator=gen),
    }


class SyntheticBaseLoRA(HouseVoxLoRA):
    """`HouseVoxLoRA` on a base of the shape `base` (an upstream config dict).

    `weights`: "random" allocates and initialises it on the run's device; "meta" builds it on the
    meta device (for fake-tensor tracing). `base_dtype` overrides the device's dtype rule, so a
    CPU process can trace the bf16 base a CUDA run would hold.
    """

    def __init__(self, base: dict, weights: str = "random", base_dtype: torch.dtype | None = None, **kwargs):
        if weights not in ("random", "meta"):
            raise ValueError(f"weights must be 'random' or 'meta', not {weights!r}")
        super().__init__(checkpoint_dir=f"{weights}-init", **kwargs)

    def describe_base(self, checkpoint_dir: str) -> tuple[AceStepConfig, str]:
        return AceStepConfig.from_upstream(self.hparams.base, source="synthetic base"), checkpoint_dir

    def load_base(self, dtype: torch.dtype, device: torch.device, quantize: str = "none") -> tuple[torch.nn.Module, torch.Tensor]:
        dtype = self.hparams.base_dtype or dtype
        null = torch.randn(1, self.config.encoder_hidden_size, generator=torch.Generator().manual_seed(1)).to(dtype)
        if self.hparams.weights == "meta":
            return meta_dit(self.config, dtype), null
        return random_dit(self.config, dtype, device), null
