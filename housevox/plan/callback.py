"""The lint at the start of every fit: the plan of the run as Lightning is about to train it."""

import logging

import lightning as L
import torch

from housevox.plan.lint import lint_run
from housevox.train.callbacks import RunProfile
from housevox.train.eta import WARMUP_STEPS, clock, run_size

log = logging.getLogger("housevox")


CHECKPOINTING_MARGIN = 0.10  # auto keeps checkpointing off only with this share of the card to spare (fragmentation)


def checkpointing_needed(pl_module, card_gib: float, batch_size: int = 1) -> bool:
    """Whether the run's predicted peak without gradient checkpointing misses `card_gib` less the margin; logged."""
    from housevox.plan.memory import RunShape, predict

    shape = RunShape.from_settings({**dict(pl_module.hparams), "gradient_checkpointing": False}, batch_size=batch_size)
    peak = predict(pl_module.config.raw, shape).on_card_gib
    on = peak > (1 - CHECKPOINTING_MARGIN) * card_gib
    log.info("gradient_checkpointing auto: %s (predicted peak without it %.1f GiB %s %.0f %% of this card's %.1f GiB)",
             "on" if on else "off", peak, "exceeds" if on else "fits in", 100 * (1 - CHECKPOINTING_MARGIN), card_gib)
    return on


class CheckpointingAuto(L.Callback):
    """Decides `gradient_checkpointing: auto` on a CUDA card before the model is built (setup precedes configure_model)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        device = trainer.strategy.root_device
        if pl_module.hparams.get("gradient_checkpointing") != "auto" or device.type != "cuda" or pl_module.dit is not None:
            return
        card_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        batch_size = getattr(getattr(trainer, "datamodule", None), "batch_size", None) or 1
        pl_module.checkpointing = checkpointing_needed(pl_module, card_gib, batch_size)


class RunLint(L.Callback):
    """Prints the run's size and predicted time (every start), then the configuration lint (the first start)
    before any compute is spent (the V1 alpha-6 story, dead targets...).

    On CUDA it adds the predicted peak memory and step time, checked against the card's own size.
    """

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        predict_run_time(trainer, pl_module)
        if trainer.global_step > 0:
            return
        hp = pl_module.hparams
        warnings = lint_run(pl_module.lora_settings, cfg_ratio=hp.cfg_ratio, model_version=pl_module.config.model_version,
                            warmup_steps=hp.warmup_steps, total_steps=int(trainer.estimated_stepping_batches),
                            num_cycles=hp.num_cycles, cycle_steps=hp.cycle_steps, plan=pl_module.plan,
                            eval_every_n_epochs=hp.eval_every_n_epochs, eval_takes=hp.eval_takes,
                            inference_steps=hp.num_inference_steps, max_epochs=trainer.max_epochs,
                            segments_per_step=getattr(trainer.datamodule, "batch_size", 1) * trainer.accumulate_grad_batches,
                            quantize_base=hp.quantize_base, compile=hp.get("compile", False))
        if pl_module.device.type == "cuda":
            notes, memory_warnings = predicted_memory(trainer, pl_module)
            for line in notes:
                log.info("lint: %s", line)
            warnings += memory_warnings
        for line in warnings:
            log.warning("lint: %s", line)


def predicted_memory(trainer, pl_module) -> tuple[list[str], list[str]]:
    """The memory lint for this run on this CUDA card (its name picks the step-time peak, its size the budget)."""
    from housevox.plan.memory import RunShape, card_for, memory_lint, render_shapes  # CUDA runs only: keeps fit's import light

    datamodule = getattr(trainer, "datamodule", None)
    settings = {**dict(pl_module.hparams), "gradient_checkpointing": pl_module.checkpointing}  # auto, decided
    shape = RunShape.from_settings(settings, batch_size=getattr(datamodule, "batch_size", None) or 1)
    props = torch.cuda.get_device_properties(pl_module.device)
    return memory_lint(pl_module.config.raw, shape, props.total_memory / 2**30, card_for(props.name), trainer.world_size,
                       renders=render_shapes(settings), checkpoint_dir=settings.get("checkpoint_dir"))


def predict_run_time(trainer, pl_module) -> None:
    """The fit's first lines: segments, steps and epochs, and the predicted time; RunProfile records the prediction."""
    datamodule = getattr(trainer, "datamodule", None)
    train_set = getattr(datamodule, "train_set", None)
    accumulate, total = trainer.accumulate_grad_batches, int(trainer.estimated_stepping_batches)
    log.info(run_size(len(train_set) if train_set is not None else None, trainer.num_training_batches, accumulate,
                      trainer.max_epochs, total))
    seconds, where = predicted_step_seconds(pl_module, getattr(datamodule, "batch_size", None) or 1, accumulate)
    for profile in (c for c in trainer.callbacks if isinstance(c, RunProfile)):
        profile.predicted = (seconds, where)
    left = total - trainer.global_step
    if seconds is None:
        log.info("predicted time: %s; the remaining time shows after %d measured steps", where, WARMUP_STEPS + 1)
    else:
        log.info("predicted time: %.2f s an optimizer step %s -> %s for the %s steps left (an estimate: counted "
                 "FLOPs at 40 %% of the card's bf16 peak; validation, exports and previews come on top)",
                 seconds, where, clock(seconds * left), f"{left:,}")


def predicted_step_seconds(pl_module, batch_size: int, accumulate: int) -> tuple[float | None, str]:
    """(seconds per optimizer step, where) on this CUDA card: the memory predictor's FLOP count of one micro-batch
    at 40 % of the card's dense bf16 peak, an estimate; None with the reason elsewhere."""
    device = pl_module.device
    if device.type != "cuda":
        return None, f"no prediction on {device.type} (the predictor models CUDA cards)"
    from housevox.plan.memory import GPUS, RunShape, card_for, predict  # CUDA runs only: keeps fit's import light

    name = torch.cuda.get_device_name(device)
    card = card_for(name)
    if card is None:
        return None, f"no prediction for {name} (known cards: {', '.join(GPUS)})"
    shape = RunShape.from_settings(dict(pl_module.hparams), batch_size=batch_size)
    return predict(pl_module.config.raw, shape).step_seconds(GPUS[card][1]) * accumulate, f"on {name}"
