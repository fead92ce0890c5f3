"""Throughput of `housevox.prep` on a few minutes of 48 kHz stereo FLAC (synthesised, no download).

    python benchmarks/prep_throughput.py [--minutes 5] [--workers 2] [--no-analyze]

Times the pipeline call itself (decode, resample, slice, loudness, write, manifest), not the
Python start-up, and prints seconds, audio minutes and x real time. It also prints the CPU time
of this process and its workers: on a shared machine the wall time depends on what else runs,
audio seconds per CPU second much less. `--no-analyze` times prep without its tempo/key/metre
analysis (on by default). Imports (torch, librosa) happen before the timed call.
"""

import argparse
import contextlib
import io
import resource
import tempfile
import time
from pathlib import Path

import soundfile as sf

from housevox import prep
from housevox.demo_audio import synthesize_demo_tracks

TRACK_S = 75.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="total audio to generate")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-analyze", action="store_true", help="time prep without tempo/key/metre analysis")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        n_tracks = max(1, round(args.minutes * 60 / TRACK_S))
        tracks = synthesize_demo_tracks(src, n_tracks, seed=0, duration_s=TRACK_S, sample_rate=48000, container="FLAC")
        audio_s = sum(sf.info(path).duration for path in tracks)
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            prep.main(["--input", str(src), "--output", str(out), "--workers", str(args.workers)]
                      + (["--no-analyze"] if args.no_analyze else []))
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_before  # workers are joined when prep.main returns
    print(f"{n_tracks} tracks, {audio_s / 60:.2f} min of 48 kHz stereo FLAC, {args.workers} workers,"
          f" analysis {'off' if args.no_analyze else 'on'}")
    print(f"{seconds:.2f} s -> {audio_s / seconds:.0f}x real time")
    print(f"{cpu:.2f} CPU s -> {audio_s / cpu:.0f}x real time per busy core")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
