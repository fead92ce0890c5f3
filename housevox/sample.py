"""`python -m housevox.sample`: render audio from ACE-Step v1.5 with an optional LoRA.

Caption and lyrics go through `ConditionBuilder.encode`, the function the segment
cache uses, so the LoRA hears at inference the condition it was trained on. Sampling
is Euler flow matching with the shift warp and plain classifier-free guidance against
the learned null condition (upstream defaults to APG). `render` is the reusable part:
the training preview calls it with the model being trained.
"""

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

import housevox
from housevox.acestep import load_dit, load_silence_latent, load_vae, model_dtype, open_checkpoint
from housevox.acestep.conditioning import ConditionBuilder, context_latents
from housevox.acestep.flow import classifier_free_guidance, euler_sample
from housevox.atomic import atomic_path, write_json
from housevox.errors import HousevoxError, UsageError, run_cli
from housevox.lora import load_lora_into, read_lora, set_lora_scale

log = logging.getLogger("housevox")

SAMPLE_RATE = 48_000
LATENT_FPS = 25  # Oobleck hop 1920 at 48 kHz
MAX_DURATION_S = 600.0
DEFAULT_STEPS, DEFAULT_CFG, DEFAULT_SHIFT = 50, 7.0, 1.0
DEFAULT_PROMPT = "house music style, soulful vocal performance, driving groove, vocal track singing, 122 bpm"
COMMENT_BYTES = 2000  # libsndfile silently drops a WAV INFO comment longer than ~2 KB


@dataclass
class Take:
    """Everything that decides a rendered clip besides the weights; stored with the WAV."""

    caption: str
    lyrics: str | None = None
    bpm: int | None = None
    key: str | None = None
    timesignature: str | None = None
    language: str = "en"
    duration_s: float = 30.0
    steps: int = DEFAULT_STEPS
    cfg: float = DEFAULT_CFG
    shift: float = DEFAULT_SHIFT
    seed: int = 42

    @property
    def frames(self) -> int:
        return round(self.duration_s * LATENT_FPS)


def encode_take(builder: ConditionBuilder, take: Take) -> tuple[torch.Tensor, torch.Tensor]:
    """(condition [L, E], null condition [L, E]) for CFG, through the cache's own encoder call."""
    cond = builder.encode(take.caption, take.lyrics, bpm=take.bpm, key=take.key, timesignature=take.timesignature,
                          language=take.language, duration_s=take.duration_s).encoder_hidden_states
    return cond, builder.null_condition(cond.shape[0])


@torch.no_grad()
def render(dit, builder: ConditionBuilder, vae, silence_latent: torch.Tensor, take: Take,
           progress: bool = False) -> torch.Tensor:
    """Sample one clip with `dit` as it is now (LoRA scale included); returns float32 [2, frames·1920] on CPU."""
    param = next(dit.parameters())
    device, dtype = param.device, param.dtype
    cond, uncond = encode_take(builder, take)
    guided = take.cfg != 1.0  # at scale 1 CFG is the conditional prediction alone
    hidden = (torch.stack([cond, uncond]) if guided else cond[None]).to(device, dtype)
    context = context_latents(silence_latent, take.frames)[None].expand(hidden.shape[0], -1, -1).to(device, dtype)
    noise = torch.randn([1, take.frames, silence_latent.shape[-1]], generator=torch.Generator().manual_seed(take.seed))
    bar = tqdm(total=take.steps, desc="sampling", unit="step", file=sys.stderr, disable=not progress)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = hidden.shape[0]
        t_in = t.repeat(batch).to(dtype)
        v = dit(x.repeat(batch, 1, 1).to(dtype), t_in, t_in, hidden, context).float()
        bar.update()
        return classifier_free_guidance(v[0:1], v[1:2], take.cfg) if guided else v

    with bar:
        latents = euler_sample(velocity, noise.to(device), take.steps, take.shift)
    vae_dtype = next(vae.parameters()).dtype
    audio = vae.decode(latents.transpose(1, 2).to(next(vae.parameters()).device, vae_dtype)).sample
    return audio[0].float().cpu()


