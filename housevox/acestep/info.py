"""`python -m housevox.acestep.info DIR`: what a checkpoint folder holds, and what it lacks."""

import argparse
import math
import sys
from collections import Counter

from safetensors import safe_open

from housevox.acestep.loading import SILENCE_BUFFER, open_checkpoint
from housevox.acestep.modules import build_condition_encoder, build_dit
from housevox.errors import run_cli


def _count(module, exclude=()) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n not in exclude)


def _header_params(folder) -> int | None:
    """Parameters in a folder's safetensors files, from the headers alone (no tensor is read)."""
    if folder is None:
        return None
    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as fh:
            total += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    return total


def describe(checkpoint_dir) -> list[str]:
    ckpt = open_checkpoint(checkpoint_dir)
    cfg = ckpt.config
    dtypes = Counter()
    for path in sorted({*ckpt.dit.files, *ckpt.condition_encoder.files}):
        with safe_open(path, "pt") as fh:
            dtypes.update(fh.get_slice(k).get_dtype() for k in fh.keys())
    missing = [
        name for name, present in (
            ("silence_latent.pt", ckpt.layout == "diffusers" or ckpt.silence_latent_path is not None),
            ("vae/", ckpt.vae_dir is not None),
            ("Qwen3-Embedding-0.6B/ (text encoder)", ckpt.text_encoder_dir is not None),
        ) if not present
    ]
    shards = len(set(ckpt.dit.files) | set(ckpt.condition_encoder.files))
    extra = [f"{name} {count:,}" for name, count in (("VAE", _header_params(ckpt.vae_dir)),
                                                      ("text encoder", _header_params(ckpt.text_encoder_dir)))
             if count is not None]
    return [
        f"checkpoint:   {ckpt.root} ({ckpt.layout} layout)",
        f"variant:      {cfg.variant} ({'XL' if cfg.xl_layout else '2B'} condition-encoder layout)",
        f"DiT:          hidden {cfg.hidden_size}, intermediate {cfg.intermediate_size}, {cfg.num_hidden_layers} layers, "
        f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} kv, head_dim {cfg.head_dim}",
        f"condition:    width {cfg.encoder_hidden_size}, text {cfg.text_hidden_dim}, "
        f"{cfg.num_lyric_encoder_hidden_layers} lyric / {cfg.num_timbre_encoder_hidden_layers} timbre layers",
        f"timesteps:    logit-normal mu {cfg.timestep_mu}, sigma {cfg.timestep_sigma}",
        f"parameters:   DiT {_count(build_dit(cfg)):,}, condition encoder "
        f"{_count(build_condition_encoder(cfg), exclude=(SILENCE_BUFFER,)):,}" + "".join(f", {e}" for e in extra),
        f"on disk:      {shards} shard(s), dtype {', '.join(f'{d} ({n} tensors)' for d, n in dtypes.most_common())}",
        f"missing:      {', '.join(missing) if missing else 'nothing'}",
    ] + [f"from the hub: {part} {source}" for part, source in ckpt.sources]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m housevox.acestep.info", description=__doc__)
    parser.add_argument("checkpoint_dir", help="checkpoint folder, or a model name such as acestep-v15-xl-base[@revision]")
    args = parser.parse_args(argv)
    print("\n".join(describe(args.checkpoint_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
