"""Measured metas and per-window lyrics on the recorded test set, beside the textbook baseline.

    python benchmarks/key_meter_lyrics.py [--tracks 24] [--seed 0] [--dir DIR] [--details]

Renders `housevox.recorded_set` (fluidsynth + FluidR3; reuses DIR when it holds the set), then
scores housevox.audio.analysis and housevox.lyrics against the ground truth, and the textbook
baseline on the same tracks: librosa's default tempo estimate, mean STFT chroma correlated with the
Krumhansl-Kessler profiles, meter always 4, each lyric line in the window holding its start.
Key: exact and the MIREX score (1 exact, 0.5 fifth, 0.3 relative, 0.2 parallel; N/A scores 0).
Lyrics: windows (as prep cuts them) holding exactly the lines sung more than half inside them, in order.
`--details` prints one row per track with the confidences and the meter evidence.
"""

import argparse
import json
from dataclasses import asdict
import tempfile
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from housevox.audio import analysis
from housevox.audio.slicing import plan_segments
from housevox.lyrics import parse_lrc, window_lyrics
from housevox.metas import METAS, measured_value
from housevox.recorded_set import lines_sung_in, mirex_score, write_recorded_set

def baseline_key(y: np.ndarray, sr: int) -> str:
    chroma = librosa.feature.chroma_stft(y=y, sr=sr).mean(axis=1)
    scores = analysis.key_scores(chroma, analysis.PROFILES)
    return analysis.keyscale_name(*max(scores, key=scores.get))


def texts(window: str) -> list[str]:
    return [line for line in window.split("\n") if line and not line.startswith("[")]


def by_start(lines, windows) -> list[list[str]]:
    out = [[] for _ in windows]
    for line in lines:
        first = next((i for i, (a, b) in enumerate(windows) if a <= line.start_s < b), None)
        if first is not None:
            out[first].append(line.text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="render into / reuse this folder")
    parser.add_argument("--details", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp)
        wavs = sorted(folder.glob("recorded_*.wav"))
        if len(wavs) != args.tracks:
            wavs = write_recorded_set(folder, args.tracks, args.seed)
        evaluate(wavs, args.details)


def evaluate(wavs: list[Path], details: bool) -> None:
    ours = {"tempo": 0, "key": [], "meter": 0, "windows": 0, "na": {"bpm": 0, "key": 0, "timesignature": 0}}
    base = {"tempo": 0, "key": [], "meter": 0, "windows": 0}
    n_windows = 0
    for wav in wavs:
        truth = json.loads(wav.with_suffix(".truth.json").read_text())
        audio, sr = sf.read(wav, dtype="float32", always_2d=True)
        mono = audio.mean(axis=1)
        metas = analysis.analyze(mono, sr)
        values = {f: measured_value(f, asdict(getattr(metas, f))) for f in METAS}  # as prep writes them
        for field, value in values.items():
            ours["na"][field] += value == "N/A"
        ours["tempo"] += values["bpm"] != "N/A" and abs(values["bpm"] - truth["bpm"]) <= 1.0
        ours["key"].append(mirex_score(values["key"], truth["key"]))
        ours["meter"] += values["timesignature"] == truth["timesignature"]
        base["tempo"] += abs(float(librosa.feature.tempo(y=mono, sr=sr)[0]) - truth["bpm"]) <= 1.0
        base["key"].append(mirex_score(baseline_key(mono, sr), truth["key"]))
        base["meter"] += truth["timesignature"] == "4"

        windows = [(s.start / sr, s.end / sr) for s in plan_segments(mono, sr)]
        expected = lines_sung_in(truth, windows)
        lines = parse_lrc(wav.with_suffix(".lrc").read_text(), mono.size / sr)
        ours["windows"] += sum(texts(got) == want for got, want in zip(window_lyrics(lines, windows), expected))
        base["windows"] += sum(got == want for got, want in zip(by_start(lines, windows), expected))
        n_windows += len(windows)
        if details:
            env_mel = analysis.log_mel(librosa.resample(mono, orig_sr=sr, target_sr=analysis.SAMPLE_RATE))
            envelope = librosa.onset.onset_strength(S=env_mel, sr=analysis.SAMPLE_RATE, hop_length=analysis.HOP)
            beats = analysis.beat_frames(envelope, analysis.SAMPLE_RATE / analysis.HOP, metas.bpm.value)
            structure = analysis.bar_structure(env_mel, beats)
            print(f"{wav.stem}  bpm {truth['bpm']:6.1f} {metas.bpm.value:6.1f} ({metas.bpm.confidence:.2f})"
                  f"  key {truth['key']:9s} {metas.key.value:9s} ({metas.key.confidence:.3f}) {ours['key'][-1][1]:8s}"
                  f"  base {baseline_key(mono, sr):9s}  meter {truth['timesignature']} {metas.timesignature.value}"
                  f" ({metas.timesignature.confidence:.2f}) ternary {analysis.ternary_ratio(envelope, beats):.2f}"
                  f" 3/4 structure {structure[3] / structure[4]:.2f}", flush=True)
    n = len(wavs)

    def key_cell(scores):
        kinds = [kind for _, kind in scores]
        counts = ", ".join(f"{kinds.count(k)} {k}" for k in ("fifth", "relative", "parallel", "other", "N/A") if kinds.count(k))
        return f"{kinds.count('exact')}/{n} (MIREX {np.mean([s for s, _ in scores]):.3f}{'; ' + counts if counts else ''})"

    print(f"\n| what | housevox | textbook baseline |\n|---|---|---|\n"
          f"| tempo within +-1 bpm | {ours['tempo']}/{n} | {base['tempo']}/{n} |\n"
          f"| key exact | {key_cell(ours['key'])} | {key_cell(base['key'])} |\n"
          f"| meter | {ours['meter']}/{n} | {base['meter']}/{n} |\n"
          f"| lyrics: windows with exactly the lines sung mostly inside them | {ours['windows']}/{n_windows} | {base['windows']}/{n_windows} |\n"
          f"| N/A (bpm, key, meter) | {ours['na']['bpm']}, {ours['na']['key']}, {ours['na']['timesignature']} | - |")


if __name__ == "__main__":
    main()
