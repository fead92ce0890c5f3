"""ACE-Step v1.5 model dimensions, read from an upstream `config.json`.

Upstream ships two layouts: XL (a 2560-wide DiT fed by a narrower 2048-wide
condition encoder, described by `encoder_*` keys) and 2B (no `encoder_*` keys:
the condition encoder is as wide as the DiT).
"""

from dataclasses import dataclass, field
from typing import Any

from housevox.errors import HousevoxError

# Upstream defaults when config.json omits the logit-normal timestep keys.
DEFAULT_TIMESTEP_MU = -0.4
DEFAULT_TIMESTEP_SIGMA = 1.0

_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


@dataclass(frozen=True)
class AceStepConfig:
    """What housevox needs to know about one checkpoint."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    encoder_hidden_size: int
    encoder_intermediate_size: int
    encoder_num_attention_heads: int
    encoder_num_key_value_heads: int
    text_hidden_dim: int = 1024
    timbre_hidden_dim: int = 64
    audio_acoustic_hidden_dim: int = 64
    in_channels: int = 192
    patch_size: int = 2
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False
    sliding_window: int = 128
    layer_types: tuple[str, ...] | None = None
    num_lyric_encoder_hidden_layers: int = 8
    num_timbre_encoder_hidden_layers: int = 4
    timbre_fix_frame: int = 750
    xl_layout: bool = False
    is_turbo: bool = False
    model_version: str = "base"
    timestep_mu: float = DEFAULT_TIMESTEP_MU
    timestep_sigma: float = DEFAULT_TIMESTEP_SIGMA
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_upstream(cls, cfg: dict[str, Any], source: str = "config.json") -> "AceStepConfig":
        missing = [k for k in _REQUIRED if k not in cfg]
        if missing:
            raise HousevoxError(f"{source}: not an ACE-Step v1.5 config (missing {', '.join(missing)})")
        xl = "encoder_hidden_size" in cfg
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        layer_types = cfg.get("layer_types")
        return cls(
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg["num_key_value_heads"]),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            encoder_hidden_size=int(cfg.get("encoder_hidden_size", hidden)),
            encoder_intermediate_size=int(cfg.get("encoder_intermediate_size", cfg["intermediate_size"])),
            encoder_num_attention_heads=int(cfg.get("encoder_num_attention_heads", heads)),
            encoder_num_key_value_heads=int(cfg.get("encoder_num_key_value_heads", cfg["num_key_value_heads"])),
            text_hidden_dim=int(cfg.get("text_hidden_dim", 1024)),
            timbre_hidden_dim=int(cfg.get("timbre_hidden_dim", 64)),
            audio_acoustic_hidden_dim=int(cfg.get("audio_acoustic_hidden_dim", 64)),
            in_channels=int(cfg.get("in_channels", 192)),
            patch_size=int(cfg.get("patch_size", 2)),
            rope_theta=float(cfg.get("rope_theta", 1_000_000.0)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            sliding_window=int(cfg.get("sliding_window") or 128),
            layer_types=tuple(layer_types) if layer_types else None,
            num_lyric_encoder_hidden_layers=int(cfg.get("num_lyric_encoder_hidden_layers", 8)),
            num_timbre_encoder_hidden_layers=int(cfg.get("num_timbre_encoder_hidden_layers", 4)),
            timbre_fix_frame=int(cfg.get("timbre_fix_frame", 750)),
            xl_layout=xl,
            is_turbo=bool(cfg.get("is_turbo", False)),
            model_version=str(cfg.get("model_version") or ("turbo" if cfg.get("is_turbo") else "base")),
            timestep_mu=float(cfg.get("timestep_mu", DEFAULT_TIMESTEP_MU)),
            timestep_sigma=float(cfg.get("timestep_sigma", DEFAULT_TIMESTEP_SIGMA)),
            raw=dict(cfg),
        )

    @property
    def size_name(self) -> str:
        """`xl` or `2b` from the DiT width (the names upstream uses), else the width itself."""
        return {2560: "xl", 2048: "2b"}.get(self.hidden_size, f"custom-{self.hidden_size}")

    @property
    def variant(self) -> str:
        kind = "turbo" if self.is_turbo else self.model_version
        return f"{self.size_name}-{kind}"

    def dit_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of diffusers' `AceStepTransformer1DModel`."""
        return dict(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            in_channels=self.in_channels,
            audio_acoustic_hidden_dim=self.audio_acoustic_hidden_dim,
            patch_size=self.patch_size,
            rope_theta=self.rope_theta,
            attention_bias=self.attention_bias,
            rms_norm_eps=self.rms_norm_eps,
            sliding_window=self.sliding_window,
            layer_types=list(self.layer_types) if self.layer_types else None,
            encoder_hidden_size=self.encoder_hidden_size,
            is_turbo=self.is_turbo,
            model_version=self.model_version,
        )

    def condition_encoder_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of diffusers' `AceStepConditionEncoder`."""
        return dict(
            hidden_size=self.encoder_hidden_size,
            intermediate_size=self.encoder_intermediate_size,
            text_hidden_dim=self.text_hidden_dim,
            timbre_hidden_dim=self.timbre_hidden_dim,
            num_lyric_encoder_hidden_layers=self.num_lyric_encoder_hidden_layers,
            num_timbre_encoder_hidden_layers=self.num_timbre_encoder_hidden_layers,
            num_attention_heads=self.encoder_num_attention_heads,
            num_key_value_heads=self.encoder_num_key_value_heads,
            head_dim=self.head_dim,
            rope_theta=self.rope_theta,
            attention_bias=self.attention_bias,
            rms_norm_eps=self.rms_norm_eps,
            sliding_window=self.sliding_window,
        )
