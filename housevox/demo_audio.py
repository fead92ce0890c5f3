"""Synthetic house tracks with sidecar captions: realistic prep/demo input without any download.

`python -m housevox.demo_audio OUT [--tracks 3] [--seed 0] [--sample-rate 44100]` writes
`<OUT>/<name>.wav` (24-bit) and `<OUT>/<name>.json` (caption, lyrics, bpm, key, ...).
Everything is vectorised numpy and deterministic from the seed.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from housevox.atomic import write_json
from housevox.audio.io import quantize_pcm24, write_pcm24
from housevox.errors import run_cli

BPM = 122
KEYS = {"A minor": 57, "C minor": 60, "D minor": 62, "F minor": 53, "G minor": 55}  # MIDI note of the tonic
# i - VI - III - VII in a natural minor key, as semitone offsets of each chord's triad from the tonic.
PROGRESSION = [(0, 3, 7), (-4, 0, 3), (3, 7, 10), (-2, 2, 5)]
MINOR_SCALE = np.array([0, 2, 3, 5, 7, 8, 10, 12])
# Formant centre frequencies (Hz) of sung vowels a, e, i, o, u.
VOWEL_FORMANTS = np.array([[800, 1200, 2500], [400, 2000, 2600], [300, 2300, 3000], [500, 900, 2400], [350, 700, 2400]])
LYRIC_WORDS = ["night", "light", "feel", "move", "higher", "soul", "fire", "love", "deep", "rhythm", "closer", "free"]


def midi_hz(note):
    return 440.0 * 2.0 ** ((np.asarray(note, dtype=np.float64) - 69) / 12)


def _phase(freq_hz: np.ndarray, sample_rate: int) -> np.ndarray:
    """Running phase of a time-varying frequency (no clicks on pitch changes), wrapped to [0, 2pi).

    Wrapped in float64 first, the phase is exact enough in float32, where numpy's sin is ~20x faster;
    k * phase stays a valid phase for harmonic k.
    """
    return np.mod(2 * np.pi / sample_rate * np.cumsum(freq_hz), 2 * np.pi).astype(np.float32)


def _decay(t_since_hit: np.ndarray, rate) -> np.ndarray:
    return np.exp(-np.asarray(rate, dtype=np.float32) * t_since_hit)


def synthesize_track(rng: np.random.Generator, duration_s: float, sample_rate: int, tonic: int) -> np.ndarray:
    """One stereo house groove [2, samples]: kick, hats, bassline, piano stabs and a sung vowel line."""
    n = int(duration_s * sample_rate)
    beat_s = 60.0 / BPM
    beat = np.arange(n) / (sample_rate * beat_s)
    beat_idx = beat.astype(int)
    t_beat = ((beat % 1.0) * beat_s).astype(np.float32)  # seconds since the last beat
    t_eighth = ((beat * 2 % 1.0) * beat_s / 2).astype(np.float32)
    offbeat = (beat * 2 % 2.0) >= 1.0
    bar = beat_idx // 4
    chord_of_bar = bar % len(PROGRESSION)
    chord_hz = midi_hz(tonic + np.array(PROGRESSION))  # [chords, 3]
    vocal_on = (bar % 8) >= 4  # the singer comes in for the second half of every 8 bars

    # Four-on-the-floor kick: a sine sweeping 150 -> 50 Hz at every beat.
    kick = np.sin(2 * np.pi * (50 * t_beat + 5.0 * (1 - np.exp(-20 * t_beat)))) * _decay(t_beat, 7.0)

    noise = np.diff(rng.standard_normal((2, n + 1), dtype=np.float32), axis=1)  # differenced: bright, hat-like
    hats = noise * _decay(t_eighth, np.where(offbeat, 18.0, 60.0)) * np.where(offbeat, 0.5, 0.25).astype(np.float32)

    bass_phase = _phase(chord_hz[chord_of_bar, 0] / 4, sample_rate)  # chord root, two octaves down
    bass = (np.sin(bass_phase) + 0.3 * np.sin(2 * bass_phase)) * (offbeat * _decay(t_eighth, 6.0))

    piano = np.zeros(n, dtype=np.float32)
    stab_t = np.where(offbeat, t_eighth, np.float32(10.0))  # stabs on the off-beats, silent elsewhere
    voice_phases = [_phase(chord_hz[chord_of_bar, voice], sample_rate) for voice in range(3)]
    for k in range(1, 6):  # piano-like: higher partials die away faster
        partial = sum(np.sin(k * phase) for phase in voice_phases)
        piano += partial * (_decay(stab_t, 3.0 + 2.0 * k) / k**1.5)

    # Sung line: one scale note and vowel per beat, 5.5 Hz vibrato of +-0.3 semitone.
    note_of_beat = rng.integers(0, len(MINOR_SCALE), size=beat_idx[-1] + 1)
    vowel_of_beat = rng.integers(0, len(VOWEL_FORMANTS), size=note_of_beat.size)
    note_f0 = midi_hz(tonic + MINOR_SCALE[note_of_beat])
    vibrato = np.sin(_phase(np.full(n, 5.5), sample_rate))
    f0_phase = _phase(note_f0[beat_idx] * 2.0 ** (0.3 / 12 * vibrato), sample_rate)
    # Source-filter voice: harmonic k of each beat's note is loud when it sits near a formant of its vowel.
    harmonics = np.arange(1, 16)
    dist = (harmonics[None, :, None] * note_f0[:, None, None] - VOWEL_FORMANTS[vowel_of_beat][:, None, :]) / 120.0
    harmonic_gain = ((1.0 / (1.0 + dist**2)).sum(axis=2) / np.sqrt(harmonics)).astype(np.float32)  # [beats, k]
    vocal = np.zeros(n, dtype=np.float32)
    for k in range(1, harmonics.size + 1):
        vocal += np.sin(k * f0_phase) * harmonic_gain[beat_idx, k - 1]
    vocal *= vocal_on * np.minimum(1.0, t_beat / 0.03) * _decay(np.maximum(t_beat - 0.35, 0), 8.0)

    mono = 0.9 * kick + 0.5 * bass + 0.08 * piano + 0.12 * vocal
    stereo = np.stack([mono + 0.04 * piano, mono + 0.04 * np.roll(piano, int(0.012 * sample_rate))]) + 0.05 * hats
    mastered = np.tanh(1.2 * stereo / np.abs(stereo).max())  # soft saturation: a club master's crest factor
    level = rng.uniform(0.3, 0.8)  # tracks arrive at different levels, as real ones do
    return (mastered * (level / np.abs(mastered).max())).astype(np.float32)


def _lyrics(rng: np.random.Generator) -> str:
    lines = [" ".join(rng.choice(LYRIC_WORDS, size=4)) for _ in range(4)]
    chorus = " ".join(rng.choice(LYRIC_WORDS, size=3))
    return "[verse]\n" + "\n".join(lines) + f"\n\n[chorus]\n{chorus}\n{chorus}\n"


def synthesize_demo_tracks(
    out_dir: str | Path,
    n_tracks: int = 3,
    seed: int = 0,
    duration_s: float | None = None,
    sample_rate: int = 44100,
    container: str = "WAV",
) -> list[Path]:
    """Write n_tracks 24-bit tracks (60-90 s unless duration_s is given) with JSON sidecars; return their paths."""
    out_dir = Path(out_dir)
    paths = []
    for i in range(n_tracks):
        rng = np.random.default_rng([seed, i])
        key = sorted(KEYS)[rng.integers(len(KEYS))]
        duration = duration_s if duration_s is not None else float(rng.uniform(60.0, 90.0))
        audio = synthesize_track(rng, duration, sample_rate, KEYS[key])
        name = f"housevox_demo_{seed}_{i:02d}"
        path = out_dir / f"{name}.{container.lower()}"
        write_pcm24(path, quantize_pcm24(audio), sample_rate, container=container)
        write_json(out_dir / f"{name}.json", {
            "caption": f"house music style, soulful vocal performance, driving groove, vocal track singing, {BPM} bpm",
            "lyrics": _lyrics(rng),
            "bpm": BPM,
            "key": key,
            "timesignature": "4",
            "language": "en",
        })
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m housevox.demo_audio", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the tracks and sidecars into")
    parser.add_argument("--tracks", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--duration", type=float, default=None, help="seconds per track (default: 60-90 s from the seed)")
    args = parser.parse_args(argv)
    for path in synthesize_demo_tracks(args.out, args.tracks, args.seed, args.duration, args.sample_rate):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
