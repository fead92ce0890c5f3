"""How long the whole run takes: its size, and the remaining time once steps are measured.

The measurement starts after WARMUP_STEPS optimizer steps (allocator, kernel autotuning,
optimizer-state allocation); the remaining time is the measured wall time per step since then,
validation and exports included, times the steps left. The prediction before any step is
plan/'s (`plan.callback.predicted_step_seconds`).
"""

import math
import time

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
