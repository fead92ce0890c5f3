"""Tempo, key and time signature in ACE-Step's own vocabulary: the one place a typed or measured meta is normalised.

ACE-Step 1.5 (acestep/constants.py at 6c010d3): bpm an integer in BPM_MIN..BPM_MAX, keyscale
`<A-G><'' | # | b | ♯ | ♭> <major | minor>`, time signature one of 2, 3, 4, 6 (6 = 6/8), and "N/A" for
a value not known. What producers type is mapped onto it: `4/4` -> `4`, `6/8` -> `6`, `Am` / `A min` /
`a minor` -> `A minor`, `F sharp major` -> `F# major`, a Camelot code `8A` -> `A minor`, `124.6 bpm` -> 125.
Anything else is a MetaError naming the field and the value, never a guess.
"""

import math
import re

from housevox.audio import analysis

METAS = ("bpm", "key", "timesignature")
BPM_MIN, BPM_MAX = 30, 300
TIME_SIGNATURES = {"2": "2", "2/4": "2", "2/2": "2", "3": "3", "3/4": "3", "3/8": "3", "4": "4", "4/4": "4", "c": "4",
                   "6": "6", "6/8": "6"}
UNKNOWN = "N/A"
_UNKNOWN_SPELLINGS = {"n/a", "na", "unknown", "none", "-"}
_ACCIDENTALS = {"": "", "#": "#", "♯": "#", "sharp": "#", "b": "b", "♭": "b", "flat": "b"}
_MODES = {"": "major", "maj": "major", "major": "major", "dur": "major", "min": "minor", "minor": "minor", "moll": "minor"}
_KEY = re.compile(r"([a-g])\s*(#|♯|b|♭|sharp|flat)?\s*-?\s*(maj(?:or)?|min(?:or)?|m|dur|moll)?", re.IGNORECASE)
# Camelot wheel (DJ software's key codes): number 1-12, A = minor, B = major.
_CAMELOT = {"A": ("Ab", "Eb", "Bb", "F", "C", "G", "D", "A", "E", "B", "F#", "C#"),
            "B": ("B", "F#", "Db", "Ab", "Eb", "Bb", "F", "C", "G", "D", "A", "E")}


class MetaError(ValueError):
    """A meta value that cannot be mapped onto ACE-Step's vocabulary; the message is one line."""

    def __init__(self, field: str, value, expected: str):
        super().__init__(f"{field} {value!r} is not {expected}")
        self.field = field


def normalise(field: str, value):
    """The value in ACE-Step's vocabulary (bpm int, key "F# minor", timesignature "6"), or UNKNOWN; MetaError otherwise."""
    if isinstance(value, str) and value.strip().lower() in _UNKNOWN_SPELLINGS:
        return UNKNOWN
    return {"bpm": normalise_bpm, "key": normalise_key, "timesignature": normalise_timesignature}[field](value)


def normalise_bpm(value) -> int:
    expected = f"a tempo from {BPM_MIN} to {BPM_MAX} bpm"
    text = value.strip().lower().removesuffix("bpm").strip() if isinstance(value, str) else value
    try:
        bpm = float(text)
    except (TypeError, ValueError):
        raise MetaError("bpm", value, expected) from None
    if isinstance(value, bool) or not math.isfinite(bpm) or not BPM_MIN <= round(bpm) <= BPM_MAX:
        raise MetaError("bpm", value, expected)
    return int(round(bpm))


def normalise_timesignature(value) -> str:
    expected = "a time signature ACE-Step knows: 2 (2/4), 3 (3/4), 4 (4/4) or 6 (6/8)"
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise MetaError("timesignature", value, expected)
    text = str(int(value)) if isinstance(value, (int, float)) else str(value).strip().lower().replace(" ", "")
    if text not in TIME_SIGNATURES:
        raise MetaError("timesignature", value, expected)
    return TIME_SIGNATURES[text]


def normalise_key(value) -> str:
    expected = 'a key like "A minor", "F# major", "Bb minor", "Am" or a Camelot code like "8A"'
    if not isinstance(value, str):
        raise MetaError("key", value, expected)
    text = " ".join(value.strip().split())
    camelot = re.fullmatch(r"(1[0-2]|[1-9])\s*([ABab])", text)
    if camelot:
        letter = camelot.group(2).upper()
        return f"{_CAMELOT[letter][int(camelot.group(1)) - 1]} {'minor' if letter == 'A' else 'major'}"
    match = _KEY.fullmatch(text)
    if not match:
        raise MetaError("key", value, expected)
    note, accidental, mode = match.group(1), match.group(2) or "", match.group(3) or ""
    if mode == "M":
        mode = "major"
    elif mode == "m":
        mode = "minor"
    return f"{note.upper()}{_ACCIDENTALS[accidental.lower()]} {_MODES[mode.lower()]}"


def measured_value(field: str, measured: dict):
    """A measured meta as the manifest writes it: UNKNOWN below the field's N/A confidence, the bpm as an integer."""
    if measured["confidence"] < analysis.NA_BELOW[field]:
        return UNKNOWN
    return normalise(field, measured["value"])
