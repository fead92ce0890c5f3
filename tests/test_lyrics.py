"""LRC parsing and per-window lyric slicing (housevox.lyrics) on the windows prep really cuts."""

import numpy as np
import pytest

from housevox.audio.slicing import plan_segments
from housevox.lyrics import INSTRUMENTAL, LrcError, parse_lrc, plain_lyrics, window_lyrics

SR = 1000  # plan_segments at a low rate: the same windows in seconds as at 44.1 kHz


def windows(duration_s):
    """The prep windows of a track: [0, 30), [29, 59), [58, 88), ..., the last one ending at the track end."""
    mix = np.sin(np.arange(int(duration_s * SR)) * 0.7)
    return [(s.start / SR, s.end / SR) for s in plan_segments(mix, SR)]


LRC = """[ti:straddle]
[offset:0]
[verse]
[00:05.00] first verse line
[00:27.00] ends in the first window
[00:30.50]
[00:42.00] Sung after a long gap
[chorus]
[00:56.50] straddles 58 s
[01:00.00] late chorus line <01:01.00>with a word tag
[01:03.00]
"""


def test_windows_are_the_ones_prep_cuts():
    assert [(round(a), round(b)) for a, b in windows(100)] == [(0, 30), (29, 59), (58, 88), (70, 100)]


def test_a_line_goes_into_every_window_holding_more_than_half_of_it():
    lines = parse_lrc(LRC, duration_s=100)
    assert [(line.start_s, line.end_s) for line in lines] == [(5.0, 15.0), (27.0, 30.5), (42.0, 52.0), (56.5, 60.0), (60.0, 63.0)]
    first, second, third, last = window_lyrics(lines, windows(100))
    # 27.0-30.5: 3.0 of 3.5 s in [0, 30), only 1.5 in [29, 59). 56.5-60.0: 2.5 of 3.5 s in [29, 59) and 2.0 in [58, 88).
    assert first == "[verse]\nfirst verse line\nends in the first window"
    assert "ends in the first window" not in second and "straddles 58 s" in second and "straddles 58 s" in third


@pytest.mark.parametrize("border", [29.0, 58.0])
def test_a_line_sung_across_an_overlap_is_in_both_windows(border):
    """Windows [0, 30) [29, 59) [58, 88): a line from border - 0.25 s to border + 1.62 s is more than half inside
    the window ending at border + 1 and the one starting at border."""
    start, end = border - 0.25, border + 1.62
    lrc = f"[00:10.00] before\n[00:{int(start):02d}.{round(start % 1 * 100):02d}] across\n[00:{int(end):02d}.{round(end % 1 * 100):02d}]\n"
    out = window_lyrics(parse_lrc(lrc, duration_s=100), windows(100))
    holding = [i for i, text in enumerate(out) if "across" in text]
    assert holding == ([0, 1] if border == 29.0 else [1, 2])


def test_an_end_marker_ends_a_line():
    """'short' sung 27.0-28.0 then silence: without the marker it would last to 40 s, mostly in the second window."""
    marked = parse_lrc("[00:27.00] short\n[00:28.00]\n[00:40.00] next\n[00:44.00]\n", duration_s=100)
    unmarked = parse_lrc("[00:27.00] short\n[00:40.00] next\n[00:44.00]\n", duration_s=100)
    assert (marked[0].start_s, marked[0].end_s) == (27.0, 28.0) and unmarked[0].end_s == 37.0
    assert window_lyrics(marked, windows(100))[:2] == ["short", "next"]
    assert window_lyrics(unmarked, windows(100))[:2] == [INSTRUMENTAL, "short\nnext"]


def test_the_last_line_without_an_end_marker_lasts_the_median_of_the_lines_end_markers_close():
    """'a' runs into the next line (8 s, breath and gap included); 'b' and 'c' are closed by markers: 2 and 3 s."""
    lines = parse_lrc("[00:01.00] a\n[00:09.00] b\n[00:11.00]\n[00:12.00] c\n[00:15.00]\n[00:28.50] last\n", duration_s=100)
    assert (lines[-1].start_s, lines[-1].end_s) == (28.5, 31.0)
    assert window_lyrics(lines, windows(100))[:2] == ["a\nb\nc\nlast", "last"]  # 1.5 of 2.5 s in [0, 30), 2.0 in [29, 59)
    assert parse_lrc("[00:01.00] a\n[00:04.00] b\n", duration_s=100)[-1].end_s == 7.0  # no markers: all other lines
    assert parse_lrc("[00:20.00] alone\n", duration_s=22.0)[0].end_s == 22.0  # LAST_LINE_S, cut at the track end


def test_line_ends_at_the_next_timed_line_at_most_ten_seconds_and_at_the_track_end():
    lines = parse_lrc("[00:01.00] a\n[00:03.25] b\n[00:20.00] c\n", duration_s=21.0)
    assert [(x.start_s, x.end_s) for x in lines] == [(1.0, 3.25), (3.25, 13.25), (20.0, 21.0)]


def test_time_tag_forms_repeated_tags_and_offset():
    lines = parse_lrc("[offset:+500]\n[00:10][00:40.5] again\n[00:20:50] colon form\n[1:00.125] three digits\n")
    assert [(x.start_s, x.text) for x in lines] == [(9.5, "again"), (20.0, "colon form"), (40.0, "again"),
                                                    (pytest.approx(59.625), "three digits")]


@pytest.mark.parametrize("text, line", [
    ("[00:01.00] fine\nno time tag here\n", 2),
    ("[ar:someone]\n\n[00:75.00] seventy-five seconds\n", 3),
    ("[00:01.00] fine\n[0l:02.00] typo\n", 2),
    ("[offset:soon]\n", 1),
])
def test_malformed_line_is_named_by_number(text, line):
    with pytest.raises(LrcError) as err:
        parse_lrc(text)
    assert err.value.line == line and str(err.value).startswith(f"line {line}: ") and "\n" not in str(err.value)


def test_plain_lyrics_keep_the_words_and_sections_without_tags():
    assert plain_lyrics("[ti:x]\n[verse]\n[00:01.00] one <00:01.50>two\nno tag\n[00:04.00]\n") == "[verse]\none two\nno tag"
