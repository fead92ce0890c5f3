"""Synthetic grooves of known tempo, key and metre with timed lyrics: realistic prep/demo input without any download.

`python -m housevox.demo_audio OUT [--tracks 3] [--seed 0] [--sample-rate 44100] [--style house]` writes
`<OUT>/<name>.wav` (24-bit), `<OUT>/<name>.lrc` (lyrics timed to where the voice sings) and
`<OUT>/<name>.json` (caption and language only, so prep measures tempo, key and time signature;
the values the audio was made with are kept under `"synthesised"`, which prep does not read).
Everything is vectorised numpy and deterministic from the seed.
"""

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from housevox.atomic import write_json, write_text
from housevox.audio.analysis import keyscale_name
from housevox.audio.io import quantize_pcm24, write_pcm24
from housevox.errors import UsageError, run_cli

BPM = 122
# Scale degrees and a four-bar progression per mode, as semitone offsets from the tonic; both progressions
# start on and keep returning to the tonic chord, so the key is the one a listener hears.
SCALES = {"minor": np.array([0, 2, 3, 5, 7, 8, 10, 12]), "major": np.array([0, 2, 4, 5, 7, 9, 11, 12])}
PROGRESSIONS = {
    "minor": [(0, 3, 7), (-4, 0, 3), (-7, -4, 0), (-5, -2, 2)],  # i - VI - iv - v
    "major": [(0, 4, 7), (-5, -1, 2), (-3, 0, 4), (-7, -3, 0)],  # I - V - vi - IV
}
BACKBEATS = {4: (1, 3), 3: (1, 2)}  # claps on 2 and 4, or on 2 and 3 of a waltz bar
# Formant centre frequencies (Hz) of sung vowels a, e, i, o, u.
VOWEL_FORMANTS = np.array([[800, 1200, 2500], [400, 2000, 2600], [300, 2300, 3000], [500, 900, 2400], [350, 700, 2400]])
LYRIC_WORDS = ["night", "light", "feel", "move", "higher", "soul", "fire", "love", "deep", "rhythm", "closer", "free"]
INTRO_BARS = 16  # the demo's voice comes in after an instrumental intro (~31 s), so its first segment is instrumental


@dataclass(frozen=True)
class Groove:
    """What a synthesised track is made of: the ground truth for prep's measured metas."""

    bpm: float = BPM
    tonic: int = 57  # MIDI note
    mode: str = "minor"
    beats_per_bar: int = 4
    vocal_from_bar: int = 0
    kick_beats: tuple[float, ...] | None = None  # where in the bar the kick hits, in beats (None: every beat)
    lead: str = "voice"  # voice (sung vowels), saw (a buzzy sixteenth-note arpeggio) or bell (struck FM bell)
    chords: str = "piano"  # piano (off-beat stabs) or organ (held, bar-long)

    @property
    def keyscale(self) -> str:
        return keyscale_name(self.tonic % 12, self.mode)

    def sung_bars(self, n_bars: int) -> np.ndarray:
        """Whether the voice sings in each bar: the second half of every 8 bars, from vocal_from_bar on."""
        bar = np.arange(n_bars)
        return (bar >= self.vocal_from_bar) & ((bar % 8) >= 4)


def midi_hz(note):
    return 440.0 * 2.0 ** ((np.asarray(note, dtype=np.float64) - 69) / 12)


def _phase(freq_hz: np.ndarray, sample_rate: int) -> np.ndarray:
    """Running phase of a time-varying frequency (no clicks on pitch changes), wrapped to [0, 2pi).

    Wrapped in float64 first, the phase is exact enough in float32, where numpy's sin is ~20x faster;
    k * phase stays a valid phase for harmonic k.
    """
    return np.mod(2 * np.pi / sample_rate * np.cumsum(freq_hz), 2 * np.pi).astype(np.float32)


def _since_hits(beat_in_bar: np.ndarray, hits: tuple[float, ...], beats_per_bar: int, beat_s: float) -> np.ndarray:
    """Seconds since the latest of `hits` (beat positions in the bar), wrapping to the previous bar's last hit."""
    hits_arr = np.sort(np.asarray(hits, dtype=np.float64))
    idx = np.searchsorted(hits_arr, beat_in_bar, side="right") - 1
    last = np.where(idx >= 0, hits_arr[np.maximum(idx, 0)], hits_arr[-1] - beats_per_bar)
    return ((beat_in_bar - last) * beat_s).astype(np.float32)


