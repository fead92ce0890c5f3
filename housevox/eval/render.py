"""The one place the eval makes audio: fixed takes → 48 kHz stereo clips through `housevox.generate`.

The renders use the path `housevox.sample` and the preview use (upstream's sampler: APG, DCW,
upstream noise, chunk mask "auto"), so a scored take is the take a producer would hear.
"""

from dataclasses import dataclass

import torch

from housevox.eval.prompts import EvalTake
from housevox.generate import CHUNK_MASK_AUTO, DEFAULT_GUIDANCE_SCALE, Renderer, Take
from housevox.lora import set_lora_scale

DEFAULT_DURATION_S = 30.0  # the segment length: renders and references cover the same span
__all__ = ["DEFAULT_DURATION_S", "DEFAULT_GUIDANCE_SCALE", "RenderSettings", "Renderer", "render_takes"]


@dataclass(frozen=True)
class RenderSettings:
    duration_s: float
    steps: int
    guidance_scale: float
    shift: float
    guidance: str = "apg"
    dcw: bool = True
    chunk_mask: float = CHUNK_MASK_AUTO

    def record(self) -> dict:
        return {"duration_s": self.duration_s, "steps": self.steps, "guidance": self.guidance,
                "guidance_scale": self.guidance_scale, "dcw": self.dcw, "chunk_mask": self.chunk_mask,
                "shift": self.shift, "sampler": "housevox.generate"}


def render_takes(dit, renderer: Renderer, takes: list[EvalTake], settings: RenderSettings,
                 lora_scale: float) -> list[torch.Tensor]:
    """One clip [2, S] per take with the adapters at `lora_scale` (0 = the base alone); scale 1 and mode restored after."""
    was_training = dit.training
    dit.eval()
    set_lora_scale(dit, lora_scale)
    try:
        return [renderer.render(dit, Take(
                    caption=t.prompt.caption, lyrics=t.prompt.lyrics, bpm=t.prompt.bpm, key=t.prompt.keyscale,
                    timesignature=t.prompt.timesignature, language=t.prompt.language or "en",
                    duration_s=settings.duration_s, steps=settings.steps, guidance=settings.guidance,
                    guidance_scale=settings.guidance_scale, dcw=settings.dcw, chunk_mask=settings.chunk_mask,
                    shift=settings.shift, seed=t.seed))
                for t in takes]
    finally:
        set_lora_scale(dit, 1.0)
        dit.train(was_training)
