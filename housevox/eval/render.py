"""The one place the eval makes audio: fixed takes → 48 kHz stereo clips through `housevox.generate`.

The renders use the path `housevox.sample` and the preview use (upstream's sampler: APG, DCW,
upstream noise, chunk mask "auto"), so a scored take is the take a producer would hear.
"""

from dataclasses import asdict, dataclass, replace

import torch

from housevox.eval.prompts import EvalTake
from housevox.generate import DEFAULT_GUIDANCE_SCALE, Renderer, Take
from housevox.lora import set_lora_scale

DEFAULT_DURATION_S = 30.0  # the segment length: renders and references cover the same span
__all__ = ["DEFAULT_DURATION_S", "DEFAULT_GUIDANCE_SCALE", "RenderSettings", "Renderer", "render_takes"]


@dataclass(frozen=True)
class RenderSettings:
    """The sampler settings every take shares, as a template take; each take adds its prompt and seed."""

    template: Take

    @classmethod
    def of(cls, **sampler) -> "RenderSettings":
        """Take's sampler fields by name (duration_s, steps, guidance_scale, shift, ...); the rest its defaults."""
        return cls(Take(caption="", **sampler))

    def take(self, t: EvalTake) -> Take:
        """The template with `t`'s caption fields and seed (a prompt without a language takes the template's)."""
        fields = t.prompt.caption_fields()
        return replace(self.template, **{**fields, "language": fields["language"] or self.template.language},
                       seed=t.seed)

    def record(self) -> dict:
        """eval.json's `render`: the template less its caption fields and seed, and the sampler's name."""
        captioned = self.template.caption_fields()
        shared = {k: v for k, v in asdict(self.template).items() if k not in captioned and k != "seed"}
        return {**shared, "sampler": "housevox.generate"}


def render_takes(dit, renderer: Renderer, takes: list[EvalTake], settings: RenderSettings,
                 lora_scale: float) -> list[torch.Tensor]:
    """One clip [2, S] per take with the adapters at `lora_scale` (0 = the base alone); scale 1 and mode restored after.

    Takes render in sampler batches (Renderer.render_batch: padded, masked, each take as if alone).
    """
    was_training = dit.training
    dit.eval()
    set_lora_scale(dit, lora_scale)
    try:
        return renderer.render_batch(dit, [settings.take(t) for t in takes])
    finally:
        set_lora_scale(dit, 1.0)
        dit.train(was_training)