def _lead(groove: Groove, note_f0: np.ndarray, beat: np.ndarray, beat_s: float, sample_rate: int) -> np.ndarray:
    """The non-vocal leads: a saw arpeggio (the beat's note, its fifth and octave in sixteenths) or an FM bell per beat."""
    beat_idx = beat.astype(int)
    if groove.lead == "saw":
        sixteenth = (beat * 4).astype(int) % 4
        f0 = note_f0[beat_idx] * np.array([1.0, 1.5, 2.0, 1.5])[sixteenth]
        phase = _phase(f0, sample_rate)
        t16 = ((beat * 4 % 1.0) * beat_s / 4).astype(np.float32)
        saw = sum(np.sin(k * phase) / k for k in range(1, 13))
        return 1.2 * saw * _decay(t16, 9.0)
    t_beat = ((beat % 1.0) * beat_s).astype(np.float32)
    phase = _phase(2 * note_f0[beat_idx], sample_rate)
    return 1.5 * np.sin(phase + 2.0 * _decay(t_beat, 6.0) * np.sin(3.5 * phase)) * _decay(t_beat, 3.0)


def _decay(t_since_hit: np.ndarray, rate) -> np.ndarray:
    return np.exp(-np.asarray(rate, dtype=np.float32) * t_since_hit)


