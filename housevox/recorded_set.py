"""House tracks played by recorded instruments, with ground truth: the realistic check of prep's measured metas and lyrics.

`python -m housevox.recorded_set OUT [--tracks 24] [--seed 0]` writes `<OUT>/<name>.wav` (22.05 kHz
stereo), `<OUT>/<name>.lrc` and `<OUT>/<name>.truth.json` (tempo, key, meter and the sung span of
every lyric line). Each track is a MIDI arrangement rendered by fluidsynth through the FluidR3 General
MIDI soundfont (Debian packages `fluidsynth` and `fluid-soundfont-gm`; `.ci/run` installs them): every
note is a recorded sample - acoustic and electric pianos, organs, guitars, strings, brass, recorded
drum kits (standard, room, electronic, TR-808) and, for the sung line, the soundfont's recorded
"voice oohs" and "choir aahs" singers. Unlike the demo's synth voices these carry the inharmonic
attacks, uneven partials, detuned sampled layers, room reverb and chorus of real recordings, and
every track is off concert pitch by up to +-40 cents (a global pitch bend), as recordings are.

The harmony is what house producers play: minor vamps (i-VII-VI-VII, i-iv, Dorian i7-IV7), pop
loops (I-V-vi-IV, IV-V-I-vi: starting away from the tonic), jazz-house ii-V-I with 7th chords,
sus and add9 colours. Most tracks are 4/4; a few are 3/4 and 6/8 (compound: the tempo counts the
dotted quarter, 2 beats of 3 eighths). Everything is deterministic from the seed.
"""

import argparse
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from housevox.atomic import write_json, write_text
from housevox.audio.analysis import PITCH_NAMES, keyscale_name
from housevox.errors import HousevoxError, run_cli

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
SAMPLE_RATE = 22050
TICKS_PER_S = 1920  # MIDI clock: 960 ticks per quarter at a fixed 120 bpm, so events are placed in seconds
DRUM_CHANNEL = 9
# General MIDI programs (0-based) of recorded instruments in FluidR3.
KITS = {"standard": 0, "room": 8, "power": 16, "electronic": 24, "tr808": 25}
BASSES = (32, 33, 34, 35, 36, 38)  # acoustic, finger, pick, fretless, slap, synth bass 1
KEYS = (0, 1, 2, 4, 5, 16, 17, 24, 26, 48, 61)  # pianos, e-pianos, organs, guitars, strings, brass section
LEADS = (52, 53)  # choir aahs, voice oohs: the sung line
COLOURS = (11, 56, 65, 73, 89)  # vibraphone, trumpet, alto sax, flute, warm pad: a riff over the chords
# Chords as (root offset from the tonic, intervals above the root).
MAJ, MIN, MAJ7, MIN7, DOM7, SUS2, ADD9 = (0, 4, 7), (0, 3, 7), (0, 4, 7, 11), (0, 3, 7, 10), (0, 4, 7, 10), (0, 2, 7), (0, 4, 7, 14)
PROGRESSIONS = {
    "minor": [
        [(0, MIN7), (-2, MAJ), (-4, MAJ7), (-2, MAJ)],  # i7 - VII - VImaj7 - VII
        [(0, MIN), (5, MIN), (0, MIN), (7, MIN)],  # i - iv - i - v
        [(0, MIN7), (5, DOM7), (0, MIN7), (5, DOM7)],  # Dorian vamp i7 - IV7
        [(0, MIN), (-4, MAJ), (3, MAJ), (-2, MAJ)],  # i - VI - III - VII
        [(0, MIN7), (3, MAJ7), (5, MIN7), (7, MIN7)],  # i7 - IIImaj7 - iv7 - v7
        [(0, MIN), (0, MIN), (-4, MAJ7), (7, DOM7)],  # i - i - VImaj7 - V7 (harmonic minor turnaround)
    ],
    "major": [
        [(0, MAJ), (7, MAJ), (9, MIN), (5, MAJ)],  # I - V - vi - IV
        [(0, MAJ), (5, MAJ), (9, MIN), (7, MAJ)],  # I - IV - vi - V
        [(2, MIN7), (7, DOM7), (0, MAJ7), (0, MAJ7)],  # ii7 - V7 - Imaj7 (jazz house)
        [(5, MAJ7), (7, DOM7), (0, MAJ7), (9, MIN7)],  # IVmaj7 - V7 - Imaj7 - vi7: the loop starts away from the tonic
        [(0, ADD9), (5, MAJ7), (0, ADD9), (7, SUS2)],  # Iadd9 - IVmaj7 - Iadd9 - Vsus2
        [(0, MAJ7), (9, MIN7), (2, MIN7), (7, DOM7)],  # I - vi - ii - V
    ],
}
SCALES = {"minor": (0, 2, 3, 5, 7, 8, 10), "major": (0, 2, 4, 5, 7, 9, 11)}
WORDS = ("night", "light", "feel", "move", "higher", "soul", "fire", "love", "deep", "rhythm", "closer", "free", "home",
         "body", "tonight", "rise", "shine", "heart", "dance", "forever", "together", "sunrise", "believe", "alive")


