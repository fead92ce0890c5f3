"""Ctrl-C or SIGTERM during fit: finish the optimizer step in flight, save it, export its LoRA, exit 130 / 143.

A checkpoint can only resume exactly at an optimizer-step boundary (a half-accumulated gradient is not in
it), so the micro-batch in flight is finished, and so are the rest of its step's accumulation window
(at most accumulate_grad_batches - 1 more). Then `last.ckpt` is written at that step and the LoRA reached
goes to `lora/step_NNNNNN/` with `interrupted` in its metadata. Further signals while saving only print
a note: every write is atomic and is allowed to complete. `save_stop_point` is the one place the stop
writes, and it waits for the background checkpoint writer (train/checkpoint_io.py) before reporting.
"""

import logging
import signal
import threading

import lightning as L

from housevox.errors import Stopped
from housevox.train.callbacks import export_path, run_dir, training_metadata, write_export

log = logging.getLogger("housevox")

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopOnSignal(L.Callback):
    """Turns SIGINT / SIGTERM into a saved stop at the next optimizer-step boundary (rank zero's signal)."""

    def __init__(self):
        self.signum = None
        self.finished_after_signal = 0  # micro-batches completed after the signal arrived
        self.stop = None  # the exit, raised once the save is done and logged

    def on_train_start(self, trainer, pl_module) -> None:
        # After Lightning's own SIGTERM handler (registered before the loop starts); its teardown restores the originals.
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_CODES:
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            log.warning("%s: stopping at the end of the optimizer step in flight, then saving its checkpoint and LoRA", name)
        else:
            log.warning("%s: already stopping; the save completes first", name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.signum is None or self.stop is not None:
            return
        self.finished_after_signal += 1
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch's last step: its validation and export run, then on_train_epoch_end saves
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: the step's remaining micro-batches run first
        self._save(trainer, pl_module, trainer.current_epoch, write_checkpoint=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.signum is not None and self.stop is None:  # RunCheckpoints has just written last.ckpt at this step
            self._save(trainer, pl_module, trainer.current_epoch + 1, write_checkpoint=False)

    # The exit waits for the next hook: by then Lightning has written the saved step's logged losses.
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._exit()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._exit()

    def on_train_end(self, trainer, pl_module) -> None:
        self._exit()

    def _exit(self) -> None:
        if self.stop is not None:
            raise self.stop

    def _save(self, trainer, pl_module, epochs_done: int, write_checkpoint: bool) -> None:
        name = signal.Signals(self.signum).name
        ckpt, lora = save_stop_point(trainer, pl_module, name, epochs_done, write_checkpoint)
        finished = ("the micro-batch in flight was finished" if self.finished_after_signal <= 1 else
                    f"the micro-batch in flight was finished and the {self.finished_after_signal - 1} more that "
                    f"complete its optimizer step")
        self.stop = Stopped(f"stopped by {name} at optimizer step {trainer.global_step} (epoch {trainer.current_epoch + 1}): "
                            f"{finished}\n  checkpoint: {ckpt}\n  LoRA:       {lora}", EXIT_CODES[self.signum])


def save_stop_point(trainer, pl_module, signal_name: str, epochs_done: int, write_checkpoint: bool):
    """`last.ckpt` at the current step (unless just written) and the LoRA reached, marked interrupted."""
    step = trainer.global_step
    ckpt = run_dir(trainer) / "checkpoints" / "last.ckpt"
    if write_checkpoint:
        trainer.save_checkpoint(ckpt, weights_only=False)
    file = export_path(trainer, f"step_{step:06d}")
    metadata = training_metadata(trainer, pl_module, epochs_done)
    metadata["interrupted"] = f"{signal_name} at step {step}"
    write_export(trainer, pl_module, file, metadata)
    # The checkpoint may be in a background write (this one, or RunCheckpoints' at an epoch end): the stop
    # reports it only once it is on disk, renamed into place; a write error surfaces here, not after the exit.
    wait_for_writes = getattr(trainer.strategy.checkpoint_io, "wait", None)
    if wait_for_writes is not None:
        wait_for_writes()
    return ckpt, file.parent
