"""Everything that knows ACE-Step v1.5: checkpoint layout, networks, conditioning, objective, sampler."""

from housevox.acestep.checkpoint import CheckpointFolder, locate_checkpoint
from housevox.acestep.config import AceStepConfig
from housevox.acestep.loading import (
    acestep_config,
    load_condition_encoder,
    load_dit,
    load_null_condition,
    load_silence_latent,
    load_text_encoder,
    load_vae,
    model_dtype,
    open_checkpoint,
)
from housevox.acestep.modules import compile_blocks
from housevox.acestep.sampler import initial_noise, sample_latents

__all__ = [
    "AceStepConfig",
    "acestep_config",
    "CheckpointFolder",
    "compile_blocks",
    "load_condition_encoder",
    "load_dit",
    "load_null_condition",
    "load_silence_latent",
    "load_text_encoder",
    "load_vae",
    "locate_checkpoint",
    "model_dtype",
    "initial_noise",
    "open_checkpoint",
    "sample_latents",
]