def synthesize_track(rng: np.random.Generator, duration_s: float, sample_rate: int, tonic: int | None = None,
                     groove: Groove | None = None) -> np.ndarray:
    """One stereo groove [2, samples]: kick, claps, hats, bassline, piano stabs and a sung vowel line.

    `groove` sets tempo, key, metre and where the voice sings (default: 122 bpm house in 4/4, minor
    key); `tonic` is a shortcut for a default groove on that MIDI note.
    """
    groove = groove or Groove(tonic=57 if tonic is None else tonic)
    n = int(duration_s * sample_rate)
    beat_s = 60.0 / groove.bpm
    beat = np.arange(n) / (sample_rate * beat_s)
    beat_idx = beat.astype(int)
    t_beat = ((beat % 1.0) * beat_s).astype(np.float32)  # seconds since the last beat
    t_eighth = ((beat * 2 % 1.0) * beat_s / 2).astype(np.float32)
    offbeat = (beat * 2 % 2.0) >= 1.0
    bar, beat_in_bar = np.divmod(beat_idx, groove.beats_per_bar)
    progression = PROGRESSIONS[groove.mode]
    chord_of_bar = bar % len(progression)
    chord_hz = midi_hz(groove.tonic + np.array(progression))  # [chords, 3]
    downbeat = beat_in_bar == 0

    # A kick on every beat (a sine sweeping 150 -> 50 Hz), the bar's first one a little harder.
    t_kick = t_beat if groove.kick_beats is None else _since_hits(beat % groove.beats_per_bar, groove.kick_beats, groove.beats_per_bar, beat_s)
    kick = np.sin(2 * np.pi * (50 * t_kick + 5.0 * (1 - np.exp(-20 * t_kick)))) * _decay(t_kick, 7.0)
    kick *= np.where(downbeat, 1.0, 0.85).astype(np.float32)

    noise = np.diff(rng.standard_normal((2, n + 1), dtype=np.float32), axis=1)  # differenced: bright, hat-like
    hats = noise * _decay(t_eighth, np.where(offbeat, 18.0, 60.0)) * np.where(offbeat, 0.5, 0.25).astype(np.float32)
    # Claps: the hat noise with its top octave taken off (a 2-tap sum), so no burst sits at Nyquist.
    clap = (noise[1] + np.roll(noise[1], 1)) * _decay(t_beat, 22.0) * np.isin(beat_in_bar, BACKBEATS[groove.beats_per_bar])

    # Chord root two octaves down: held from each downbeat, then pumping on the off-beats.
    bass_phase = _phase(chord_hz[chord_of_bar, 0] / 4, sample_rate)
    bass_env = offbeat * _decay(t_eighth, 6.0) + (downbeat & ~offbeat) * _decay(t_beat, 4.0)
    bass = (np.sin(bass_phase) + 0.3 * np.sin(2 * bass_phase)) * bass_env

    piano = np.zeros(n, dtype=np.float32)
    stab_t = np.where(offbeat, t_eighth, np.float32(10.0))  # stabs on the off-beats, silent elsewhere
    voice_phases = [_phase(chord_hz[chord_of_bar, voice], sample_rate) for voice in range(3)]
    for k in range(1, 6):  # piano-like: higher partials die away faster
        partial = sum(np.sin(k * phase) for phase in voice_phases)
        if groove.chords == "organ":  # drawbars: every partial held for the whole bar
            piano += partial * np.float32(0.5 / k)
        else:
            piano += partial * (_decay(stab_t, 3.0 + 2.0 * k) / k**1.5)

    # Sung line: one scale note and vowel per beat, 5.5 Hz vibrato of +-0.3 semitone.
    scale = SCALES[groove.mode]
    note_of_beat = rng.integers(0, len(scale), size=beat_idx[-1] + 1)
    vowel_of_beat = rng.integers(0, len(VOWEL_FORMANTS), size=note_of_beat.size)
    note_f0 = midi_hz(groove.tonic + scale[note_of_beat])
    vibrato = np.sin(_phase(np.full(n, 5.5), sample_rate))
    f0_phase = _phase(note_f0[beat_idx] * 2.0 ** (0.3 / 12 * vibrato), sample_rate)
    # Source-filter voice: harmonic k of each beat's note is loud when it sits near a formant of its vowel.
    harmonics = np.arange(1, 16)
    dist = (harmonics[None, :, None] * note_f0[:, None, None] - VOWEL_FORMANTS[vowel_of_beat][:, None, :]) / 120.0
    harmonic_gain = ((1.0 / (1.0 + dist**2)).sum(axis=2) / np.sqrt(harmonics)).astype(np.float32)  # [beats, k]
    vocal = np.zeros(n, dtype=np.float32)
    for k in range(1, harmonics.size + 1):
        vocal += np.sin(k * f0_phase) * harmonic_gain[beat_idx, k - 1]
    vocal *= groove.sung_bars(bar[-1] + 1)[bar] * np.minimum(1.0, t_beat / 0.03) * _decay(np.maximum(t_beat - 0.35, 0), 8.0)
    if groove.lead != "voice":
        vocal = _lead(groove, note_f0, beat, beat_s, sample_rate) * groove.sung_bars(bar[-1] + 1)[bar]

    mono = 0.9 * kick + 0.5 * bass + 0.08 * piano + 0.12 * vocal + 0.1 * clap
    stereo = np.stack([mono + 0.04 * piano, mono + 0.04 * np.roll(piano, int(0.012 * sample_rate))]) + 0.05 * hats
    mastered = np.tanh(2.5 * stereo / np.abs(stereo).max())  # soft saturation: a club master's crest factor
    level = rng.uniform(0.3, 0.8)  # tracks arrive at different levels, as real ones do
    return (mastered * (level / np.abs(mastered).max())).astype(np.float32)


def _timestamp(seconds: float) -> str:
    minutes, rest = divmod(round(seconds * 100), 6000)
    return f"[{minutes:02d}:{rest // 100:02d}.{rest % 100:02d}]"


def lrc_lyrics(rng: np.random.Generator, groove: Groove, duration_s: float) -> str:
    """An .lrc timed to the synthesised voice: a line per two sung bars, verse and chorus taking turns,
    and an empty timed line where each phrase ends."""
    bar_s = groove.beats_per_bar * 60.0 / groove.bpm
    sung = groove.sung_bars(int(duration_s / bar_s))
    starts = [b for b in range(sung.size) if sung[b] and not (b and sung[b - 1])]
    chorus = " ".join(rng.choice(LYRIC_WORDS, size=3))
    out = []
    for phrase, first in enumerate(starts):
        out.append("[chorus]" if phrase % 2 else "[verse]")
        for bar in range(first, min(first + 4, sung.size), 2):
            words = chorus if phrase % 2 else " ".join(rng.choice(LYRIC_WORDS, size=4))
            out.append(f"{_timestamp(bar * bar_s)} {words}")
        out.append(_timestamp(min(first + 4, sung.size) * bar_s))
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Style:
    """A family of grooves: what every track of it shares, and the ranges its tracks are drawn from."""

    caption: str
    bpm: tuple[int, int]  # inclusive range
    beats_per_bar: int = 4
    kick_beats: tuple[float, ...] | None = None
    leads: tuple[str, ...] = ("voice",)
    chords: tuple[str, ...] = ("piano",)


