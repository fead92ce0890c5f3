"""Condition → latents → VAE decode → audio: the one generation path of `housevox.sample` and the preview.

Caption and lyrics go through `ConditionBuilder.encode`, the function the segment cache
uses, so a LoRA hears at inference the condition it was trained on; the latents come from
`sample_latents`, upstream's own sampler, so a take here is the take ACE-Step renders.
"""

import contextlib
import gc
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from housevox.acestep import load_silence_latent, load_vae, model_dtype
from housevox.acestep.conditioning import ConditionBuilder, context_latents, pad_rows
from housevox.acestep.sampler import initial_noise, sample_latents
from housevox.atomic import atomic_path, write_json

SAMPLE_RATE = 48_000
LATENT_FPS = 25  # Oobleck hop 1920 at 48 kHz
DEFAULT_STEPS, DEFAULT_GUIDANCE_SCALE, DEFAULT_SHIFT = 50, 7.0, 1.0
CHUNK_MASK_AUTO = 2.0  # upstream's chunk_mask_mode="auto" for a full text-to-music take
DEFAULT_PROMPT = "house music style, soulful vocal performance, driving groove, vocal track singing, 122 bpm"
COMMENT_BYTES = 2000  # libsndfile silently drops a WAV INFO comment longer than ~2 KB


@dataclass
class Caption:
    """What the condition encoder reads besides the duration: the caption and its metas (`key` as ACE-Step's keyscale)."""

    caption: str
    lyrics: str | None = None
    bpm: int | None = None
    key: str | None = None
    timesignature: str | None = None
    language: str = "en"

    def caption_fields(self) -> dict:
        """These fields by name, also on a subclass (a Take, an eval prompt): what a prompt hands a template take."""
        return {f.name: getattr(self, f.name) for f in fields(Caption)}


@dataclass
class Take(Caption):
    """Everything that decides a rendered clip besides the weights; stored with the WAV."""

    duration_s: float = 30.0
    steps: int = DEFAULT_STEPS
    guidance: str = "apg"
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    dcw: bool = True
    chunk_mask: float = CHUNK_MASK_AUTO
    shift: float = DEFAULT_SHIFT
    seed: int = 42

    @property
    def frames(self) -> int:
        return round(self.duration_s * LATENT_FPS)


def encode_take(builder: ConditionBuilder, take: Take) -> tuple[torch.Tensor, torch.Tensor]:
    """(condition [L, E], null condition [L, E]) through the cache's own encoder call."""
    cond = builder.encode(take.caption, take.lyrics, bpm=take.bpm, key=take.key, timesignature=take.timesignature,
                          language=take.language, duration_s=take.duration_s).encoder_hidden_states
    return cond, builder.null_condition(cond.shape[0])


