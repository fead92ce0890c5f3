"""How long the whole run takes: its size, the predicted time on this device, the remaining time once measured.

The prediction is the memory predictor's FLOP count of one micro-batch at 40 % of the card's dense bf16
peak (an estimate, CUDA cards it knows only). The measurement starts after WARMUP_STEPS optimizer
steps (allocator, kernel autotuning, optimizer-state allocation), and the remaining time is the
measured wall time per step since then, validation and exports included, times the steps left.
"""

import math
import time

import torch

WARMUP_STEPS = 2


def clock(seconds: float) -> str:
    """`1:02:03` / `2:03`: a duration as a progress bar shows one."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def run_size(segments: int | None, batches_per_epoch: int, accumulate: int, epochs: int, total_steps: int) -> str:
    per_epoch = math.ceil(batches_per_epoch / accumulate)
    seg = f"{segments:,} training segments, " if segments is not None else ""
    return (f"run: {seg}{batches_per_epoch:,} micro-batches = {per_epoch:,} optimizer steps an epoch "
            f"(accumulate {accumulate}) x {epochs} epochs = {total_steps:,} optimizer steps")


def predicted_step_seconds(pl_module, batch_size: int, accumulate: int) -> tuple[float | None, str]:
    """(seconds per optimizer step, where) on this CUDA card; None with the reason elsewhere."""
    from housevox.train.memory import GPUS, RunShape, card_for, predict

    device = pl_module.device
    if device.type != "cuda":
        return None, f"no prediction on {device.type} (the predictor models CUDA cards)"
    name = torch.cuda.get_device_name(device)
    card = card_for(name)
    if card is None:
        return None, f"no prediction for {name} (known cards: {', '.join(GPUS)})"
    shape = RunShape.from_settings(dict(pl_module.hparams), batch_size=batch_size)
    seconds = predict(pl_module.config.raw, shape).step_seconds(GPUS[card][1]) * accumulate
    return seconds, f"on {name}"


class StepClock:
    """Wall time of optimizer steps in this process: per step inside epochs (comparable with the prediction),
    and over the whole span since warm-up (what the remaining time uses)."""

    def __init__(self):
        self.first = None  # (step, time) at the end of warm-up
        self.last = None  # (step, time, epoch) of the previous step
        self.step_sum, self.step_count = 0.0, 0

    def tick(self, step: int, epoch: int, warm_from: int) -> None:
        now = time.perf_counter()
        if step < warm_from + WARMUP_STEPS:
            self.last = (step, now, epoch)
            return
        if self.first is None:
            self.first = (step, now)
        elif self.last and self.last[2] == epoch and step == self.last[0] + 1:
            self.step_sum += now - self.last[1]
            self.step_count += 1
        self.last = (step, now, epoch)

    @property
    def step_seconds(self) -> float | None:
        """Mean seconds per optimizer step between consecutive steps of one epoch."""
        return self.step_sum / self.step_count if self.step_count else None

    def remaining(self, step: int, total_steps: int) -> float | None:
        if self.first is None or step <= self.first[0]:
            return None
        rate = (time.perf_counter() - self.first[1]) / (step - self.first[0])
        return rate * max(total_steps - step, 0)
