"""Test-only callback: put NaN into one LoRA gradient at the optimizer steps listed in HOUSEVOX_NAN_STEPS.

HOUSEVOX_NAN_STEPS="2,3" or "2-" (every step from 2 on). It also records, per poisoned step, whether
the LoRA weights were left unchanged by that step, in the JSON file HOUSEVOX_NAN_REPORT.
"""

import json
import os

import lightning as L
import torch


def _poisoned(step: int) -> bool:
    spec = os.environ.get("HOUSEVOX_NAN_STEPS", "")
    if spec.endswith("-"):
        return step >= int(spec[:-1])
    return str(step) in spec.split(",")


class NaNGrads(L.Callback):
    def __init__(self):
        self.before = None
        self.report = {}

    def on_after_backward(self, trainer, pl_module) -> None:
        if _poisoned(trainer.global_step):
            params = pl_module.trainable_parameters()
            params[0].grad[0, 0] = float("nan")
            self.before = [p.detach().clone() for p in params]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.before is not None:
            after = pl_module.trainable_parameters()
            self.report[trainer.global_step - 1] = all(torch.equal(a, b) for a, b in zip(self.before, after))
            self.before = None
            with open(os.environ["HOUSEVOX_NAN_REPORT"], "w") as fh:
                json.dump(self.report, fh)
