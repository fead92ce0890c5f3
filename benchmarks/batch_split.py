"""Per-segment step time at batch 1 × accumulate 4 vs 4 × 1, with model.compile off and on, in one process.

    python benchmarks/batch_split.py --config tiny
    python benchmarks/batch_split.py --config xl --layers 1 --frames 250 --cond-len 256

One optimizer step of 4 segments (conditions of different lengths around --cond-len, so 4 × 1
pads and masks) is production's bare step: `HouseVoxLoRA.training_step` (per-sample draws, the
masked DiT), backward, gradient clipping, AdamW8bit. The variants run interleaved, round after
round, after --warmup untimed rounds (where compile pays its one-time cost, reported apart), so a
shared machine's load hits all of them alike; the median per variant is printed.
"""

import argparse
import statistics
import time
import warnings

import torch
from train_step import SEED_LORA, RandomInitLoRA, cpu_model

from housevox.data.datamodule import collate
from housevox.train.synthetic import base_config, synthetic_sample

SEGMENTS = 4
SPLITS = ((1, 4), (4, 1))
LENGTH_SPREAD = (0.8, 1.0, 1.2, 0.9)  # condition lengths relative to --cond-len


def step(module, optimizer, micro_batches: list[dict]) -> float:
    start = time.perf_counter()
    for batch in micro_batches:
        (module.training_step(dict(batch), 0)["loss"] / len(micro_batches)).backward()
    module.configure_gradient_clipping(optimizer)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("xl", "2b", "tiny"), default="tiny")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--frames", type=int, default=750)
    parser.add_argument("--cond-len", type=int, default=769)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (each variant once per round)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--no-compile", action="store_true", help="only model.compile off")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="You are trying to `self.log()`")  # bare steps, no Trainer
    raw = base_config(args.config, args.layers)
    modules, compile_s = {}, {}
    for compiled in (False,) if args.no_compile else (False, True):
        torch.manual_seed(0)
        module = RandomInitLoRA(raw, **{**SEED_LORA, "gradient_checkpointing": True, "compile": compiled})
        module.configure_model()
        modules[compiled] = (module, module.configure_optimizers())
    cfg = modules[False][0].config
    items = [{**synthetic_sample(cfg, args.frames, max(1, round(f * args.cond_len)), seed=i), "index": i}
             for i, f in enumerate(LENGTH_SPREAD[:SEGMENTS])]
    batches = {(b, k): [collate(items[j:j + b]) for j in range(0, SEGMENTS, b)] for b, k in SPLITS}
    variants = [(compiled, split) for compiled in modules for split in SPLITS]
    times = {v: [] for v in variants}
    for r in range(args.warmup + args.rounds):
        for compiled, split in variants:
            module, optimizer = modules[compiled]
            seconds = step(module, optimizer, batches[split])
            if r >= args.warmup:
                times[compiled, split].append(seconds / SEGMENTS)
            elif r == 0:
                compile_s[compiled, split] = seconds
    print(f"{args.config} ({cfg.num_hidden_layers} layer(s), hidden {cfg.hidden_size}), LoRA r {SEED_LORA['rank']}, "
          f"T {args.frames}, L {[len(i['encoder_hidden_states']) for i in items]}, checkpointing on, "
          f"{cpu_model()}; median of {args.rounds} rounds after {args.warmup} warm-up")
    for compiled, split in variants:
        ts = times[compiled, split]
        print(f"  compile {'on ' if compiled else 'off'} {split[0]} x {split[1]}: {statistics.median(ts):.4f} s/segment "
              f"(min {min(ts):.4f}, max {max(ts):.4f}); first step {compile_s[compiled, split]:.1f} s")


if __name__ == "__main__":
    main()
