"""Test-only callback: this process signals itself at a chosen moment of training, as Ctrl-C or a scheduler would.

HOUSEVOX_SIGNAL=<INT|TERM>:<micro-batch>:<moment>[:group] sends SIGINT / SIGTERM during the n-th micro-batch
(0-based, counted in this process) at one of: start (before the forward), backward (before it), step (before
the optimizer update), end (after its hooks); `group` sends it to the whole process group, as a terminal's
Ctrl-C does (DataLoader workers included). HOUSEVOX_SIGNAL_AGAIN=1 sends a second one while the stop saves.
It prints `signalled at step S` to stderr so the test knows the step the signal found.
"""

import os
import signal
import sys

import lightning as L


class SignalAt(L.Callback):
    def __init__(self):
        spec = os.environ.get("HOUSEVOX_SIGNAL", "INT:-1:")
        name, batch, self.moment, *group = spec.split(":")
        self.signum, self.batch, self.seen, self.sent = getattr(signal, f"SIG{name}"), int(batch), -1, False
        self.kill = (lambda sig: os.killpg(os.getpgrp(), sig)) if group else (lambda sig: os.kill(os.getpid(), sig))

    def _maybe(self, trainer, moment: str) -> None:
        if not self.sent and self.seen == self.batch and moment == self.moment:
            self.sent = True
            print(f"signalled at step {trainer.global_step}", file=sys.stderr, flush=True)
            self.kill(self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen += 1
        self._maybe(trainer, "start")

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._maybe(trainer, "backward")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._maybe(trainer, "step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe(trainer, "end")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.sent and os.environ.get("HOUSEVOX_SIGNAL_AGAIN") == "1":
            os.kill(os.getpid(), self.signum)
