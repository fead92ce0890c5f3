"""Measured XL step time and peak memory on this CUDA GPU, printed next to housevox's prediction.

    bash benchmarks/gpu_check.sh          (fresh venv, installs uv.lock, then runs this)

Four variants of the seed run (r 128, all seven names, AdamW8bit, batch 1, T 750, L 769):
bf16 base with checkpointing, int8, nf4, and bf16 without checkpointing. Each is measured by
`benchmarks/train_step.py` (production Trainer, random-init weights) in its own process, so one
variant's cached memory never inflates the next. Predictions come from `housevox.plan.memory`.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from housevox.plan.memory import CUDA_CONTEXT_GIB, CUDA_WORKSPACE_GIB, GPUS, UTILISATION, RunShape, card_for, predict
from housevox.train.synthetic import base_config

HERE = Path(__file__).resolve().parent
VARIANTS = {"bf16": ([], RunShape()), "int8": (["--quantize", "int8"], RunShape(quantize_base="int8")),
            "nf4": (["--quantize", "nf4"], RunShape(quantize_base="nf4")),
            "ckpt off": (["--no-checkpointing"], RunShape(gradient_checkpointing=False))}


def measure(flags: list[str], steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.jsonl"
        subprocess.run([sys.executable, str(HERE / "train_step.py"), "--config", "xl", "--device", "cuda",
                        "--steps", str(steps), "--warmup", str(warmup), "--json-out", str(out), *flags], check=True)
        return json.loads(out.read_text().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps (4 segments each)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", choices=VARIANTS, nargs="*", help="a subset of the variants")
    args = parser.parse_args()
    rows = []
    for name in args.only or VARIANTS:
        flags, shape = VARIANTS[name]
        p = predict(base_config("xl"), shape)
        m = measure(flags, args.steps, args.warmup)
        card = card_for(m["device"])
        predicted_s = p.step_seconds(GPUS[card][1]) if card else float("nan")
        rows.append((name, p, m, predicted_s))
        print(json.dumps({"variant": name, "predicted_allocated_gib": p.allocated / 2**30,
                          "predicted_on_card_gib": p.on_card_gib, "predicted_s_per_segment": predicted_s, **m}), flush=True)
    print(f"\ndevice: {rows[0][2]['device']} (measured); predictions at {UTILISATION:.0%} of the card's dense bf16 peak, "
          f"on-card = allocated + {CUDA_CONTEXT_GIB + CUDA_WORKSPACE_GIB:.2f} GiB allowance")
    print(f"{'variant':<9} {'pred alloc':>10} {'meas alloc':>10} {'ratio':>6} {'meas reserved':>13} "
          f"{'pred card':>9} {'meas card':>9} {'pred s/seg':>10} {'meas s/seg':>10}")
    for name, p, m, predicted_s in rows:
        alloc = p.allocated / 2**30
        print(f"{name:<9} {alloc:>10.2f} {m['peak_allocated_gib']:>10.2f} {alloc / m['peak_allocated_gib']:>6.3f} "
              f"{m['peak_reserved_gib']:>13.2f} {p.on_card_gib:>9.2f} {m['device_used_gib']:>9.2f} "
              f"{predicted_s:>10.4f} {m['s_per_segment']:>10.4f}")


if __name__ == "__main__":
    main()
