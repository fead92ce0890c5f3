"""Loudness (ITU-R BS.1770-4 via pyloudnorm), 4x-oversampled true peak, and the capped gain."""

import math

import numpy as np
import pyloudnorm
import scipy.signal

# BS.1770-4 absolute gate: blocks quieter than this are ignored, so a segment with none is silent.
ABSOLUTE_GATE_LUFS = -70.0

_OVERSAMPLE = 4
# 49-tap Kaiser-windowed sinc interpolator for 4x oversampling (12 taps per phase, as BS.1770-4 Annex 2).
# Odd length and cutoff fs/2 make it a quarter-band filter: phase 0 is the original samples (every
# 4th tap but the centre is zero), so only phases 1-3 are computed. The filter is symmetric, so correlating with the phases yields the same
# set of values as convolving.
_INTERPOLATOR = scipy.signal.firwin(12 * _OVERSAMPLE + 1, 1.0 / _OVERSAMPLE, window=("kaiser", 6.0)) * _OVERSAMPLE
_PHASES = np.stack([_INTERPOLATOR[p::_OVERSAMPLE] for p in range(1, _OVERSAMPLE)]).astype(np.float32)
_CHUNK = 1 << 14  # samples per pass: small enough that the multiply-adds run in cache


def integrated_lufs(audio: np.ndarray, sample_rate: int) -> float:
    """Gated integrated loudness of [channels, samples]; -inf when no 400 ms block passes the absolute gate."""
    meter = pyloudnorm.Meter(sample_rate)
    if audio.shape[-1] < meter.block_size * sample_rate:
        return -math.inf
    lufs = meter.integrated_loudness(audio.T.astype(np.float64))
    return float(lufs) if np.isfinite(lufs) and lufs >= ABSOLUTE_GATE_LUFS else -math.inf


def true_peak_dbtp(audio: np.ndarray) -> float:
    """Peak of the 4x-oversampled signal in dBTP: catches inter-sample peaks that a DAC would reconstruct."""
    x = np.asarray(audio, dtype=np.float32)
    taps = _PHASES.shape[1]
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(taps - 1, taps - 1)])
    peak = float(np.abs(x).max())
    for start in range(0, x.shape[-1] + taps - 1, _CHUNK):
        block = padded[..., start:start + _CHUNK + taps - 1]
        length = block.shape[-1] - taps + 1
        for phase in _PHASES:
            between = phase[0] * block[..., :length]
            for k in range(1, taps):
                between += phase[k] * block[..., k:k + length]
            peak = max(peak, float(between.max()), float(-between.min()))
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def capped_gain_db(lufs_in: float, true_peak_in_dbtp: float, target_lufs: float, ceiling_dbtp: float) -> tuple[float, bool]:
    """Gain to reach target_lufs, lowered so the true peak lands exactly on the ceiling if it would pass it.

    Gain scales every sample, so the true peak after gain is true_peak_in + gain: the cap is exact,
    with no limiter or clipper touching the waveform. Returns (gain_db, capped).
    """
    gain_db = target_lufs - lufs_in
    headroom_db = ceiling_dbtp - true_peak_in_dbtp
    if gain_db > headroom_db:
        return headroom_db, True
    return gain_db, False


def db_to_amplitude(db: float) -> float:
    return 10.0 ** (db / 20.0)
