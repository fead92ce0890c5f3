"""Timestamped lyrics (LRC) → the lines sung inside each segment's window, under the section tag in force.

An LRC line is `[mm:ss.xx] text` (several time tags may share one text; `[mm:ss]`, `[mm:ss.xxx]` and
`[mm:ss:xx]` are read too, `<mm:ss.xx>` word tags are dropped). `[ar:...]`-style ID tags are
skipped except `[offset:±ms]`; any other `[...]` alone on a line is a section tag (`[verse]`,
`[Chorus 2]`), timed or not. A line's sung span ends at the next timed line (an empty one, `[mm:ss.xx]`
with no text, marks where singing stops), at most LINE_MAX_S later. The last line, when no end marker
follows it, is estimated to last as long as the median of the track's lines that an end marker closes
(they time the singing itself; else of all its other lines; LAST_LINE_S for a lone line), never past the
track's end. A line goes into every window holding more than half of
its span: with windows overlapping by 1 s, a line sung across the overlap is in both.
"""

import math
import re
from dataclasses import dataclass

import numpy as np

# ACE-Step 1.5's lyrics for audio without singing: acestep/training/dataset_builder_modules/preprocess.py
# line 117 (`lyrics = sample.lyrics if sample.lyrics else "[Instrumental]"`) and models.py line 23, at f30aee4c.
INSTRUMENTAL = "[Instrumental]"
LINE_MAX_S = 10.0  # a line followed by a long break does not stretch over it into the next window
LAST_LINE_S = 4.0  # a lone line without an end marker: about two bars at house tempo
ID_TAGS = {"ar", "al", "ti", "au", "by", "re", "ve", "tool", "length", "la", "lang", "language", "#"}
_TIME_TAGS = re.compile(r"((?:\[\d+:\d{1,2}(?:[.:]\d{1,3})?\]\s*)+)(.*)")
_TIME_TAG = re.compile(r"\[(\d+):(\d{1,2})(?:[.:](\d{1,3}))?\]")
_ID_TAG = re.compile(r"\[([A-Za-z#]+):(.*)\]")
_SECTION = re.compile(r"\[[^\[\]]+\]")
_WORD_TAG = re.compile(r"<\d+:\d{1,2}(?:[.:]\d{1,3})?>")


class LrcError(ValueError):
    """A line that is not LRC; `line` is 1-based."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line, self.message = line, message


@dataclass(frozen=True)
class LyricLine:
    start_s: float
    end_s: float
    text: str
    section: str | None  # the section tag in force, e.g. "[chorus]"


def _seconds(minutes: str, seconds: str, fraction: str | None, line: int) -> float:
    if int(seconds) >= 60:
        raise LrcError(line, f"time tag [{minutes}:{seconds}...] has {seconds} seconds")
    return int(minutes) * 60 + int(seconds) + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def _events(text: str) -> list[tuple[float, int, str | None, str | None]]:
    """(time, file order, lyric text or None, section tag or None) for every timed line, in time order."""
    events, pending, offset_s = [], [], 0.0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip().lstrip("\ufeff")
        if not line:
            continue
        timed = _TIME_TAGS.fullmatch(line)
        if timed:
            times = [_seconds(*tag.groups(), number) for tag in _TIME_TAG.finditer(timed.group(1))]
            body = _WORD_TAG.sub("", timed.group(2)).strip()
            section = body if _SECTION.fullmatch(body) else None
            for t in times:
                events.extend((t, len(events), None, tag) for tag in pending)
                events.append((t, len(events), None if section else body, section))
            pending = []
            continue
        tag = _ID_TAG.fullmatch(line)
        if tag and tag.group(1).lower() == "offset":
            try:
                offset_s = int(tag.group(2).strip()) / 1000.0
            except ValueError:
                raise LrcError(number, f"offset {tag.group(2).strip()!r} is not a whole number of milliseconds") from None
        elif tag and tag.group(1).lower() in ID_TAGS:
            continue
        elif _SECTION.fullmatch(line):
            pending.append(line)  # an untimed section tag starts with the next timed line
        else:
            raise LrcError(number, f"not an LRC line ([mm:ss.xx] text): {line[:40]!r}")
    # A positive [offset:] shows lyrics earlier (LRC convention).
    return sorted((t - offset_s, order, body, section) for t, order, body, section in events)


def parse_lrc(text: str, duration_s: float | None = None) -> list[LyricLine]:
    """The sung lines of an LRC text, each with its end and its section; LrcError on a malformed line."""
    events = _events(text)
    lyric_times = [t for t, _, body, _ in events if body is not None]
    markers = {t for t, _, body, _ in events if body == ""}
    lines, marked, section, last = [], [], None, []
    for t, _, body, tag in events:
        if tag is not None:
            section = tag
            continue
        if not body:
            continue
        later = [u for u in lyric_times if u > t]
        if not later:  # the last line(s), with no end marker after them
            last.append((t, body, section))
            continue
        end = min(t + LINE_MAX_S, later[0], duration_s if duration_s is not None else math.inf)
        if end > t:
            lines.append(LyricLine(t, end, body, section))
            if end == later[0] and end in markers:
                marked.append(end - t)
    known = marked or [line.end_s - line.start_s for line in lines]
    estimate = float(np.median(known)) if known else LAST_LINE_S
    for t, body, tag in last:
        end = min(t + estimate, duration_s if duration_s is not None else math.inf)
        if end > t:
            lines.append(LyricLine(t, end, body, tag))
    return lines


def plain_lyrics(text: str) -> str:
    """An LRC text without its time, word and ID tags: the untimed fallback when a line is malformed."""
    out = []
    for raw in text.splitlines():
        line = _WORD_TAG.sub("", raw.strip().lstrip("\ufeff"))
        line = _TIME_TAGS.fullmatch(line).group(2).strip() if _TIME_TAGS.fullmatch(line) else line
        tag = _ID_TAG.fullmatch(line)
        if line and not (tag and tag.group(1).lower() in ID_TAGS | {"offset"}):
            out.append(line)
    return "\n".join(out)


def window_lyrics(lines: list[LyricLine], windows: list[tuple[float, float]]) -> list[str]:
    """Per window (start_s, end_s): the lines it holds more than half of, in order, the section in force
    repeated at the top; INSTRUMENTAL when none."""
    owned: list[list[LyricLine]] = [[] for _ in windows]
    for line in lines:
        for index, (start, end) in enumerate(windows):
            if min(end, line.end_s) - max(start, line.start_s) > 0.5 * (line.end_s - line.start_s):
                owned[index].append(line)
    return [_format(window) for window in owned]


def _format(lines: list[LyricLine]) -> str:
    if not lines:
        return INSTRUMENTAL
    out, section = [], None
    for line in lines:
        if line.section is not None and line.section != section:
            out += (["", line.section] if out else [line.section])
            section = line.section
        out.append(line.text)
    return "\n".join(out)
