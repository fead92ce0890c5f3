"""Cache read speed versus a tiny-model train step: data loading must stay under 5 % of step time.

Builds a small cache with the tiny checkpoint (a few noise segments, entries repeated to
~200 rows), then times (a) iterating the DataModule's train loader and (b) one DiT
forward + backward on the same batch shapes (weights frozen, activation gradients only,
as under LoRA). The tiny model's step is far cheaper than XL's, so the ratio printed here
is an upper bound for real runs.

    .venv/bin/python benchmarks/cache_read.py [--segments 4] [--rows 200] [--batch-size 1] [--num-workers 0]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from housevox.acestep import load_dit
from housevox.acestep.fixture import make_fixture
from housevox.data import SegmentCacheDataModule

SR = 44100


def write_segments(folder: Path, n: int) -> None:
    """n noise segments of one track, sharing caption and lyrics (equal L, so batch_size > 1 batches fully)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        name = f"bench_{i:03d}.wav"
        sf.write(folder / name, 0.1 * rng.standard_normal((30 * SR, 2)), SR, subtype="PCM_24")
        rows.append({"file": name, "track": "bench", "segment_index": i, "caption": "deep house, vocal",
                     "lyrics": "[Verse] la la", "bpm": 122, "key": None, "timesignature": 4, "language": "en"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def time_loader(loader, epochs: int) -> tuple[float, list]:
    """Seconds per batch over whole epochs, and the last epoch's batches (to reuse their shapes)."""
    batches, start = [], time.perf_counter()
    for _ in range(epochs):
        batches = list(loader)
    return (time.perf_counter() - start) / (epochs * len(batches)), batches


def time_step(dit, batch: dict, device: torch.device, steps: int) -> float:
    """Median seconds of one flow-matching forward + backward through the frozen DiT."""
    x0, cond, ctx = (batch[k].to(device) for k in ("target_latents", "encoder_hidden_states", "context_latents"))
    times = []
    for _ in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        t = torch.rand(x0.shape[0], device=device)
        noise = torch.randn_like(x0)
        x_t = (t[:, None, None] * noise + (1 - t[:, None, None]) * x0).requires_grad_(True)
        loss = torch.nn.functional.mse_loss(dit(x_t, t, t, cond, ctx), noise - x0)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segments", type=int, default=4, help="segments to encode (each costs a tiny-VAE pass)")
    p.add_argument("--rows", type=int, default=200, help="dataset rows after repeating the built entries")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = make_fixture(root / "acestep-v15-tiny", preset="tiny", seed=0)
        write_segments(root / "segments", args.segments)
        dm = SegmentCacheDataModule(str(root / "segments"), str(ckpt), batch_size=args.batch_size,
                                    num_workers=args.num_workers, val_fraction=0.0)
        start = time.perf_counter()
        dm.prepare_data()
        print(f"cache build: {dm.last_build_report.built} entries in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        dm.setup("fit")
        entries = dm.train_set.entries
        dm.train_set.entries = (entries * (args.rows // len(entries) + 1))[: args.rows]
        load_s, batches = time_loader(dm.train_dataloader(), args.epochs)
        step_s = time_step(load_dit(ckpt, device=device), batches[0], device, args.steps)

    share = 100 * load_s / step_s
    print(f"device {device}, batch_size {args.batch_size}, num_workers {args.num_workers}, {args.rows} rows")
    print(f"loader: {1 / load_s:.0f} batches/s ({1e3 * load_s:.2f} ms/batch)")
    print(f"tiny train step: {1e3 * step_s:.1f} ms")
    print(f"data loading = {share:.2f} % of step time ({'OK' if share < 5 else 'OVER'} the 5 % budget)")
    return 0 if share < 5 else 1


if __name__ == "__main__":
    sys.exit(main())
