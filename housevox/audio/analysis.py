"""Tempo, key and time signature measured from a track's audio: the caption prompt's metas when no sidecar gives them.

Features come from librosa (ISC license): a mel spectral-flux onset envelope and STFT chroma. The
decisions on top are small and explicit:

- tempo: autocorrelation of the onset envelope scored for 40-240 bpm, summed over the first four
  beat multiples and weighted by a log-normal prior around 120 bpm, one octave wide. A house groove
  has as much periodicity at half its tempo (two beats: claps on 2 and 4) as at its tempo, and its
  off-beat hats pull towards double; the prior settles that octave, so 122 bpm is not read as 61 or
  244. The winner is refined to 0.01 bpm on the harmonics of the envelope's spectrum.
- key: log-compressed, tuning-corrected chroma summed over the track against the Krumhansl-Kessler
  major and minor profiles in all 24 keys.
- time signature: the sound of each beat (mel band levels: kick, claps, bass note, chord) repeats
  every 4 beats in 4/4 and every 3 in 3/4; the metre whose bar lags (m, 2m) correlate more wins. Only "3" and "4"
  are measured; 2/4 and 6/8 (upstream's "2" and "6") must be given.

Each value comes with a confidence in [0, 1]: 0 when the runner-up was as good, towards 1 when
nothing else came close.
"""

from dataclasses import asdict, dataclass

import librosa
import librosa.feature  # librosa imports its parts on first use: here instead, so forked prep workers inherit them
import librosa.onset
import numpy as np

ANALYSIS_VERSION = 1  # bump when a measured value can change for the same audio
SAMPLE_RATE = 11025
HOP = 256  # onset envelope at 43 frames/s: the tempo's precision comes from the whole track, not the frame rate
CHROMA_FFT, CHROMA_HOP = 4096, 1024
BPM_RANGE = (40.0, 240.0)
PRIOR_BPM, PRIOR_OCTAVES = 120.0, 1.0
MEL_BANDS, METRE_BANDS = 64, 16
MIN_SECONDS = 6.0
# Key names as ACE-Step 1.5 writes keyscale: "<note><accidental> <major|minor>" (acestep/constants.py,
# KEYSCALE_NOTES/KEYSCALE_ACCIDENTALS/KEYSCALE_MODES, lines 28-42 at commit f30aee4c), each spelled
# with the accidental of its usual key signature.
PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
PROFILES = {
    "major": np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]),
    "minor": np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]),
}


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
    key, key_confidence = estimate_key(tonal_chroma(y))
    beats_per_bar, metre_confidence = estimate_metre(mel, beat_frames(envelope, frame_rate, bpm))
    return TrackMetas(Measured(round(bpm, 1), bpm_confidence), Measured(key, key_confidence),
                      Measured(str(beats_per_bar), metre_confidence))


def log_mel(y: np.ndarray) -> np.ndarray:
    """[MEL_BANDS, frames] log-power mel spectrogram at HOP: the onset envelope's and the metre's input."""
    return librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=SAMPLE_RATE, n_fft=1024, hop_length=HOP, n_mels=MEL_BANDS))


def tonal_chroma(y: np.ndarray) -> np.ndarray:
    """Chroma [12, frames] of a log-compressed power spectrogram (loud bass notes do not swamp the rest),
    tuned to the recording's own A (estimated on every fourth frame: tuning does not change within a track)."""
    power = np.abs(librosa.stft(y, n_fft=CHROMA_FFT, hop_length=CHROMA_HOP)) ** 2
    tuning = librosa.estimate_tuning(S=np.sqrt(power[:, ::4]), sr=SAMPLE_RATE, n_fft=CHROMA_FFT)
    compressed = np.log1p(1000.0 * power / max(float(power.max()), 1e-20))
    return librosa.feature.chroma_stft(S=compressed, sr=SAMPLE_RATE, n_fft=CHROMA_FFT, tuning=tuning, norm=None)


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


def estimate_key(chroma: np.ndarray) -> tuple[str, float]:
    """(keyscale, confidence) from chroma [12, frames]; confidence = 1 - (runner-up correlation) / (best)."""
    profile = chroma.sum(axis=1)
    scores = {}
    for mode, template in PROFILES.items():
        for tonic in range(12):
            scores[(tonic, mode)] = float(np.corrcoef(profile, np.roll(template, tonic))[0, 1])
    ranked = sorted(scores, key=scores.get, reverse=True)
    best, second = scores[ranked[0]], scores[ranked[1]]
    confidence = 0.0 if best <= 0 else 1.0 - max(second, 0.0) / best
    return keyscale_name(*ranked[0]), round(confidence, 3)


def estimate_metre(mel: np.ndarray, beats: np.ndarray) -> tuple[int, float]:
    """(beats per bar: 3 or 4, confidence) from how the sound of each beat repeats: the mean level of
    16 mel band groups per beat (kick, clap, bass note, chord) correlates with the beat a bar later.
    Confidence = the winner's score minus the loser's, clipped to [0, 1]."""
    if beats.size < 17:  # four bars of 4 and one more beat: too few to tell
        return 4, 0.0
    bands = mel.reshape(METRE_BANDS, -1, mel.shape[1]).mean(axis=1)
    edges = np.clip(np.round(beats).astype(int), 0, mel.shape[1] - 1)
    per_beat = np.add.reduceat(bands, edges, axis=1)[:, :-1] / np.maximum(np.diff(edges), 1)
    # Minus a 12-beat moving mean (3 and 4 bars' worth of both metres): sections that get louder or busier
    # would otherwise correlate at every lag.
    per_beat = per_beat - np.apply_along_axis(np.convolve, 1, per_beat, np.ones(12) / 12, mode="same")
    scores = {m: float(np.mean([(_lag_correlation(x, m) + _lag_correlation(x, 2 * m)) / 2 for x in per_beat])) for m in (3, 4)}
    winner = max(scores, key=scores.get)
    return winner, round(float(np.clip(scores[winner] - scores[7 - winner], 0.0, 1.0)), 3)


def _lag_correlation(x: np.ndarray, lag: int) -> float:
    a, b = x[:-lag], x[lag:]
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])