@dataclass(frozen=True)
class Song:
    """What a track is made of; bpm counts the felt beat (the dotted quarter in 6/8)."""

    name: str
    bpm: float
    tonic: int  # pitch class
    mode: str
    meter: int  # ACE-Step's time signature: 2, 3, 4 or 6 (6/8)
    progression: int
    kit: str
    bass: int
    keys: int
    lead: int
    colour: int
    tuning_cents: float
    bars: int
    harmony_bars: int  # bars per chord: 1 or 2

    @property
    def keyscale(self) -> str:
        return keyscale_name(self.tonic, self.mode)

    @property
    def beats_per_bar(self) -> int:
        return 2 if self.meter == 6 else self.meter

    @property
    def pulses_per_beat(self) -> int:
        """Drum grid steps per beat: eighths of a 6/8 beat (3), sixteenths otherwise (4)."""
        return 3 if self.meter == 6 else 4


def plan_songs(n: int, seed: int = 0) -> list[Song]:
    """n songs covering all 24 keys, both modes' progressions, every kit; every eighth one in 3/4 or 6/8."""
    rng = np.random.default_rng([seed, 21])
    keys = rng.permutation(24)
    songs = []
    for i in range(n):
        tonic, mode = int(keys[i % 24]) % 12, ("minor", "major")[int(keys[i % 24]) // 12]
        meter = {3: 3, 7: 6}.get(i % 8, 4)
        bpm = float(np.round(rng.uniform(112.0, 130.0) if meter == 4 else rng.uniform(95.0, 125.0), 1))
        songs.append(Song(
            name=f"recorded_{seed}_{i:02d}", bpm=bpm, tonic=tonic, mode=mode, meter=meter,
            progression=int(rng.integers(len(PROGRESSIONS[mode]))), kit=str(rng.choice(list(KITS))),
            bass=int(rng.choice(BASSES)), keys=int(rng.choice(KEYS)), lead=int(rng.choice(LEADS)), colour=int(rng.choice(COLOURS)),
            tuning_cents=float(np.round(rng.uniform(-40.0, 40.0), 1)), bars=0, harmony_bars=int(rng.choice([1, 2])),
        ))
        bar_s = songs[-1].beats_per_bar * 60.0 / bpm
        songs[-1] = Song(**asdict(songs[-1]) | {"bars": int(np.ceil(rng.uniform(55.0, 75.0) / bar_s))})
    return songs


@dataclass(frozen=True)
class Note:
    start_s: float
    end_s: float
    channel: int
    pitch: int
    velocity: int


def arrange(song: Song, rng: np.random.Generator) -> tuple[list[Note], list[tuple[float, float, str, str]]]:
    """The song's notes and its sung lines (start_s, end_s, words, section)."""
    beat_s = 60.0 / song.bpm
    bar_s = song.beats_per_bar * beat_s
    pulse_s = beat_s / song.pulses_per_beat
    steps = song.beats_per_bar * song.pulses_per_beat
    notes: list[Note] = []
    swing = rng.uniform(0.0, 0.25) * pulse_s if song.meter != 6 else 0.0  # MPC-style 16th swing on some grooves

    def hit(t, pitch, velocity, channel=DRUM_CHANNEL, length=0.1):
        jitter = rng.normal(0.0, 0.004)  # played, not quantised
        notes.append(Note(max(0.0, t + jitter), t + jitter + length, channel, pitch, int(np.clip(velocity + rng.integers(-8, 9), 1, 127))))

    progression = PROGRESSIONS[song.mode][song.progression]
    root_midi = 48 + song.tonic  # C3..B3
    for bar in range(song.bars):
        t0 = bar * bar_s
        section = (bar // 8) % 4
        drums_in = bar >= 2 and not (section == 3 and bar % 8 < 2)  # a breakdown every 32 bars
        for step in range(steps):
            t = t0 + step * pulse_s + (swing if step % 2 else 0.0)
            beat, sub = divmod(step, song.pulses_per_beat)
            if not drums_in:
                continue
            if song.meter == 6:
                if sub == 0:
                    hit(t, 36, 118 if beat == 0 else 100)
                if beat == 1 and sub == 0:
                    hit(t, 38, 100)
                hit(t, 42, 80 if sub == 0 else 60)
            else:
                if sub == 0 and (song.meter != 3 or beat == 0):
                    hit(t, 36, 120 if beat == 0 else 108)
                if sub == 0 and ((song.meter == 4 and beat in (1, 3)) or (song.meter == 3 and beat in (1, 2)) or (song.meter == 2 and beat == 1)):
                    hit(t, 39 if song.kit in ("electronic", "tr808") else 38, 100)
                if sub == 2:
                    hit(t, 46 if bar % 2 else 42, 90)
                elif sub in (1, 3) and bar % 4 >= 2:
                    hit(t, 42, 55)
        if drums_in and bar % 8 == 0:
            hit(t0, 49, 90)  # a crash on every phrase start

        chord_root, intervals = progression[(bar // song.harmony_bars) % len(progression)]
        chord = [root_midi + 12 + (chord_root % 12) + iv for iv in intervals]
        bass_note = root_midi - 12 + (chord_root % 12)
        if bar >= 1:  # bass: root on the downbeat, off-beat pumps, an octave or fifth for movement
            for beat in range(song.beats_per_bar):
                t = t0 + beat * beat_s
                pitch = bass_note + (12 if beat % 2 and rng.random() < 0.4 else 0)
                if song.meter == 6:
                    hit(t, pitch, 100, channel=1, length=beat_s * 0.6)
                else:
                    hit(t + beat_s / 2, pitch, 95, channel=1, length=beat_s * 0.4)
                    if beat == 0:
                        hit(t, bass_note, 105, channel=1, length=beat_s * 0.4)
                    elif rng.random() < 0.3:
                        hit(t, bass_note + 7, 80, channel=1, length=beat_s * 0.3)
        if bar >= 4 and not (section == 3 and bar % 8 >= 6):  # chords: stabs or held, voiced in the middle register
            if song.keys in (16, 17, 48, 61) or song.meter == 6:
                for pitch in chord:
                    hit(t0, pitch, 78, channel=2, length=bar_s * 0.95)
            else:
                for beat in range(song.beats_per_bar):
                    for pitch in chord:
                        hit(t0 + (beat + 0.5) * beat_s, pitch, 82, channel=2, length=beat_s * 0.35)
        if section == 2 and bar % 2 == 0:  # a riff on the colour instrument: chord tones and scale steps
            for k in range(song.beats_per_bar):
                pitch = root_midi + 24 + (chord_root % 12) + int(rng.choice([0, intervals[1], intervals[2]]))
                hit(t0 + k * beat_s, pitch, 70, channel=3, length=beat_s * 0.8)

    lines = _sung_lines(song, rng, notes, bar_s, beat_s, root_midi)
    return sorted(notes, key=lambda n: (n.start_s, n.channel, n.pitch)), lines


def _sung_lines(song: Song, rng: np.random.Generator, notes: list[Note], bar_s: float, beat_s: float, root_midi: int):
    """Two-bar sung lines in 4-bar phrases from bar 6; a line's notes are scale tones ending on a chord tone."""
    lines = []
    progression = PROGRESSIONS[song.mode][song.progression]
    scale = SCALES[song.mode]
    bar = 6
    while bar + 2 <= song.bars:
        if (bar // 8) % 4 == 3 and bar % 8 < 4:  # the breakdown is instrumental
            bar += 4
            continue
        start = bar * bar_s + float(rng.choice([0.0, 0.5, 1.0])) * beat_s  # pick-ups: lines do not all start on the bar
        n_notes = int(rng.integers(3, 7))
        length = 2 * bar_s - (start - bar * bar_s) - float(rng.uniform(0.3, 1.2)) * beat_s
        durations = rng.dirichlet(np.ones(n_notes)) * length
        t = start
        for k, d in enumerate(durations):
            chord_root, intervals = progression[(int(t // bar_s) // song.harmony_bars) % len(progression)]
            if k == n_notes - 1 or rng.random() < 0.5:
                pitch = root_midi + 12 + (chord_root % 12) + int(rng.choice(intervals[:3]))
            else:
                pitch = root_midi + 12 + int(rng.choice(scale))
            notes.append(Note(t, t + d * 0.95, 4, int(pitch), 100))
            t += d
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 6))))
        lines.append((round(start, 3), round(start + length, 3), words, "[chorus]" if (bar // 8) % 2 else "[verse]"))
        bar += int(rng.choice([2, 4]))
    return lines


def lrc_text(lines: list[tuple[float, float, str, str]], rng: np.random.Generator) -> str:
    """The LRC a lyric editor would save: section tags, each line's start, an end marker after a line
    followed by a gap of more than a beat (some editors leave it out), none after the last line half the time."""
    out, section = [], None
    for i, (start, end, words, tag) in enumerate(lines):
        if tag != section:
            out.append(tag)
            section = tag
        out.append(f"{_timestamp(start)} {words}")
        following = lines[i + 1][0] if i + 1 < len(lines) else None
        if following is None and rng.random() < 0.5:
            continue
        if following is None or following - end > 0.5:
            out.append(_timestamp(end))
    return "\n".join(out) + "\n"


def _timestamp(seconds: float) -> str:
    minutes, rest = divmod(round(seconds * 100), 6000)
    return f"[{minutes:02d}:{rest // 100:02d}.{rest % 100:02d}]"


def midi_file(song: Song, notes: list[Note]) -> bytes:
    """A format-0 standard MIDI file: programs, the tuning as a pitch bend (+-2 semitone range), the notes."""
    events = []  # (tick, order, bytes): note-offs before note-ons at the same tick
    programs = {0: song.bass, 1: song.bass, 2: song.keys, 3: song.colour, 4: song.lead}
    bend = int(round(8192 + song.tuning_cents / 200.0 * 8192))
    for channel, program in programs.items():
        events.append((0, 0, bytes([0xC0 | channel, program])))
        events.append((0, 0, bytes([0xE0 | channel, bend & 0x7F, bend >> 7])))
        events.append((0, 0, bytes([0xB0 | channel, 7, 100 if channel != 4 else 115])))
    events.append((0, 0, bytes([0xC0 | DRUM_CHANNEL, KITS[song.kit]])))
    for note in notes:
        on, off = round(note.start_s * TICKS_PER_S), max(round(note.end_s * TICKS_PER_S), round(note.start_s * TICKS_PER_S) + 1)
        events.append((on, 2, bytes([0x90 | note.channel, note.pitch, note.velocity])))
        events.append((off, 1, bytes([0x80 | note.channel, note.pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1]))
    body, last = bytearray(b"\x00\xff\x51\x03\x07\xa1\x20"), 0  # tempo: 500000 us per quarter
    for tick, _, data in events:
        body += _varlen(tick - last) + data
        last = tick
    body += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 960) + b"MTrk" + struct.pack(">I", len(body)) + bytes(body)


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    while value > 127:
        value >>= 7
        out.append(0x80 | (value & 0x7F))
    return bytes(reversed(out))


def render(midi: bytes, wav: Path) -> None:
    """fluidsynth renders the MIDI through FluidR3 with its default reverb and chorus (deterministic)."""
    exe = shutil.which("fluidsynth")
    if exe is None or not SOUNDFONT.is_file():
        raise HousevoxError("the recorded test set needs fluidsynth and the FluidR3 soundfont:"
                            " apt-get install fluidsynth fluid-soundfont-gm (.ci/run does)")
    with tempfile.TemporaryDirectory() as tmp:
        mid = Path(tmp) / "song.mid"
        mid.write_bytes(midi)
        out = Path(tmp) / "song.wav"
        subprocess.run([exe, "-n", "-i", "-q", "-g", "0.5", "-r", str(SAMPLE_RATE), "-O", "s16", "-T", "wav", "-F", str(out),
                        str(SOUNDFONT), str(mid)], check=True, capture_output=True)
        wav.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(out, wav)


def mirex_score(estimate: str, truth: str) -> tuple[float, str]:
    """MIREX key score and kind: 1 exact, 0.5 a fifth off, 0.3 relative, 0.2 parallel, 0 otherwise (N/A too)."""
    if estimate == truth:
        return 1.0, "exact"
    if estimate == "N/A":
        return 0.0, "N/A"
    names = {name: pc for pc, name in enumerate(PITCH_NAMES)}
    (e, em), (t, tm) = ((names[k.split()[0]], k.split()[1]) for k in (estimate, truth))
    if em == tm and (e - t) % 12 in (5, 7):
        return 0.5, "fifth"
    if em != tm and (e - t) % 12 == (9 if tm == "major" else 3):
        return 0.3, "relative"
    if em != tm and e == t:
        return 0.2, "parallel"
    return 0.0, "other"


def lines_sung_in(truth: dict, windows: list[tuple[float, float]]) -> list[list[str]]:
    """Ground truth per window (start_s, end_s): the lines sung more than half inside it, in order."""
    return [[line["text"] for line in truth["lines"]
             if min(end, line["end_s"]) - max(start, line["start_s"]) > 0.5 * (line["end_s"] - line["start_s"])]
            for start, end in windows]


def write_recorded_set(out_dir: str | Path, n_tracks: int = 24, seed: int = 0) -> list[Path]:
    """Render n_tracks songs with their .lrc and .truth.json; return the audio paths."""
    out_dir = Path(out_dir)
    paths = []
    for i, song in enumerate(plan_songs(n_tracks, seed)):
        rng = np.random.default_rng([seed, i, 1])
        notes, lines = arrange(song, rng)
        wav = out_dir / f"{song.name}.wav"
        render(midi_file(song, notes), wav)
        write_text(out_dir / f"{song.name}.lrc", lrc_text(lines, rng))
        write_json(out_dir / f"{song.name}.truth.json", {
            "bpm": song.bpm, "key": song.keyscale, "timesignature": str(song.meter), "song": asdict(song),
            "lines": [{"start_s": s, "end_s": e, "text": w, "section": tag} for s, e, w, tag in lines],
        })
        paths.append(wav)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m housevox.recorded_set", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the tracks, .lrc and .truth.json into")
    parser.add_argument("--tracks", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_recorded_set(args.out, args.tracks, args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
