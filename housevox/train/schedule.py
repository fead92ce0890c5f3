"""Learning-rate schedule: linear warmup, then cosine cycles with restarts down to a floor."""

import math


def lr_factor(step: int, warmup_steps: int, total_steps: int, num_cycles: int = 4,
              cycle_steps: int | None = None, floor: float = 0.01) -> float:
    """Multiplier on the peak lr at optimizer step `step` (0-based).

    By default the post-warmup steps are split into `num_cycles` equal cosine cycles,
    so the run ends in a trough (the LoRA saved last is the settled one), never just
    after a restart. A user-set `cycle_steps` overrides that and is linted.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    cycle = cycle_steps if cycle_steps else span / max(num_cycles, 1)
    position = ((step - warmup_steps) % cycle) / cycle
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * position))


def restart_steps(warmup_steps: int, total_steps: int, num_cycles: int = 4, cycle_steps: int | None = None) -> list[int]:
    """Optimizer steps at which a new cosine cycle starts (for plots and the lint)."""
    span = max(total_steps - warmup_steps, 1)
    cycle = cycle_steps if cycle_steps else span / max(num_cycles, 1)
    return [warmup_steps + math.ceil(k * cycle) for k in range(1, math.ceil(span / cycle)) if k * cycle < span]
