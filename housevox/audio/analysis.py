"""Tempo, key and time signature measured from a track's audio: the caption prompt's metas when no sidecar gives them.

Features come from librosa (ISC license): a mel spectral-flux onset envelope and an STFT. The
decisions on top are small and explicit:

- tempo: autocorrelation of the onset envelope scored for 40-240 bpm, summed over the first four
  beat multiples and weighted by a log-normal prior around 120 bpm, one octave wide. A house groove
  has as much periodicity at half its tempo (two beats: claps on 2 and 4) as at its tempo, and its
  off-beat hats pull towards double; the prior settles that octave, so 122 bpm is not read as 61 or
  244. The winner is refined to 0.01 bpm on the harmonics of the envelope's spectrum.
- key: a semitone spectrogram tuned to the recording's own A (recordings are rarely at 440 Hz),
  log-compressed and split into bass (below C3) and upper register, each folded to chroma and
  correlated with Krumhansl-Kessler profiles that include each note's first six harmonics (Gomez
  2006: a recorded note's 3rd harmonic sits on its fifth, which pulls a plain profile match a fifth
  up); the bass counts half. Measured on recorded instruments (benchmarks/key_meter_lyrics.py) this
  beats the textbook mean-chroma match and Faraldo's EDM profiles. A key and its relative share their
  notes, and a loop such as i-VII-VI-VII fits both; between the two, the bass's cadences decide: per bar
  (downbeat where the sound changes most) its root, once the pitches that sound all through the track
  (a tuned kick) are taken off, and which of the two tonics the roots resolve to (V-I; IV-I or VII-i).
- time signature, in ACE-Step's vocabulary 2, 3, 4, 6: house is 4 unless the audio says otherwise
  strongly. 6 (6/8) when the beat is divided in three: the onset envelope at the beat's thirds is
  well above its level at the half beat, where 4/4's off-beats sit. 3 when the sound of each beat
  (mel band levels: kick, claps, bass note, chord) repeats clearly more every 3 beats than every 4.
  2 is never measured: a 2/4 bar sounds like half a 4/4 bar, so it must be given.

Each value comes with a confidence in [0, 1]: 0 when the runner-up was as good, towards 1 when
nothing else came close. Below a value's N/A threshold (chosen from measurement, see the constants)
the value is reported as N/A, upstream's own word for unknown.
"""

from dataclasses import asdict, dataclass

import librosa
import librosa.feature  # librosa imports its parts on first use: here instead, so forked prep workers inherit them
import librosa.onset
import numpy as np

ANALYSIS_VERSION = 3  # bump when a measured value can change for the same audio
SAMPLE_RATE = 11025
HOP = 256  # onset envelope at 43 frames/s: the tempo's precision comes from the whole track, not the frame rate
KEY_FFT, KEY_HOP = 8192, 2048  # 1.35 Hz bins: bass notes a semitone apart (3.9 Hz at 65 Hz) fall in different bins
KEY_PITCHES = np.arange(23, 100)  # MIDI B0 (31 Hz: sub-bass, 5-string bass) .. D#7: bass fundamentals to the top of the harmony
BASS_BELOW = 48  # C3: the bass register, folded to its own chroma
BASS_WEIGHT = 0.5
# Bar roots for the relative-key choice: bass lines reach C4; the 30th percentile of each pitch over the
# track is what sounds all the time (a pitched kick); ^8 keeps each bar's strongest pitch class.
ROOT_BELOW, ROOT_FLOOR, ROOT_SHARPNESS = 60, 30, 8.0
# Bass moves into a tonic: (how far above the tonic the root was, weight): V-I counts fully, the mode's
# other cadence (IV-I, VII-i) a quarter. CADENCE_WEIGHT: the most a one-sided resolution moves the choice
# between a key and its relative (profile margins are 0-0.3). Both chosen on the dev set (seed 1).
CADENCES = {"major": ((7, 1.0), (5, 0.25)), "minor": ((7, 1.0), (10, 0.25))}
CADENCE_WEIGHT = 0.4
KEY_HARMONICS = ((0, 1.0), (0, 0.8), (7, 0.64), (0, 0.51), (4, 0.41), (7, 0.33))  # pitch class offset, level (0.8^(k-1))
BPM_RANGE = (40.0, 240.0)
PRIOR_BPM, PRIOR_OCTAVES = 120.0, 1.0
MEL_BANDS, METRE_BANDS = 64, 16
MIN_SECONDS = 6.0
# Strong-evidence thresholds for a meter other than 4, midway (geometrically) between what 4/4 and the
# other meter gave on the recorded dev set (benchmarks/key_meter_lyrics.py --seed 1 --details):
TERNARY_RATIO = 0.6  # 6/8: thirds / half beat was 1.2-5.6 on 6/8, <= 0.32 on 4/4 and 3/4
TRIPLE_RATIO = 0.5  # 3/4: bar_structure 3 / 4 was 1.9-8.2 on 3/4, <= 0.13 on 4/4
# N/A below these confidences. Measured on the recorded dev set (benchmarks/key_meter_lyrics.py --seed 1
# --details), no higher threshold marks values that are right less than half the time: tempo and meter were
# all right; wrong keys had margins 0.049-0.096 while keys with margins 0.001-0.045 were 4 of 5 right. So only
# "no evidence" is N/A: an exact tie between two keys, a meter with too few beats to tell, a tempo without a peak.
NA_BELOW = {"bpm": 0.001, "key": 0.001, "timesignature": 0.001}
# Key names as ACE-Step 1.5 writes keyscale: "<note><accidental> <major|minor>" (acestep/constants.py,
# KEYSCALE_NOTES/KEYSCALE_ACCIDENTALS/KEYSCALE_MODES, lines 28-42 at commit f30aee4c), each spelled
# with the accidental of its usual key signature.
PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
PROFILES = {
    "major": np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]),
    "minor": np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]),
}


