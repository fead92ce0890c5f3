"""Public loaders: one function per ACE-Step part, all reading through `checkpoint.py`."""

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from housevox.acestep.checkpoint import (
    CheckpointFolder,
    WeightSet,
    _short,
    _weight_files,
    check_keys,
    expected_shapes,
    load_part,
    locate_checkpoint,
)
from housevox.acestep.config import AceStepConfig
from housevox.acestep.modules import AceStepDiT, ConditionEncoder, build_condition_encoder, build_dit
from housevox.errors import HousevoxError
from housevox.jsonfile import read_json_object

SILENCE_BUFFER = "silence_latent"


def model_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on CUDA, fp32 on CPU: the one dtype rule for training, the cache builder and sampling."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def open_checkpoint(checkpoint_dir: str | Path) -> CheckpointFolder:
    """Locate a checkpoint and check every DiT/encoder key name and shape from the headers alone."""
    ckpt = locate_checkpoint(checkpoint_dir)
    problems = validate_checkpoint(ckpt)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise HousevoxError(f"{problems[0]}{more}")
    return ckpt


def validate_checkpoint(ckpt: CheckpointFolder) -> list[str]:
    dit = expected_shapes(build_dit(ckpt.config))
    enc = expected_shapes(build_condition_encoder(ckpt.config), exclude=(SILENCE_BUFFER,))
    if ckpt.layout == "original":
        return check_keys(ckpt.dit, {"dit": dit, "condition_encoder": enc})
    return check_keys(ckpt.dit, {"dit": dit}) + check_keys(ckpt.condition_encoder, {"condition_encoder": enc})


def load_dit(checkpoint_dir, dtype: torch.dtype = torch.float32, device="cpu",
             as_loaded: Callable[[torch.nn.Module, str], None] | None = None) -> AceStepDiT:
    """The frozen DiT; `as_loaded(dit, name)` runs after each tensor arrives (quantise-while-loading)."""
    ckpt = open_checkpoint(checkpoint_dir)
    dit = build_dit(ckpt.config)
    load_part(dit, ckpt.dit, "dit", dtype, device, as_loaded=as_loaded)
    return dit.eval().requires_grad_(False)


def load_silence_latent(checkpoint_dir) -> torch.Tensor:
    """The encoded-silence latent as [1, T, 64] (upstream stores [1, 64, T])."""
    ckpt = locate_checkpoint(checkpoint_dir)
    if ckpt.layout == "diffusers":
        return _diffusers_silence_latent(ckpt)
    path = ckpt.silence_latent_path
    if path is None:
        raise HousevoxError(f"{ckpt.root}: missing silence_latent.pt")
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle; all mean the same to the user
        raise HousevoxError(f"{path}: unreadable ({_short(exc)})") from None
    dim = ckpt.config.timbre_hidden_dim
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3 or tensor.shape[0] != 1 or tensor.shape[1] != dim:
        shape = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise HousevoxError(f"{path}: expected a tensor [1, {dim}, T], got {shape}")
    return tensor.transpose(1, 2).float().contiguous()


def load_condition_encoder(checkpoint_dir, dtype: torch.dtype = torch.float32, device="cpu") -> ConditionEncoder:
    ckpt = open_checkpoint(checkpoint_dir)
    encoder = build_condition_encoder(ckpt.config)
    load_part(encoder, ckpt.condition_encoder, "condition_encoder", dtype, device, exclude=(SILENCE_BUFFER,))
    encoder.register_buffer(SILENCE_BUFFER, load_silence_latent(ckpt).to(device=device, dtype=dtype), persistent=True)
    return encoder.eval().requires_grad_(False)


def _diffusers_silence_latent(ckpt: CheckpointFolder) -> torch.Tensor:
    for path in ckpt.condition_encoder.files:
        with safe_open(path, "pt") as fh:
            if SILENCE_BUFFER in fh.keys():
                return fh.get_tensor(SILENCE_BUFFER).float()
    raise HousevoxError(f"{ckpt.condition_encoder.files[0]}: no {SILENCE_BUFFER} tensor")


def load_vae(checkpoint_dir, dtype: torch.dtype = torch.float32, device="cpu"):
    """The Oobleck VAE (48 kHz stereo ↔ 25 Hz × 64 latents), loaded strictly from `vae/`."""
    from diffusers import AutoencoderOobleck

    ckpt = locate_checkpoint(checkpoint_dir)
    if ckpt.vae_dir is None:
        raise HousevoxError(f"{ckpt.root}: no vae/ folder next to or inside the checkpoint")
    if not (ckpt.vae_dir / "config.json").is_file():
        raise HousevoxError(f"{ckpt.vae_dir}: missing config.json")
    config = read_json_object(ckpt.vae_dir / "config.json", "VAE config")
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Oobleck still uses the old weight_norm API
        vae = AutoencoderOobleck.from_config(config)
    ws = WeightSet(_weight_files(ckpt.vae_dir, "diffusion_pytorch_model"), lambda k: ("vae", k))
    problems = check_keys(ws, {"vae": expected_shapes(vae)})
    if problems:
        raise HousevoxError(problems[0])
    load_part(vae, ws, "vae", dtype, device)
    return vae.eval().requires_grad_(False)


def load_text_encoder(checkpoint_dir, dtype: torch.dtype = torch.float32, device="cpu"):
    """The Qwen3 embedding model and its tokenizer, from local files only."""
    from transformers import AutoModel, AutoTokenizer

    ckpt = locate_checkpoint(checkpoint_dir)
    if ckpt.text_encoder_dir is None:
        raise HousevoxError(f"{ckpt.root}: no Qwen3-Embedding-0.6B/ (or text_encoder/) folder next to or inside the checkpoint")
    try:
        tokenizer = AutoTokenizer.from_pretrained(ckpt.tokenizer_dir or ckpt.text_encoder_dir, local_files_only=True)
        model = AutoModel.from_pretrained(ckpt.text_encoder_dir, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, SafetensorError) as exc:
        raise HousevoxError(f"{ckpt.text_encoder_dir}: cannot load the text encoder ({_short(exc)})") from None
    width = model.config.hidden_size
    if width != ckpt.config.text_hidden_dim:
        raise HousevoxError(
            f"{ckpt.text_encoder_dir}: text encoder width {width} does not match text_hidden_dim "
            f"{ckpt.config.text_hidden_dim} in the checkpoint config"
        )
    return model.to(device).eval().requires_grad_(False), tokenizer


def load_null_condition(checkpoint_dir) -> torch.Tensor:
    """The learned `null_condition_emb` [1, 1, E] alone: CFG dropout needs it, not the whole encoder."""
    ckpt = locate_checkpoint(checkpoint_dir)
    for path in ckpt.condition_encoder.files:
        with safe_open(path, "pt") as fh:
            for key in fh.keys():
                if ckpt.condition_encoder.convert(key) == ("condition_encoder", "null_condition_emb"):
                    return fh.get_tensor(key).float()
    raise HousevoxError(f"{ckpt.root}: no null_condition_emb in the checkpoint")


def acestep_config(checkpoint_dir) -> AceStepConfig:
    return locate_checkpoint(checkpoint_dir).config
