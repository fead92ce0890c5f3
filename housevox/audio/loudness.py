"""Loudness (ITU-R BS.1770-4 via pyloudnorm), 4x-oversampled true peak, and the capped gain."""

import math

import numpy as np
import pyloudnorm
import scipy.signal

# BS.1770-4 absolute gate: blocks quieter than this are ignored, so a segment with none is silent.
ABSOLUTE_GATE_LUFS = -70.0

_OVERSAMPLE = 4
# 48-tap interpolation low-pass (12 taps per phase) as in BS.1770-4 Annex 2; gain 4 undoes zero-stuffing.
_INTERPOLATOR = scipy.signal.firwin(48, 1.0 / _OVERSAMPLE, window=("kaiser", 6.0)) * _OVERSAMPLE


def integrated_lufs(audio: np.ndarray, sample_rate: int) -> float:
    """Gated integrated loudness of [channels, samples]; -inf when no 400 ms block passes the absolute gate."""
    meter = pyloudnorm.Meter(sample_rate)
    if audio.shape[-1] < meter.block_size * sample_rate:
        return -math.inf
    lufs = meter.integrated_loudness(audio.T.astype(np.float64))
    return float(lufs) if np.isfinite(lufs) and lufs >= ABSOLUTE_GATE_LUFS else -math.inf


def true_peak_dbtp(audio: np.ndarray) -> float:
    """Peak of the 4x-oversampled signal in dBTP: catches inter-sample peaks that a DAC would reconstruct."""
    oversampled = scipy.signal.upfirdn(_INTERPOLATOR, audio, up=_OVERSAMPLE, axis=-1)
    peak = max(float(np.abs(oversampled).max()), float(np.abs(audio).max()))
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