def with_harmonics(profile: np.ndarray) -> np.ndarray:
    """The chroma a profile's notes make when each note sounds with its first six harmonics."""
    return sum(level * np.roll(profile, offset) for offset, level in KEY_HARMONICS)


HARMONIC_PROFILES = {mode: with_harmonics(profile) for mode, profile in PROFILES.items()}


@dataclass(frozen=True)
class Measured:
    value: float | str
    confidence: float


@dataclass(frozen=True)
class TrackMetas:
    """Measured metas in the manifest's spelling: bpm (float, 0.1 bpm), key ("F# minor"), timesignature ("4")."""

    bpm: Measured
    key: Measured
    timesignature: Measured

    def as_dict(self) -> dict:
        return asdict(self)


def keyscale_name(pitch_class: int, mode: str) -> str:
    return f"{PITCH_NAMES[pitch_class % 12]} {mode}"


def analyze(mono: np.ndarray, sample_rate: int) -> TrackMetas | None:
    """Tempo, key and metre of a mono mix; None when under MIN_SECONDS or without onsets to measure."""
    y = librosa.resample(np.asarray(mono, dtype=np.float32), orig_sr=sample_rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    if y.size < MIN_SECONDS * SAMPLE_RATE or not np.any(y):
        return None
    mel = log_mel(y)
    envelope = librosa.onset.onset_strength(S=mel, sr=SAMPLE_RATE, hop_length=HOP)
    if not np.any(envelope):
        return None
    frame_rate = SAMPLE_RATE / HOP
    bpm, bpm_confidence = estimate_tempo(envelope, frame_rate)
    beats = beat_frames(envelope, frame_rate, bpm)
    beats_per_bar, metre_confidence = estimate_metre(mel, envelope, beats)
    semitones = semitone_spectrogram(y)
    roots = bar_bass(semitones, beats * HOP / KEY_HOP, 2 if beats_per_bar == 6 else beats_per_bar)
    key, key_confidence = estimate_key(*register_chroma(semitones), roots)
    return TrackMetas(Measured(round(bpm, 1), bpm_confidence), Measured(key, key_confidence),
                      Measured(str(beats_per_bar), metre_confidence))


def log_mel(y: np.ndarray) -> np.ndarray:
    """[MEL_BANDS, frames] log-power mel spectrogram at HOP: the onset envelope's and the metre's input."""
    return librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=SAMPLE_RATE, n_fft=1024, hop_length=HOP, n_mels=MEL_BANDS))


