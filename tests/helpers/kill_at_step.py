"""Test-only callback: SIGKILL this process right after optimizer step N (set HOUSEVOX_KILL_AT_STEP)."""

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == int(os.environ["HOUSEVOX_KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)
