"""Audio preview during training: a fixed-seed clip from the model being trained, every N epochs.

The clip goes through `housevox.generate`, the path `python -m housevox.sample` renders with,
so a preview sounds like the exported LoRA at the same settings (upstream's APG, DCW, chunk mask).
"""

import logging
from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from housevox.generate import DEFAULT_PROMPT, SAMPLE_RATE, Take, borrowed_renderer, write_wav
from housevox.train.callbacks import run_dir, tensorboard_writer

log = logging.getLogger("housevox")


def first_entry(trainer) -> dict:
    """The first training cache row (caption, lyrics, bpm, ...) when the datamodule has one."""
    dataset = getattr(getattr(trainer, "datamodule", None), "train_set", None)
    entries = getattr(dataset, "entries", None)
    return entries[0] if entries else {}


class AudioPreview(L.Callback):
    """Renders `<run dir>/samples/epoch_NNN.wav` and logs it to TensorBoard every `sample_every_n_epochs`.

    Encoders and the VAE are loaded for the preview and freed after it, so training
    memory is unchanged between previews; the noise comes from its own generator, so
    previews never change the training run's random stream.
    """

    def __init__(self, duration_s: float = 10.0, seed: int = 42, max_steps: int = 20):
        self.duration_s, self.seed, self.max_steps = duration_s, seed, max_steps

    def take(self, trainer, pl_module) -> Take:
        hp, row = pl_module.hparams, first_entry(trainer)
        return Take(caption=row.get("caption") or DEFAULT_PROMPT, lyrics=row.get("lyrics"), bpm=row.get("bpm"),
                    key=row.get("keyscale"), timesignature=row.get("timesignature"),
                    language=row.get("language") or "en", duration_s=self.duration_s,
                    steps=min(hp.num_inference_steps, self.max_steps), shift=hp.shift, seed=self.seed)

    @rank_zero_only
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        every = pl_module.hparams.sample_every_n_epochs
        if every <= 0 or (trainer.current_epoch + 1) % every:
            return
        take = self.take(trainer, pl_module)
        audio = self.render(pl_module, take)
        path = run_dir(trainer) / "samples" / f"epoch_{trainer.current_epoch + 1:03d}.wav"  # 1-based, like lora/epoch_NNN
        write_wav(path, audio, {**asdict(take), "epoch": trainer.current_epoch, "global_step": trainer.global_step})
        log.info("preview: wrote %s", path)
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_audio("preview", audio.mean(0, keepdim=True).clamp(-1, 1), trainer.global_step,
                             sample_rate=SAMPLE_RATE)

    @staticmethod
    def render(pl_module, take: Take) -> torch.Tensor:
        with borrowed_renderer(pl_module.dit, pl_module.hparams.checkpoint_dir) as renderer:
            return renderer.render(pl_module.dit, take)
