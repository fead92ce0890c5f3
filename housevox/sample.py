"""`python -m housevox.sample`: render audio from ACE-Step v1.5 with an optional LoRA.

Sampling is upstream's own: Euler flow matching with the shift warp, APG guidance against
the learned null condition, DCW correction and the chunk mask ACE-Step sends ("auto", 2.0),
so a seed here is the take ACE-Step renders. Rendering itself lives in `housevox.generate`,
which the training preview shares.
"""

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

import housevox
from housevox.acestep import load_dit, model_dtype, open_checkpoint
from housevox.acestep.sampler import GUIDANCE_MODES
from housevox.errors import HousevoxError, UsageError, run_cli
from housevox.metas import METAS, MetaError, normalise
from housevox.generate import (
    CHUNK_MASK_AUTO,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_PROMPT,
    DEFAULT_SHIFT,
    DEFAULT_STEPS,
    LATENT_FPS,
    SAMPLE_RATE,
    Renderer,
    Take,
    write_wav,
)
from housevox.lora import load_lora_into, read_lora, set_lora_scale

log = logging.getLogger("housevox")

MAX_DURATION_S = 600.0


def read_lyrics(value: str | None) -> str | None:
    """An existing file's text, else the value itself as literal lyrics (warned when it looks like a file name)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        raise UsageError(f"--lyrics {path}: is a folder, give a text file or the lyrics themselves")
    if not path.is_file():
        if "\n" not in value and path.suffix.lower() in (".txt", ".lrc"):
            log.warning("--lyrics %s: no such file, using the text itself as lyrics", value)
        return value
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--lyrics {path}: unreadable ({exc})") from None


def lora_defaults(args: argparse.Namespace, metadata: dict, source: str) -> None:
    """Fill --steps/--shift left unset from the LoRA header (what it was trained for), else the defaults."""
    for name, field, kind, default in (("steps", "num_inference_steps", int, DEFAULT_STEPS),
                                       ("shift", "shift", float, DEFAULT_SHIFT)):
        if getattr(args, name) is not None:
            continue
        value = metadata.get(field, "")
        try:
            value = default if value == "" else kind(float(value))
        except ValueError:
            raise HousevoxError(f"{source}: header metadata {field}={value!r} is not a number") from None
        if value <= 0:
            raise HousevoxError(f"{source}: header metadata {field}={value} must be > 0; pass --{name}")
        setattr(args, name, value)


def scaled_path(out: Path, scale: float) -> Path:
    return out.with_name(f"{out.stem}_scale{scale:.2f}{out.suffix}")


def chunk_mask(value: str) -> float:
    if value == "auto":
        return CHUNK_MASK_AUTO
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r}: expected auto or a number")
    return number


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m housevox.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint-dir", required=True,
                   help="ACE-Step v1.5 checkpoint folder (with vae/ and text encoder), or a model name such as "
                        "acestep-v15-xl-base[@revision], fetched into the Hugging Face cache on first use")
    p.add_argument("--lora", help="LoRA: PEFT folder, ComfyUI or diffusers .safetensors (default: base model only)")
    p.add_argument("--lora-scale", type=float, nargs="+", default=None,
                   help="LoRA strength; several values render a comparison set OUT_scale0.50.wav ... (default 1.0)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="caption")
    p.add_argument("--lyrics", help="lyrics file; a value that is not an existing file is used as the lyrics text")
    p.add_argument("--bpm", type=int)
    p.add_argument("--key", help='e.g. "A minor", "Am", "F# major" (written as ACE-Step spells it)')
    p.add_argument("--timesignature", default="4", help="2, 3, 4 or 6; 4/4, 6/8 ... are understood")
    p.add_argument("--language", default="en")
    p.add_argument("--duration", type=float, default=30.0, help=f"seconds, 0 < d <= {MAX_DURATION_S:g}")
    p.add_argument("--steps", type=int,
                   help=f"Euler steps (default: LoRA metadata num_inference_steps, else {DEFAULT_STEPS})")
    p.add_argument("--guidance", choices=GUIDANCE_MODES, default="apg",
                   help="apg: upstream's adaptive projected guidance (default); cfg: textbook classifier-free guidance")
    p.add_argument("--guidance-scale", "--cfg", dest="guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE,
                   help=f"guidance strength against the null condition (default {DEFAULT_GUIDANCE_SCALE:g}); "
                        "<= 1 = no guidance, one conditional DiT call per step")
    p.add_argument("--dcw", action=argparse.BooleanOptionalAction, default=True,
                   help="upstream's Haar-wavelet step correction (default on, as in ACE-Step)")
    p.add_argument("--chunk-mask", type=chunk_mask, default=CHUNK_MASK_AUTO, metavar="auto|VALUE",
                   help=f"chunk-mask channels of the context: auto = {CHUNK_MASK_AUTO:g} (upstream's inference "
                        "default for a full take), 1 = what training uses")
    p.add_argument("--shift", type=float, help=f"timestep shift (default: LoRA metadata shift, else {DEFAULT_SHIFT:g})")
    p.add_argument("--seed", type=int, default=42, help="noise seed; same seed and settings give a bitwise-equal file")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", required=True, type=Path, help="output .wav (settings also go to OUT.json)")
    return p.parse_args(argv)


def pick_device(name: str | None) -> torch.device:
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UsageError(f"--device {name}: not a torch device (cpu, cuda, cuda:1 ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here")
    return device


def check_args(args: argparse.Namespace) -> None:
    if not 0 < args.duration <= MAX_DURATION_S:
        raise UsageError(f"--duration {args.duration:g}: must be > 0 and <= {MAX_DURATION_S:g} seconds")
    if round(args.duration * LATENT_FPS) < 1:
        raise UsageError(f"--duration {args.duration:g}: shorter than one latent frame (1/{LATENT_FPS} s)")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps {args.steps}: must be at least 1")
    if args.shift is not None and args.shift <= 0:
        raise UsageError(f"--shift {args.shift:g}: must be > 0")
    if args.lora_scale is not None and args.lora is None:
        raise UsageError("--lora-scale needs --lora")
    if args.out.is_dir():
        raise UsageError(f"--out {args.out}: is a folder, give a .wav file name")
    for field in METAS:
        if getattr(args, field) is not None:
            try:
                setattr(args, field, normalise(field, getattr(args, field)))
            except MetaError as exc:
                raise UsageError(f"--{exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    ckpt = open_checkpoint(args.checkpoint_dir)
    lora = read_lora(args.lora) if args.lora else None
    lora_defaults(args, lora.metadata if lora else {}, args.lora)
    take = Take(caption=args.prompt, lyrics=read_lyrics(args.lyrics), bpm=args.bpm, key=args.key,
                timesignature=args.timesignature, language=args.language, duration_s=args.duration,
                steps=args.steps, guidance=args.guidance, guidance_scale=args.guidance_scale, dcw=args.dcw,
                chunk_mask=args.chunk_mask, shift=args.shift, seed=args.seed)

    device = pick_device(args.device)
    dit = load_dit(ckpt, dtype=model_dtype(device), device=device)
    if lora is not None:
        load_lora_into(dit, lora, source=str(args.lora))
    renderer = Renderer.from_checkpoint(ckpt, device)

    scales = args.lora_scale or [1.0]
    base = {**asdict(take), "checkpoint": ckpt.root.name, "sampler": "euler", "housevox_version": housevox.__version__}
    for scale in scales:
        out = args.out if len(scales) == 1 else scaled_path(args.out, scale)
        settings = dict(base)
        if lora is not None:
            set_lora_scale(dit, scale)
            settings.update(lora=Path(args.lora).name, lora_scale=scale)
        audio = renderer.render(dit, take, progress=True)
        write_wav(out, audio, settings)
        print(f"wrote {out} ({audio.shape[1] / SAMPLE_RATE:.2f} s, seed {take.seed}"
              + (f", LoRA scale {scale:g})" if lora is not None else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