def semitone_spectrogram(y: np.ndarray) -> np.ndarray:
    """[KEY_PITCHES, frames at KEY_HOP] log-compressed semitone power, tuned to the recording's own A
    (estimated on every fourth frame: tuning does not change within a track)."""
    magnitude = np.abs(librosa.stft(y, n_fft=KEY_FFT, hop_length=KEY_HOP))
    tuning = librosa.estimate_tuning(S=magnitude[:, ::4], sr=SAMPLE_RATE, n_fft=KEY_FFT)
    freqs = librosa.fft_frequencies(sr=SAMPLE_RATE, n_fft=KEY_FFT)
    midi = 69 + 12 * np.log2(np.maximum(freqs, 1e-3) / 440.0) - tuning
    weights = np.clip(1.0 - np.abs(midi[None, :] - KEY_PITCHES[:, None]), 0.0, None)  # triangle over +-1 semitone
    power = weights @ magnitude**2
    return np.log1p(100.0 * power / max(float(power.max()), 1e-20))


def register_chroma(semitones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bass, upper) chroma [12] summed over the track: pitches below BASS_BELOW and the rest."""
    total = semitones.sum(axis=1)
    bass, upper = np.zeros(12), np.zeros(12)
    np.add.at(bass, KEY_PITCHES[KEY_PITCHES < BASS_BELOW] % 12, total[KEY_PITCHES < BASS_BELOW])
    np.add.at(upper, KEY_PITCHES[KEY_PITCHES >= BASS_BELOW] % 12, total[KEY_PITCHES >= BASS_BELOW])
    return bass, upper


def bar_bass(semitones: np.ndarray, beats: np.ndarray, beats_per_bar: int) -> np.ndarray:
    """[12, bars] each bar's bass (pitches below ROOT_BELOW) by pitch class, sharpened towards its root.
    First what sounds all through the track is removed: each pitch's ROOT_FLOOR-th percentile over time
    (a kick drum is pitched, and at this frame rate it sounds in every frame). Bars start on the beat
    phase where the sound changes most: chords change on the downbeat. beats: in semitone frames."""
    if beats.size <= 2 * beats_per_bar:  # fewer than two bars: no bar-to-bar move to read
        return np.zeros((12, 0))
    floored = np.maximum(semitones - np.percentile(semitones, ROOT_FLOOR, axis=1, keepdims=True), 0.0)
    beat_of_frame = np.searchsorted(beats, np.arange(floored.shape[1]), side="right") - 1
    inside = (beat_of_frame >= 0) & (beat_of_frame < beats.size - 1)
    per_beat, count = np.zeros((beats.size - 1, floored.shape[0])), np.zeros(beats.size - 1)
    np.add.at(per_beat, beat_of_frame[inside], floored[:, inside].T)
    np.add.at(count, beat_of_frame[inside], 1)
    per_beat = per_beat.T / np.maximum(count, 1)
    unit = per_beat / np.maximum(np.linalg.norm(per_beat, axis=0), 1e-12)
    change = np.r_[0.0, 1.0 - (unit[:, 1:] * unit[:, :-1]).sum(axis=0)]
    phase = int(np.argmax([change[q::beats_per_bar].mean() for q in range(beats_per_bar)]))
    bars = (per_beat.shape[1] - phase) // beats_per_bar
    low = per_beat[KEY_PITCHES < ROOT_BELOW, phase:phase + bars * beats_per_bar].reshape(-1, bars, beats_per_bar).sum(axis=2)
    pitch_classes = np.zeros((12, bars))
    np.add.at(pitch_classes, KEY_PITCHES[KEY_PITCHES < ROOT_BELOW] % 12, low)
    sharp = pitch_classes**ROOT_SHARPNESS
    return sharp / np.maximum(sharp.sum(axis=0), 1e-30)


def cadence_strength(roots: np.ndarray, tonic: int, mode: str) -> float:
    """Share of the bar-to-bar bass moves that resolve to tonic: from its fifth (V-I, v-i) and, at a
    quarter weight, the mode's other cadence (IV-I in major, VII-i in minor)."""
    before, after = roots[:, :-1], roots[:, 1:]
    moves = float((before.sum(axis=0) * after.sum(axis=0) - (before * after).sum(axis=0)).sum())
    into = sum(weight * float((before[(tonic + step) % 12] * after[tonic % 12]).sum()) for step, weight in CADENCES[mode])
    return into / moves if moves > 0 else 0.0


