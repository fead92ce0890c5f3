"""The one place the eval makes audio: fixed takes → 48 kHz stereo clips for the DiT at a given LoRA scale."""

from dataclasses import dataclass

import torch

from housevox.acestep import load_silence_latent, load_vae, model_dtype
from housevox.acestep.conditioning import ConditionBuilder
from housevox.eval.prompts import EvalTake
from housevox.lora import set_lora_scale
from housevox.sample import DEFAULT_CFG, Take, render

DEFAULT_DURATION_S = 30.0  # the segment length: renders and references cover the same span
__all__ = ["DEFAULT_CFG", "DEFAULT_DURATION_S", "RenderKit", "RenderSettings", "render_takes"]


@dataclass(frozen=True)
class RenderSettings:
    duration_s: float
    steps: int
    cfg: float
    shift: float

    def record(self) -> dict:
        return {"duration_s": self.duration_s, "steps": self.steps, "cfg": self.cfg, "shift": self.shift,
                "sampler": "housevox.sample.render"}


@dataclass
class RenderKit:
    """What a render needs besides the DiT: the condition encoder, the VAE (fp32 decode) and the silence latent."""

    builder: ConditionBuilder
    vae: torch.nn.Module
    silence: torch.Tensor

    @classmethod
    def load(cls, checkpoint, device: torch.device) -> "RenderKit":
        builder = ConditionBuilder.from_checkpoint(checkpoint, dtype=model_dtype(device), device=device)
        return cls(builder, load_vae(checkpoint, dtype=torch.float32, device=device), load_silence_latent(checkpoint))


def render_takes(dit, kit: RenderKit, takes: list[EvalTake], settings: RenderSettings, lora_scale: float) -> list[torch.Tensor]:
    """One clip [2, S] per take with the adapters at `lora_scale` (0 = the base alone); scale 1 and mode restored after."""
    was_training = dit.training
    dit.eval()
    set_lora_scale(dit, lora_scale)
    try:
        return [render(dit, kit.builder, kit.vae, kit.silence,
                       Take(caption=t.prompt.caption, lyrics=t.prompt.lyrics, bpm=t.prompt.bpm, key=t.prompt.keyscale,
                            timesignature=t.prompt.timesignature, language=t.prompt.language or "en",
                            duration_s=settings.duration_s, steps=settings.steps, cfg=settings.cfg,
                            shift=settings.shift, seed=t.seed))
                for t in takes]
    finally:
        set_lora_scale(dit, 1.0)
        dit.train(was_training)
