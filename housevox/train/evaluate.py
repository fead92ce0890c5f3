"""Fit-time eval: score each LoRA export (FAD to the training and held-out segments, CLAP) as it is written.

Off by default (model.eval_every_n_epochs: 0): every scored export renders eval_takes full
takes, and the first one also the base's, which costs GPU time the lint states up front.
The scores are the ones `python -m housevox.eval` writes (same takes, same eval.json).
"""

import logging

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from housevox.acestep import open_checkpoint
from housevox.eval.embed import DEFAULT_CLAP, load_embedding
from housevox.eval.evaluator import Evaluator
from housevox.eval.prompts import DEFAULT_SEED, distinct_prompts, plan_takes
from housevox.eval.render import DEFAULT_GUIDANCE_SCALE, DEFAULT_DURATION_S, RenderSettings
from housevox.generate import borrowed_renderer
from housevox.train.callbacks import export_file, run_dir, tensorboard_writer

log = logging.getLogger("housevox")


class ExportEval(L.Callback):
    """After the LoRA export of every `eval_every_n_epochs`-th epoch: render, embed, score, write eval.json + eval/*.

    The takes, references and base scores are made at the first scored export and kept; the
    encoders, VAE and embedding model are loaded for each eval and freed after it, so training
    memory is unchanged between evals.
    """

    def __init__(self):
        self.evaluator: Evaluator | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        """Fail before any training when the CLAP weights are not in the local cache."""
        hp = pl_module.hparams
        if hp.eval_every_n_epochs > 0 and hp.eval_embedding == "clap" and trainer.is_global_zero:
            load_embedding("clap", None, DEFAULT_CLAP)

    @rank_zero_only
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        hp = pl_module.hparams
        epoch = trainer.current_epoch + 1
        if hp.eval_every_n_epochs <= 0 or epoch % hp.eval_every_n_epochs:
            return
        with borrowed_renderer(pl_module.dit, open_checkpoint(hp.checkpoint_dir)) as renderer:
            device = next(pl_module.dit.parameters()).device
            embedding = load_embedding(hp.eval_embedding, renderer.vae, DEFAULT_CLAP, device)
            try:
                if self.evaluator is None:
                    self.evaluator = self._evaluator(trainer, pl_module, embedding)
                row = self.evaluator.score_epoch(pl_module.dit, renderer, embedding, run_dir(trainer), epoch,
                                                 trainer.global_step, export_file(trainer, epoch).name, _writer(trainer))
            finally:
                del embedding  # before the renderer is freed: it may hold the renderer's VAE
        log.info("eval: epoch %d: FAD to training set %.4g (base %.4g)", epoch, row["fad_train"],
                 self.evaluator.doc["base"]["fad_train"])

    @staticmethod
    def _evaluator(trainer, pl_module, embedding) -> Evaluator:
        hp, data = pl_module.hparams, trainer.datamodule
        train, held_out = data.train_set.entries, data.val_set.entries
        takes = plan_takes(distinct_prompts(train, "train"), distinct_prompts(held_out, "held_out"), hp.eval_takes,
                           DEFAULT_SEED)
        settings = RenderSettings.of(duration_s=DEFAULT_DURATION_S, steps=hp.num_inference_steps,
                                     guidance_scale=DEFAULT_GUIDANCE_SCALE, shift=hp.shift)
        return Evaluator(embedding, takes, settings, data.segments_dir, train, held_out)


def _writer(trainer):
    writer = tensorboard_writer(trainer)
    if writer is None:
        raise RuntimeError("eval_every_n_epochs needs the TensorBoard logger (housevox.fit sets it)")
    return writer
