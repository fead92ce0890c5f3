"""Peak resident memory while loading a multi-shard checkpoint, against the size of its weights.

Writes a >= 1 GB random checkpoint with housevox's fixture maker (2B width, a few layers,
several shards), then loads the DiT in fresh processes (fp32 and bf16) and prints how much
the peak RSS grew during loading, as a multiple of the loaded weights. Lazy loading (meta
device + shard-by-shard safe_open + assign=True) should stay near 1x, never 2x.

    python benchmarks/load_peak_rss.py [--layers 4] [--shard-mb 256] [--keep DIR]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = r"""
import json, resource, sys, torch
import housevox.acestep as acestep
dtype = getattr(torch, sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
dit = acestep.load_dit(sys.argv[1], dtype=dtype)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
weights = sum(p.numel() * p.element_size() for p in dit.parameters())
print(json.dumps({"dtype": sys.argv[2], "rss_before_mib": before / 1024, "rss_peak_mib": after / 1024,
                  "weights_mib": weights / 2**20}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--shard-mb", type=float, default=256)
    parser.add_argument("--keep", help="write the checkpoint here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp) / "acestep-2b-wide"
        if not (folder / "config.json").is_file():
            subprocess.run([sys.executable, "-m", "housevox.acestep.fixture", str(folder), "--preset", "2b",
                            "--num-layers", str(args.layers), "--shard-mb", str(args.shard_mb), "--no-aux"], check=True)
        shards = sorted(folder.glob("model-*.safetensors"))
        on_disk = sum(p.stat().st_size for p in shards) / 2**20
        print(f"checkpoint: {len(shards)} shards, {on_disk:.0f} MiB on disk (fp32)")
        for dtype in ("float32", "bfloat16"):
            out = subprocess.run([sys.executable, "-c", PROBE, str(folder), dtype], check=True, capture_output=True,
                                 text=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            grew = r["rss_peak_mib"] - r["rss_before_mib"]
            print(f"load_dit {dtype:9s}: weights {r['weights_mib']:.0f} MiB, peak RSS grew {grew:.0f} MiB "
                  f"= {grew / r['weights_mib']:.2f}x the loaded weights")


if __name__ == "__main__":
    main()