STYLES = {
    # The demo base's family: four-on-the-floor house with a sung line, piano stabs or organ chords.
    "house": Style("house music style, soulful vocal performance, driving groove, vocal track singing", (118, 128),
                   chords=("piano", "organ")),
    # The demo LoRA's style, never in the base: half-time electro at 86-96 bpm, a broken kick, a saw arpeggio lead.
    "electro": Style("electro style, half-time broken beat, buzzing saw arpeggio lead, instrumental", (86, 96),
                     kick_beats=(0.0, 2.5), leads=("saw",), chords=("organ",)),
    # A third family for tests: a fast waltz with a struck bell lead, kick on the downbeat only.
    "waltz": Style("bell waltz, three-four time, music box bell melody, instrumental", (140, 150), beats_per_bar=3,
                   kick_beats=(0.0,), leads=("bell",), chords=("piano",)),
}


def demo_groove(rng: np.random.Generator, style: str = "house") -> Groove:
    """A groove of `style`: a tempo in its band, any of the 24 keys, its instruments, the lead after the intro."""
    family = STYLES[style]
    pitch_class = int(rng.integers(12))
    groove = Groove(bpm=float(rng.integers(family.bpm[0], family.bpm[1] + 1)), tonic=53 + (pitch_class - 5) % 12,
                    mode=str(rng.choice(list(PROGRESSIONS))), beats_per_bar=family.beats_per_bar,
                    kick_beats=family.kick_beats, lead=str(rng.choice(family.leads)), chords=str(rng.choice(family.chords)))
    return replace(groove, vocal_from_bar=INTRO_BARS if groove.lead == "voice" else 0)


def synthesize_demo_tracks(
    out_dir: str | Path,
    n_tracks: int = 3,
    seed: int = 0,
    duration_s: float | None = None,
    sample_rate: int = 44100,
    container: str = "WAV",
    style: str = "house",
) -> list[Path]:
    """Write n_tracks 24-bit tracks of `style` (60-90 s unless duration_s is given) with JSON sidecars, and a
    timed .lrc where the lead is a voice; return their paths."""
    if style not in STYLES:
        raise UsageError(f"--style: unknown style {style!r} (choose from {', '.join(STYLES)})")
    out_dir = Path(out_dir)
    paths = []
    for i in range(n_tracks):
        rng = np.random.default_rng([seed, i] if style == "house" else [seed, i, *style.encode()])
        groove = demo_groove(rng, style)
        duration = duration_s if duration_s is not None else float(rng.uniform(60.0, 90.0))
        audio = synthesize_track(rng, duration, sample_rate, groove=groove)
        name = f"housevox_{'demo' if style == 'house' else style}_{seed}_{i:02d}"
        path = out_dir / f"{name}.{container.lower()}"
        write_pcm24(path, quantize_pcm24(audio), sample_rate, container=container)
        if groove.lead == "voice":
            write_text(out_dir / f"{name}.lrc", lrc_lyrics(rng, groove, duration))
        write_json(out_dir / f"{name}.json", {
            "caption": STYLES[style].caption,
            "language": "en",
            "synthesised": {"bpm": groove.bpm, "key": groove.keyscale, "timesignature": str(groove.beats_per_bar)},
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
    parser.add_argument("--style", default="house", help=f"one of {', '.join(STYLES)} (default house)")
    args = parser.parse_args(argv)
    for path in synthesize_demo_tracks(args.out, args.tracks, args.seed, args.duration, args.sample_rate, style=args.style):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
