"""Metas typed by producers or measured -> ACE-Step's vocabulary (housevox.metas)."""

import pytest

from housevox.metas import UNKNOWN, MetaError, measured_value, normalise

# ACE-Step 1.5 acestep/constants.py: VALID_KEYSCALES, VALID_TIME_SIGNATURES, BPM_MIN/BPM_MAX.
UPSTREAM_KEYSCALES = {f"{n}{a} {m}" for n in "ABCDEFG" for a in ("", "#", "b", "♯", "♭") for m in ("major", "minor")}


@pytest.mark.parametrize("typed, used", [
    ("Am", "A minor"), ("A min", "A minor"), ("a minor", "A minor"), ("A Minor", "A minor"), ("A-minor", "A minor"),
    ("F sharp major", "F# major"), ("F# maj", "F# major"), ("f#m", "F# minor"), ("Bb", "Bb major"), ("Bbm", "Bb minor"),
    ("B♭ minor", "Bb minor"), ("E♯ minor", "E# minor"), ("b minor", "B minor"), ("bb minor", "Bb minor"), ("C", "C major"),
    ("AM", "A major"), ("E flat major", "Eb major"), ("8A", "A minor"), ("8B", "C major"), ("12A", "C# minor"), ("  D   dur ", "D major"),
])
def test_key_spellings_map_to_the_upstream_keyscale(typed, used):
    assert normalise("key", typed) == used and used in UPSTREAM_KEYSCALES


@pytest.mark.parametrize("typed, used", [("4/4", "4"), ("4", "4"), (4, "4"), (4.0, "4"), ("6/8", "6"), ("3/4", "3"),
                                         ("2/4", "2"), ("C", "4"), (" 6 / 8 ", "6"), (6, "6")])
def test_time_signatures_map_to_2_3_4_6(typed, used):
    assert normalise("timesignature", typed) == used


@pytest.mark.parametrize("typed, used", [(124, 124), (124.6, 125), ("122 bpm", 122), ("98.2", 98), ("30", 30), (300, 300)])
def test_bpm_is_an_integer_in_upstream_range(typed, used):
    value = normalise("bpm", typed)
    assert value == used and isinstance(value, int)


@pytest.mark.parametrize("field, typed", [
    ("key", "H minor"), ("key", "A dorian"), ("key", "13A"), ("key", 5), ("key", ""), ("key", "A minor please"),
    ("timesignature", "7/8"), ("timesignature", "12/8"), ("timesignature", 5), ("timesignature", 4.5), ("timesignature", True),
    ("bpm", "fast"), ("bpm", 12), ("bpm", 400), ("bpm", float("nan")), ("bpm", True), ("bpm", None),
])
def test_values_that_cannot_be_mapped_are_one_line_errors_naming_the_field(field, typed):
    with pytest.raises(MetaError) as err:
        normalise(field, typed)
    assert str(err.value).startswith(f"{field} {typed!r} is not ") and "\n" not in str(err.value) and err.value.field == field


def test_unknown_spellings_are_upstreams_na():
    assert {normalise(f, v) for f in ("bpm", "key", "timesignature") for v in ("N/A", "unknown", "na")} == {UNKNOWN}


def test_measured_values_below_their_confidence_threshold_are_na(monkeypatch):
    from housevox.audio import analysis
    monkeypatch.setitem(analysis.NA_BELOW, "key", 0.05)
    assert measured_value("key", {"value": "F# minor", "confidence": 0.04}) == UNKNOWN
    assert measured_value("key", {"value": "F# minor", "confidence": 0.05}) == "F# minor"
    assert measured_value("bpm", {"value": 123.6, "confidence": 0.3}) == 124
