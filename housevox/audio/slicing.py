"""Segment plan: fixed-length windows with overlap, borders snapped to zero crossings."""

from dataclasses import dataclass

import numpy as np

from housevox.audio.zero_crossing import find_zero_crossing


@dataclass(frozen=True)
class Segment:
    """Samples [start, end) of the track; the flags are False where no crossing was in reach (min |mix| used)."""

    start: int
    end: int
    zero_crossing_start: bool
    zero_crossing_end: bool


def plan_segments(
    mix: np.ndarray,
    sample_rate: int,
    segment_s: float = 30.0,
    overlap_s: float = 1.0,
    search_s: float = 0.010,
    keep_short: bool = False,
) -> list[Segment]:
    """Cut a track (its mono mix) into windows of at least `segment_s`, every `segment_s - overlap_s`.

    Each start snaps to the crossing nearest its nominal start; each end is the first crossing at
    or after start + segment_s, so windows are never short. The last window is anchored to the
    track end (more overlap, no padding, no lost audio). A track shorter than one window gives []
    or, with keep_short, itself as one segment.
    """
    n = len(mix)
    window = round(segment_s * sample_rate)
    hop = window - round(overlap_s * sample_rate)
    radius = round(search_s * sample_rate)
    if n < window:
        return [Segment(0, n, True, True)] if keep_short else []
    segments = []
    nominal = 0
    while nominal + window < n:
        start, start_found = find_zero_crossing(mix, nominal, radius, "nearest")
        if start + window > n:
            break
        end, end_found = find_zero_crossing(mix, start + window, radius, "forward")
        segments.append(Segment(start, end, start_found, end_found))
        if end == n:
            return segments
        nominal += hop
    start, start_found = find_zero_crossing(mix, n - window, radius, "backward")
    segments.append(Segment(start, n, start_found, True))
    return segments