def estimate_tempo(envelope: np.ndarray, frame_rate: float) -> tuple[float, float]:
    """(bpm, confidence) of an onset envelope; confidence = 1 - (best tempo outside +-4 %) / (winner), by prior-weighted score."""
    bpms = np.arange(BPM_RANGE[0], BPM_RANGE[1] + 0.25, 0.5)
    periods = 60.0 * frame_rate / bpms
    centred = envelope - envelope.mean()
    max_lag = min(centred.size - 1, int(np.ceil(4 * periods[0])) + 1)
    acf = librosa.autocorrelate(centred, max_size=max_lag + 1)
    acf = acf / (centred.size - np.arange(acf.size))  # unbiased: long lags overlap fewer frames
    acf = acf / acf[0]
    salience = sum(np.interp(k * periods, np.arange(acf.size), acf, right=0.0) for k in range(1, 5)) / 4
    prior = np.exp(-0.5 * (np.log2(bpms / PRIOR_BPM) / PRIOR_OCTAVES) ** 2)
    score = np.maximum(salience, 0.0) * prior
    best = int(np.argmax(score))
    rivals = score[np.abs(bpms / bpms[best] - 1) > 0.04]
    confidence = 0.0 if score[best] <= 0 else 1.0 - float(rivals.max(initial=0.0)) / float(score[best])
    return _refine_tempo(centred, frame_rate, float(bpms[best])), round(confidence, 3)


def _refine_tempo(centred: np.ndarray, frame_rate: float, bpm: float) -> float:
    """Peak within +-1.5 bpm (0.01 bpm steps) of the envelope spectrum's first four beat harmonics,
    read from one zero-padded FFT (bins 1/100 bpm apart at the first harmonic)."""
    size = 1 << int(np.ceil(np.log2(max(100 * 60 * frame_rate, 8 * centred.size))))
    spectrum = np.abs(np.fft.rfft(centred, n=size))
    bins_hz = np.arange(spectrum.size) * frame_rate / size
    grid = np.arange(bpm - 1.5, bpm + 1.5005, 0.01)
    comb = sum(np.interp(h * grid / 60.0, bins_hz, spectrum) for h in range(1, 5))
    return float(grid[np.argmax(comb)])


def beat_frames(envelope: np.ndarray, frame_rate: float, bpm: float) -> np.ndarray:
    """Envelope frames of a constant-tempo beat grid, at the phase (in quarter-frame steps) that collects the most onset strength."""
    period = 60.0 * frame_rate / bpm
    grid = np.arange(0.0, envelope.size - 1 - period, period)
    phases = np.arange(0.0, period, 0.25)
    strength = np.interp(phases[:, None] + grid[None, :], np.arange(envelope.size), envelope).sum(axis=1)
    return phases[np.argmax(strength)] + grid


def key_scores(chroma: np.ndarray, profiles: dict[str, np.ndarray]) -> dict[tuple[int, str], float]:
    """Correlation of a chroma [12] with each profile in all 12 transpositions: {(tonic, mode): r}."""
    return {(tonic, mode): float(np.corrcoef(chroma, np.roll(template, tonic))[0, 1])
            for mode, template in profiles.items() for tonic in range(12)}


