"""Peak live bytes while loading the DiT for `quantize_base: int8|nf4`: quantise-while-loading vs load-then-quantise.

Writes an XL-width random checkpoint with a few blocks (housevox's fixture maker, its shards
rewritten in bf16 as the real checkpoint's are loaded: an fp32 file adds an fp32 host read buffer of
the one tensor being loaded, which LiveBytes counts on the CPU but a GPU never holds), then loads its DiT in bf16 on the CPU under the memory lint's own `LiveBytes` tracker (every
storage an op creates, freed when it dies) — once as housevox loads it now (each block Linear
quantised as its weight arrives) and once the old way (the whole bf16 DiT, then quantised).
Prints the peak against the quantised model's size plus its largest bf16 Linear weight.

    .venv/bin/python benchmarks/quantised_load_peak.py [--layers 2] [--keep DIR]
"""

import argparse
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from safetensors.torch import load_file, save_file

from housevox.plan.memory import measure_load


def load_peak(checkpoint: Path, mode: str, while_loading: bool) -> dict:
    """Peak and final live bytes of the load, and the bf16 bytes of its largest Linear and largest block."""
    peak, final, dit = measure_load(checkpoint, mode, while_loading)
    linear = max(m.in_features * m.out_features * 2 for m in dit.layers.modules() if hasattr(m, "in_features"))
    block = max(sum(m.in_features * m.out_features * 2 for m in b.modules() if hasattr(m, "in_features"))
                + sum(p.numel() * 2 for n, p in b.named_parameters() if p.is_floating_point() and "weight" in n and p.ndim == 1)
                for b in dit.layers)
    return {"peak": peak, "final": final, "linear": linear, "block": block}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--keep", help="write the checkpoint here and keep it")
    args = parser.parse_args()
    logging.getLogger("housevox").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp) / "acestep-xl-few"
        if not (folder / "config.json").is_file():
            subprocess.run([sys.executable, "-m", "housevox.acestep.fixture", str(folder), "--preset", "xl",
                            "--num-layers", str(args.layers), "--shard-mb", "512", "--no-aux"], check=True)
            for shard in folder.glob("model*.safetensors"):
                save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(shard).items()},
                          str(shard), metadata={"format": "pt"})
        print(f"XL width, {args.layers} blocks, bf16 load on the CPU, LiveBytes (the memory lint's tracker)")
        for mode in ("int8", "nf4"):
            for while_loading in (False, True):
                r = load_peak(folder, mode, while_loading)
                how = "quantise while loading" if while_loading else "load bf16, then quantise"
                verdict = {k: "within" if r["peak"] <= 1.05 * r["final"] + r[k] else "OVER" for k in ("linear", "block")}
                print(f"{mode:5s} {how:26s}: peak {r['peak'] / 2**20:7.1f} MiB = quantised model {r['final'] / 2**20:6.1f} MiB "
                      f"+ {(r['peak'] - r['final']) / 2**20:6.1f} MiB; one layer in bf16: largest Linear "
                      f"{r['linear'] / 2**20:.1f} MiB ({verdict['linear']} 1.05 x quantised + it), largest block "
                      f"{r['block'] / 2**20:.1f} MiB ({verdict['block']})")


if __name__ == "__main__":
    main()