@dataclass
class Renderer:
    """The parts around the DiT (encoders, VAE, silence latent); the DiT is passed per take, LoRA and all."""

    builder: ConditionBuilder
    vae: torch.nn.Module
    silence_latent: torch.Tensor

    @classmethod
    def from_checkpoint(cls, checkpoint_dir, device: torch.device) -> "Renderer":
        builder = ConditionBuilder.from_checkpoint(checkpoint_dir, dtype=model_dtype(device), device=device)
        vae = load_vae(checkpoint_dir, dtype=torch.float32, device=device)  # fp32 decode: bf16 adds audible noise
        return cls(builder, vae, load_silence_latent(checkpoint_dir))

    @torch.no_grad()
    def render(self, dit, take: Take, progress: bool = False) -> torch.Tensor:
        """One clip from `dit` as it is now (LoRA scale included): float32 [2, frames·1920] on CPU."""
        return self.render_batch(dit, [take], progress)[0]

    @torch.no_grad()
    def render_batch(self, dit, takes: list[Take], progress: bool = False, batch_size: int = 4,
                     decode: bool = True) -> list[torch.Tensor]:
        """`render` for each take, up to `batch_size` takes sharing one sampler batch (padded, masked: exact per take);
        without `decode`, each take's sampler latents [1, frames, D] instead of its clip.

        Takes batch together when everything but caption, lyrics, metas and seed agrees; each clip is
        decoded alone, so the VAE's memory does not grow with the batch.
        """
        clips: dict[int, torch.Tensor] = {}
        groups: dict[tuple, list[int]] = {}
        for i, take in enumerate(takes):
            groups.setdefault(_sampler_settings(take), []).append(i)
        for members in groups.values():
            for start in range(0, len(members), batch_size):
                chunk = members[start:start + batch_size]
                for i, audio in zip(chunk, self._render_together(dit, [takes[i] for i in chunk], progress, decode)):
                    clips[i] = audio
        return [clips[i] for i in range(len(takes))]

    def _render_together(self, dit, takes: list[Take], progress: bool, decode: bool) -> list[torch.Tensor]:
        device = next(dit.parameters()).device
        first = takes[0]
        encoded = [encode_take(self.builder, take) for take in takes]
        cond, null = (pad_rows([pair[j] for pair in encoded]) for j in (0, 1))
        mask = pad_rows([torch.ones(c.shape[0], dtype=torch.bool) for c, _ in encoded])
        context = context_latents(self.silence_latent, first.frames, first.chunk_mask)[None].expand(len(takes), -1, -1)
        noise = initial_noise([take.seed for take in takes], first.frames, device, model_dtype(device),
                              self.silence_latent.shape[-1])
        with tqdm(total=first.steps, desc="sampling", unit="step", file=sys.stderr, disable=not progress) as bar:
            def dit_step(*args, **kwargs) -> torch.Tensor:
                bar.update()
                return dit(*args, **kwargs)

            latents = sample_latents(dit_step, noise, cond, null, context, first.steps, shift=first.shift,
                                     guidance_scale=first.guidance_scale, guidance=first.guidance, dcw=first.dcw,
                                     encoder_attention_mask=None if bool(mask.all()) else mask)
        if not decode:
            return [row[None] for row in latents]
        vae_param = next(self.vae.parameters())
        return [decode_tiled(self.vae, row[None].transpose(1, 2).to(vae_param.device, vae_param.dtype))[0].float().cpu()
                for row in latents]


def _sampler_settings(take: Take) -> tuple:
    """What takes in one sampler batch must share."""
    return (take.frames, take.steps, take.guidance, take.guidance_scale, take.dcw, take.chunk_mask, take.shift)


@contextlib.contextmanager
def borrowed_renderer(dit, checkpoint_dir) -> Iterator[Renderer]:
    """A renderer for a few takes from `dit` mid-training, with the DiT in eval mode while it is out.

    Its gradients are dropped first. On leaving, the DiT's train/eval mode is restored and the
    renderer's parts are freed there and then (the CUDA cache emptied), even where a caller's name
    still holds the renderer.
    """
    device = next(dit.parameters()).device
    for p in dit.parameters():
        p.grad = None  # the last step's gradients (1.15 GiB on XL) would sit beside the render; the next step remakes them
    renderer = Renderer.from_checkpoint(checkpoint_dir, device)
    was_training = dit.training
    dit.eval()
    try:
        yield renderer
    finally:
        dit.train(was_training)
        renderer.builder = renderer.vae = renderer.silence_latent = None
        del renderer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


DECODE_TILE_FRAMES = 256  # ~10 s of latents per VAE decode: an fp32 30 s decode would peak at 3.4 GiB
DECODE_OVERLAP_FRAMES = 32  # context decoded on each side of a tile and cut away (beyond the decoder's reach)


@torch.no_grad()
def decode_tiled(vae, latents: torch.Tensor, tile: int = DECODE_TILE_FRAMES, overlap: int = DECODE_OVERLAP_FRAMES
                 ) -> torch.Tensor:
    """VAE decode of latents [B, C, T] in tiles of `tile` frames, each decoded with `overlap` frames of context on
    both sides that are cut from its audio: bounded memory, and no seams as long as the overlap covers the
    decoder's receptive field (tests compare it with the whole decode at several lengths)."""
    frames = latents.shape[-1]
    if frames <= tile + 2 * overlap:
        return vae.decode(latents).sample
    pieces = []
    for start in range(0, frames, tile):
        end = min(start + tile, frames)
        lo, hi = max(start - overlap, 0), min(end + overlap, frames)
        audio = vae.decode(latents[..., lo:hi]).sample
        hop = audio.shape[-1] // (hi - lo)  # samples per latent frame (1920 for ACE-Step's Oobleck)
        pieces.append(audio[..., (start - lo) * hop:(end - lo) * hop])
    return torch.cat(pieces, dim=-1)


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