def estimate_key(bass: np.ndarray, upper: np.ndarray, roots: np.ndarray | None = None) -> tuple[str, float]:
    """(keyscale, confidence) from bass and upper-register chroma and the bar roots. A key and its relative
    (C major, A minor) share their notes, so the profile match often cannot tell them apart; between the
    best-matching key and its relative, each gains its share of their cadence strengths (which chord the
    bass resolves to) times CADENCE_WEIGHT: I-V-vi-IV resolves to both alike and is left to the profiles.
    Confidence: the smaller of the margin within that pair and the pair's profile margin over every other
    key (without bar roots: best score minus the runner-up's)."""
    if not np.any(bass) and not np.any(upper):
        return keyscale_name(0, "major"), 0.0
    up, low = key_scores(upper, HARMONIC_PROFILES), key_scores(bass, HARMONIC_PROFILES) if np.ptp(bass) > 0 else None
    scores = {key: up[key] + BASS_WEIGHT * (low[key] if low else 0.0) for key in up}
    best = max(scores, key=scores.get)
    relative = ((best[0] + 9) % 12, "minor") if best[1] == "major" else ((best[0] + 3) % 12, "major")
    pair = {key: scores[key] for key in (best, relative)}
    cadences = {key: cadence_strength(roots, *key) for key in pair} if roots is not None and roots.shape[1] > 1 else {}
    if sum(cadences.values()) > 0:
        pair = {key: score + CADENCE_WEIGHT * cadences[key] / sum(cadences.values()) for key, score in pair.items()}
    chosen, other = sorted(pair, key=pair.get, reverse=True)
    rest = max(score for key, score in scores.items() if key not in pair)
    return keyscale_name(*chosen), round(float(np.clip(min(pair[chosen] - pair[other], scores[best] - rest), 0.0, 1.0)), 3)


def estimate_metre(mel: np.ndarray, envelope: np.ndarray, beats: np.ndarray) -> tuple[int, float]:
    """(beats per bar in ACE-Step's vocabulary: 3, 4 or 6; confidence). 4 unless there is strong evidence:
    6 when the beat divides in three (ternary_ratio >= TERNARY_RATIO), 3 when the beat's sound is shaped
    by its place in a 3-beat bar more than in a 4-beat one (bar_structure ratio >= TRIPLE_RATIO)."""
    if beats.size < 17:  # four bars of 4 and one more beat: too few to tell
        return 4, 0.0
    ternary = ternary_ratio(envelope, beats)
    if ternary >= TERNARY_RATIO:
        return 6, round(1.0 - TERNARY_RATIO / ternary, 3)
    structure = bar_structure(mel, beats)
    triple = structure[3] / max(structure[4], 1e-9)
    if triple >= TRIPLE_RATIO:
        return 3, round(1.0 - TRIPLE_RATIO / triple, 3)
    return 4, round(1.0 - max(ternary / TERNARY_RATIO, triple / TRIPLE_RATIO), 3)


def ternary_ratio(envelope: np.ndarray, beats: np.ndarray) -> float:
    """Onset strength on the beat's weaker third over that on its half (peaks within a frame): near 0 for
    4/4's and 3/4's off-beats, above 1 for 6/8's eighths. Swung 16ths (at ~0.3 of a beat) leave the half
    beat strong, so they do not read as thirds."""
    period = float(np.median(np.diff(beats)))
    peaks = np.maximum(np.maximum(envelope, np.roll(envelope, 1)), np.roll(envelope, -1))
    first, second, half = (float(np.mean(np.interp(beats[:-1] + f * period, np.arange(envelope.size), peaks))) for f in (1 / 3, 2 / 3, 1 / 2))
    return min(first, second) / max(half, 1e-9)


def bar_structure(mel: np.ndarray, beats: np.ndarray) -> dict[int, float]:
    """For bars of 3 and 4 beats: the share of each beat's sound (16 mel band groups: kick, clap, bass
    note, chord) explained by its place in the bar - the variance of the per-place means over the total,
    averaged over the bands. Folding 4/4 by 3 (or 3/4 by 4) mixes the places and explains ~nothing."""
    bands = mel.reshape(METRE_BANDS, -1, mel.shape[1]).mean(axis=1)
    edges = np.clip(np.round(beats).astype(int), 0, mel.shape[1] - 1)
    per_beat = np.add.reduceat(bands, edges, axis=1)[:, :-1] / np.maximum(np.diff(edges), 1)
    # Minus a 12-beat moving mean (3 and 4 bars' worth of both metres), dropping its ragged ends: sections
    # that get louder or busier would otherwise dominate the variance.
    per_beat = (per_beat - np.apply_along_axis(np.convolve, 1, per_beat, np.ones(12) / 12, mode="same"))[:, 6:-6]
    out = {}
    for m in (3, 4):
        folded = per_beat[:, : per_beat.shape[1] // m * m].reshape(per_beat.shape[0], -1, m)
        total = folded.reshape(folded.shape[0], -1).var(axis=1)
        out[m] = float(np.mean(folded.mean(axis=1).var(axis=1) / np.maximum(total, 1e-12)))
    return out
