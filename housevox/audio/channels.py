"""Channel layout: keep mono and stereo, fold anything wider to stereo, build the mono mix."""

import numpy as np


def downmix_to_stereo(audio: np.ndarray) -> np.ndarray:
    """Fold [C>2, N] to [2, N]: even channels (L, C, Ls, ...) average to left, odd ones to right.

    No layout metadata survives libsndfile, so this is a neutral fold, not a 5.1 matrix;
    callers warn the user that it happened.
    """
    return np.stack([audio[0::2].mean(axis=0), audio[1::2].mean(axis=0)]).astype(audio.dtype, copy=False)


def mono_mix(audio: np.ndarray) -> np.ndarray:
    """Sum of all channels (L+R, or the single channel) in float64: where it changes sign we cut."""
    return audio.sum(axis=0, dtype=np.float64)