def _comment(settings: dict) -> str:
    """The settings as JSON, long text fields replaced by their sha256 until the INFO chunk can hold it."""
    settings = dict(settings)
    text = json.dumps(settings, sort_keys=True, ensure_ascii=False)
    for field in ("lyrics", "caption"):
        if len(text.encode("utf-8")) <= COMMENT_BYTES:
            break
        if settings.get(field):
            settings[f"{field}_sha256"] = hashlib.sha256(settings.pop(field).encode("utf-8")).hexdigest()
            text = json.dumps(settings, sort_keys=True, ensure_ascii=False)
    return text


def write_wav(path: str | Path, audio: torch.Tensor, settings: dict) -> Path:
    """48 kHz 24-bit stereo WAV, atomically; settings in the INFO comment and in full in `<path>.json`.

    Samples are clipped to [-1, 1]: libsndfile would wrap out-of-range floats around.
    """
    path = Path(path)
    data = np.ascontiguousarray(audio.clamp(-1.0, 1.0).T.numpy())
    with atomic_path(path) as tmp:
        with sf.SoundFile(tmp, "w", samplerate=SAMPLE_RATE, channels=data.shape[1], subtype="PCM_24",
                          format="WAV") as fh:
            fh.comment = _comment(settings)
            fh.write(data)
    write_json(path.with_name(path.name + ".json"), settings)
    return path


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m housevox.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint-dir", required=True,
                   help="ACE-Step v1.5 checkpoint folder (with vae/ and text encoder)")
    p.add_argument("--lora", help="LoRA: PEFT folder, ComfyUI or diffusers .safetensors (default: base model only)")
    p.add_argument("--lora-scale", type=float, nargs="+", default=None,
                   help="LoRA strength; several values render a comparison set OUT_scale0.50.wav ... (default 1.0)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="caption")
    p.add_argument("--lyrics", help="lyrics file; a value that is not an existing file is used as the lyrics text")
    p.add_argument("--bpm", type=int)
    p.add_argument("--key", help='e.g. "A minor"')
    p.add_argument("--timesignature", default="4")
    p.add_argument("--language", default="en")
    p.add_argument("--duration", type=float, default=30.0, help=f"seconds, 0 < d <= {MAX_DURATION_S:g}")
    p.add_argument("--steps", type=int,
                   help=f"Euler steps (default: LoRA metadata num_inference_steps, else {DEFAULT_STEPS})")
    p.add_argument("--cfg", type=float, default=DEFAULT_CFG,
                   help="plain classifier-free guidance scale against the null condition (not upstream's APG); 1 = off")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    ckpt = open_checkpoint(args.checkpoint_dir)
    lora = read_lora(args.lora) if args.lora else None
    lora_defaults(args, lora.metadata if lora else {}, args.lora)
    take = Take(caption=args.prompt, lyrics=read_lyrics(args.lyrics), bpm=args.bpm, key=args.key,
                timesignature=args.timesignature, language=args.language, duration_s=args.duration,
                steps=args.steps, cfg=args.cfg, shift=args.shift, seed=args.seed)

    device = pick_device(args.device)
    dtype = model_dtype(device)
    dit = load_dit(ckpt, dtype=dtype, device=device)
    if lora is not None:
        load_lora_into(dit, lora, source=str(args.lora))
    builder = ConditionBuilder.from_checkpoint(ckpt, dtype=dtype, device=device)
    vae = load_vae(ckpt, dtype=torch.float32, device=device)  # fp32 decode: bf16 would add audible noise
    silence = load_silence_latent(ckpt)

    scales = args.lora_scale or [1.0]
    base = {**asdict(take), "checkpoint": ckpt.root.name, "sampler": "euler", "guidance": "plain cfg",
            "housevox_version": housevox.__version__}
    for scale in scales:
        out = args.out if len(scales) == 1 else scaled_path(args.out, scale)
        settings = dict(base)
        if lora is not None:
            set_lora_scale(dit, scale)
            settings.update(lora=Path(args.lora).name, lora_scale=scale)
        audio = render(dit, builder, vae, silence, take, progress=True)
        write_wav(out, audio, settings)
        print(f"wrote {out} ({audio.shape[1] / SAMPLE_RATE:.2f} s, seed {take.seed}"
              + (f", LoRA scale {scale:g})" if lora is not None else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
