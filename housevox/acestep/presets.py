"""Upstream-shaped `config.json` contents for the model sizes housevox knows.

`xl` and `2b` carry the released dimensions (used on the meta device for shape
and count checks); `tiny` is a CPU-fast model in the XL layout for tests and the demo.
"""

from typing import Any

_COMMON: dict[str, Any] = {
    "architectures": ["AceStepConditionGenerationModel"],
    "model_type": "acestep",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "audio_acoustic_hidden_dim": 64,
    "timbre_hidden_dim": 64,
    "in_channels": 192,
    "patch_size": 2,
    "pool_window_size": 5,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000,
    "rope_scaling": None,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 32768,
    "fsq_input_levels": [8, 8, 8, 5, 5, 5],
    "fsq_input_num_quantizers": 1,
    "timbre_fix_frame": 750,
    "timestep_mu": -0.4,
    "timestep_sigma": 1.0,
    "use_sliding_window": True,
    "use_cache": True,
    "is_turbo": False,
    "model_version": "base",
    "dtype": "bfloat16",
}


def _alternating(n: int) -> list[str]:
    return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]


def _preset(auto_model: str, layers: int, **dims: Any) -> dict[str, Any]:
    cfg = dict(_COMMON)
    cfg["auto_map"] = {
        "AutoConfig": "configuration_acestep_v15.AceStepConfig",
        "AutoModel": f"{auto_model}.AceStepConditionGenerationModel",
    }
    cfg.update(num_hidden_layers=layers, num_audio_decoder_hidden_layers=layers, layer_types=_alternating(layers))
    cfg.update(dims)
    return cfg


PRESETS: dict[str, dict[str, Any]] = {
    "xl": _preset(
        "modeling_acestep_v15_xl_base", 32,
        hidden_size=2560, intermediate_size=9728, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        encoder_hidden_size=2048, encoder_intermediate_size=6144,
        encoder_num_attention_heads=16, encoder_num_key_value_heads=8,
        text_hidden_dim=1024, fsq_dim=2048, sliding_window=128,
        num_lyric_encoder_hidden_layers=8, num_timbre_encoder_hidden_layers=4,
        num_attention_pooler_hidden_layers=2,
    ),
    "2b": _preset(
        "modeling_acestep_v15_base", 24,
        hidden_size=2048, intermediate_size=6144, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        text_hidden_dim=1024, fsq_dim=2048, sliding_window=128,
        num_lyric_encoder_hidden_layers=8, num_timbre_encoder_hidden_layers=4,
        num_attention_pooler_hidden_layers=2,
    ),
    "tiny": _preset(
        "modeling_acestep_v15_xl_base", 2,
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        encoder_hidden_size=48, encoder_intermediate_size=96,
        encoder_num_attention_heads=3, encoder_num_key_value_heads=1,
        text_hidden_dim=32, fsq_dim=48, sliding_window=16,
        num_lyric_encoder_hidden_layers=1, num_timbre_encoder_hidden_layers=1,
        num_attention_pooler_hidden_layers=1, dtype="float32",
        # 4 latent channels instead of 64: the tiny VAE must run at full audio rate on
        # 2 CPU cores, and every housevox code path reads the width from this config.
        audio_acoustic_hidden_dim=4, timbre_hidden_dim=4, in_channels=12,
    ),
}

# The tiny model in the 2B layout: no `encoder_*` keys, so the condition encoder is as wide as the DiT.
PRESETS["tiny-2b"] = {k: v for k, v in PRESETS["tiny"].items() if not k.startswith("encoder_")}
PRESETS["tiny-2b"]["auto_map"] = PRESETS["2b"]["auto_map"]
PRESETS["tiny-2b"]["fsq_dim"] = PRESETS["tiny"]["hidden_size"]

# Real Oobleck VAE as ACE-Step ships it: hop 2·4·4·6·10 = 1920 samples → 25 latent frames/s at 48 kHz.
REAL_VAE = dict(
    encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 6, 10], channel_multiples=[1, 2, 4, 8, 16],
    decoder_channels=128, decoder_input_channels=64, audio_channels=2, sampling_rate=48000,
)
