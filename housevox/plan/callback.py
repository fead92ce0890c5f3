"""The lint at the start of every fit: the plan of the run as Lightning is about to train it."""

import logging

import lightning as L
import torch

from housevox.plan.lint import lint_run

log = logging.getLogger("housevox")


class RunLint(L.Callback):
    """Prints the configuration lint before any compute is spent (the V1 alpha-6 story, dead targets...).

    On CUDA it adds the predicted peak memory and step time, checked against the card's own size.
    """

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.global_step > 0:
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
    from housevox.plan.memory import RunShape, card_for, memory_lint  # CUDA runs only: keeps fit's import light

    datamodule = getattr(trainer, "datamodule", None)
    shape = RunShape.from_settings(dict(pl_module.hparams), batch_size=getattr(datamodule, "batch_size", None) or 1)
    props = torch.cuda.get_device_properties(pl_module.device)
    return memory_lint(pl_module.config.raw, shape, props.total_memory / 2**30, card_for(props.name))
