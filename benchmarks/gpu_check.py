"""Measured XL step time and peak memory on this CUDA GPU, printed next to housevox's prediction.

    bash benchmarks/gpu_check.sh [--wheels DIR] [--dry-run]   (installs what is missing offline, then runs this)

Variants of the seed run (r 128, all seven names, AdamW8bit, T 750, L 769), each 4 segments per
optimizer step: bf16 base with checkpointing at batch 1 × 4, int8, nf4, checkpointing off, batch
4 × 1, batch auto (data.batch_size: auto on this card), and model.compile at 1 × 4. Each is
measured by `benchmarks/train_step.py` (production Trainer, random-init weights) in its own
process, so one variant's cached memory never inflates the next. Predictions come from
`housevox.plan.memory` (compile is not modelled: its prediction is the uncompiled step's).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name: (train_step.py flags, RunShape overrides for the prediction)
VARIANTS = {
    "bf16 1x4": ([], {}),
    "int8 1x4": (["--quantize", "int8"], {"quantize_base": "int8"}),
    "nf4 1x4": (["--quantize", "nf4"], {"quantize_base": "nf4"}),
    "ckpt off 1x4": (["--no-checkpointing"], {"gradient_checkpointing": False}),
    "bf16 4x1": (["--batch-size", "4", "--accumulate", "1"], {"batch_size": 4}),
    "bf16 auto": (["--batch-size", "auto"], {}),
    "compile 1x4": (["--compile"], {}),
}


def measure(flags: list[str], steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.jsonl"
        subprocess.run([sys.executable, str(HERE / "train_step.py"), "--config", "xl", "--device", "cuda",
                        "--steps", str(steps), "--warmup", str(warmup), "--json-out", str(out), *flags], check=True)
        return json.loads(out.read_text().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps (4 segments each)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", choices=VARIANTS, nargs="*", help="a subset of the variants")
    parser.add_argument("--dry-run", action="store_true", help="say what would be measured; touch no GPU")
    args = parser.parse_args()
    names = args.only or list(VARIANTS)
    if args.dry_run:
        print(f"would measure on the CUDA device, {args.warmup} warm-up + {args.steps} timed optimizer steps each, "
              "one process per variant (random-init XL, r 128, AdamW8bit, T 750, L 769):")
        for name in names:
            print(f"  {name:<13} train_step.py --config xl {' '.join(VARIANTS[name][0])}".rstrip())
        print("each row: s per segment, peak allocated / reserved / on-card GiB, beside the predicted GiB and s/segment")
        return
    from housevox.plan.memory import CUDA_CONTEXT_GIB, CUDA_WORKSPACE_GIB, GPUS, UTILISATION, RunShape, card_for, predict
    from housevox.train.synthetic import base_config

    rows = []
    for name in names:
        flags, overrides = VARIANTS[name]
        m = measure(flags, args.steps, args.warmup)
        shape = replace(RunShape(**overrides), batch_size=m["batch_size"])
        p = predict(base_config("xl"), shape)
        card = card_for(m["device"])
        predicted_s = p.step_seconds(GPUS[card][1]) / m["batch_size"] if card else float("nan")
        rows.append((name, p, m, predicted_s))
        print(json.dumps({"variant": name, "predicted_allocated_gib": p.allocated / 2**30,
                          "predicted_on_card_gib": p.on_card_gib, "predicted_s_per_segment": predicted_s, **m}), flush=True)
    print(f"\ndevice: {rows[0][2]['device']} (measured); predictions at {UTILISATION:.0%} of the card's dense bf16 peak, "
          f"on-card = allocated + {CUDA_CONTEXT_GIB + CUDA_WORKSPACE_GIB:.2f} GiB allowance")
    print(f"{'variant':<13} {'batch':>5} {'pred alloc':>10} {'meas alloc':>10} {'ratio':>6} {'meas reserved':>13} "
          f"{'pred card':>9} {'meas card':>9} {'pred s/seg':>10} {'meas s/seg':>10}")
    for name, p, m, predicted_s in rows:
        alloc = p.allocated / 2**30
        print(f"{name:<13} {m['batch_size']:>2}x{m['accumulate']:<2} {alloc:>10.2f} {m['peak_allocated_gib']:>10.2f} "
              f"{alloc / m['peak_allocated_gib']:>6.3f} {m['peak_reserved_gib']:>13.2f} {p.on_card_gib:>9.2f} "
              f"{m['device_used_gib']:>9.2f} {predicted_s:>10.4f} {m['s_per_segment']:>10.4f}")


if __name__ == "__main__":
    main()
