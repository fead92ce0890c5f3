"""What housevox.fit's Lightning Trainer costs per optimizer step over a bare PyTorch loop (CPU).

    python benchmarks/lightning_overhead.py [--repeats 3] [--steps 8] [--threads 1]

Both loops drive the same module (`HouseVoxLoRA` on a random-init base, pinned below), the same
synthetic batches through a plain DataLoader and the same optimizer (AdamW8bit). The Trainer side
is production's: `TRAINER_DEFAULTS`, `housevox.fit.callbacks()`, a TensorBoard logger, progress bar
off. The bare side is training_step + backward (+ clip, step, zero_grad every `accumulate`
micro-batches). Repeats alternate the two loops; the last line is the median of the per-repeat
ratios of median step times (the fastest-step ratio above it is the least disturbed by other jobs).
"""

import argparse
import statistics
import tempfile
import time

import torch

from train_step import SEED_LORA, RandomInitLoRA, StepTimer, base_config, production_trainer, synthetic_loader

# The tiny preset widened so one micro-batch takes over 40 ms on a 2-core CPU: the
# Trainer's per-step bookkeeping is then measured against a realistic amount of work.
PINNED = base_config("tiny", layers=2, hidden_size=128, intermediate_size=512, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=64)
FRAMES, COND_LEN, ACCUMULATE = 750, 769, 4
LORA = dict(SEED_LORA, rank=16, alpha=16.0)


def fresh_module() -> RandomInitLoRA:
    torch.manual_seed(0)
    return RandomInitLoRA(PINNED, **LORA)


def trainer_step_times(steps: int, warmup: int) -> list[float]:
    module = fresh_module()
    timer = StepTimer(warmup)
    loader = synthetic_loader(module.config, (warmup + steps) * ACCUMULATE, FRAMES, COND_LEN)
    with tempfile.TemporaryDirectory() as root:
        production_trainer("cpu", warmup + steps, ACCUMULATE, root, timer).fit(module, train_dataloaders=loader)
    return timer.step_times()


def bare_step_times(steps: int, warmup: int) -> list[float]:
    module = fresh_module()
    module.configure_model()
    optimizer = module.configure_optimizers()
    loader = synthetic_loader(module.config, (warmup + steps) * ACCUMULATE, FRAMES, COND_LEN)
    marks = [time.perf_counter()]
    for batch_idx, batch in enumerate(loader):
        (module.training_step(batch, batch_idx)["loss"] / ACCUMULATE).backward()
        if (batch_idx + 1) % ACCUMULATE == 0:
            module.configure_gradient_clipping(optimizer)
            optimizer.step()
            optimizer.zero_grad()
            marks.append(time.perf_counter())
    return [b - a for a, b in zip(marks, marks[1:])][warmup:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per loop")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 is steadier on a shared machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ratios, best = [], {"bare": float("inf"), "trainer": float("inf")}
    for repeat in range(args.repeats):
        bare_times, trainer_times = bare_step_times(args.steps, args.warmup), trainer_step_times(args.steps, args.warmup)
        best = {"bare": min(best["bare"], *bare_times), "trainer": min(best["trainer"], *trainer_times)}
        bare, lightning = statistics.median(bare_times), statistics.median(trainer_times)
        ratios.append(lightning / bare)
        print(f"repeat {repeat + 1}: bare {bare * 1000:.1f} ms/step ({bare / ACCUMULATE * 1000:.1f} ms/micro-batch), "
              f"Trainer {lightning * 1000:.1f} ms/step -> {ratios[-1]:.3f}x")
    # Other jobs on a shared CPU only ever add time: the fastest steps are the least disturbed.
    print(f"fastest step: bare {best['bare'] * 1000:.1f} ms, Trainer {best['trainer'] * 1000:.1f} ms "
          f"-> {best['trainer'] / best['bare']:.3f}x")
    print(f"overhead: {statistics.median(ratios):.2f}x (median of {args.repeats} repeats)")


if __name__ == "__main__":
    main()
