"""`data.batch_size: auto`: the largest micro-batch the predicted peak memory allows on this GPU, same effective batch."""

import logging

import lightning as L
import torch

log = logging.getLogger("housevox")


class AutoBatchSize(L.Callback):
    """Resolves `auto` after the cache is read (its longest condition sizes the prediction), before any loader exists.

    The config's effective batch is `accumulate_grad_batches` (auto counts as 1, the seed's 1 × 4);
    the chosen b divides it and accumulation becomes effective / b, so every optimizer step sees the
    same samples as at 1 × effective (see SeededBatchSampler) and trains the same LoRA. On CPU it is 1.
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        datamodule = trainer.datamodule
        if getattr(datamodule, "batch_size", None) != "auto":
            return
        effective = trainer.accumulate_grad_batches
        if trainer.strategy.root_device.type != "cuda":
            datamodule.batch_size = 1
            log.info("batch_size auto: 1 x accumulate_grad_batches %d (not on a GPU)", effective)
            return
        from housevox.plan.memory import RunShape, auto_batch_size

        device = trainer.strategy.root_device
        longest = max(row["L"] for row in datamodule.train_set.entries)
        shape = RunShape.from_settings(dict(pl_module.hparams), batch_size=1, cond_len=longest)
        budget = torch.cuda.get_device_properties(device).total_memory / 2**30
        b, why = auto_batch_size(pl_module.config.raw, shape, budget, effective, trainer.world_size)
        datamodule.batch_size = b
        trainer.accumulate_grad_batches = effective // b
        log.info("%s", why)
