"""Zero-crossing search: segment borders where the waveform changes sign do not click."""

from typing import Literal

import numpy as np

Direction = Literal["nearest", "forward", "backward"]


def find_zero_crossing(mix: np.ndarray, target: int, radius: int, direction: Direction = "nearest") -> tuple[int, bool]:
    """Return (boundary, found): a cut point `i` (between samples i-1 and i) near `target`.

    A zero crossing is a boundary where mix[i-1] and mix[i] differ in sign or one is zero;
    the track's own edges (0 and len(mix)) count too, since nothing is cut there.
    Searched range: |i - target| <= radius ("nearest", ties go earlier), [target, target+radius]
    ("forward", first one) or [target-radius, target] ("backward", last one).
    With no crossing in range, the boundary with the smallest |mix| is returned and found=False.
    """
    n = len(mix)
    lo = target if direction == "forward" else target - radius
    hi = target if direction == "backward" else target + radius
    lo, hi = max(lo, 0), min(hi, n)
    if lo > hi:
        raise ValueError(f"search range [{target - radius}, {target + radius}] lies outside a {n}-sample signal")
    boundaries = np.arange(lo, hi + 1)
    is_crossing = (boundaries == 0) | (boundaries == n)
    inner = boundaries[~is_crossing]
    is_crossing[~is_crossing] = mix[inner - 1] * mix[inner] <= 0
    crossings = boundaries[is_crossing]
    if crossings.size:
        if direction == "forward":
            return int(crossings[0]), True
        if direction == "backward":
            return int(crossings[-1]), True
        return int(crossings[np.argmin(np.abs(crossings - target))]), True
    return int(inner[np.argmin(np.abs(mix[inner]))]), False
