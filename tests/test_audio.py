"""Pure audio functions against generated signals with known answers."""

import numpy as np
import pytest
import soundfile as sf

from housevox.audio.channels import downmix_to_stereo, mono_mix
from housevox.audio.io import PCM24_SCALE, load_audio, quantize_pcm24, write_pcm24
from housevox.audio.loudness import capped_gain_db, db_to_amplitude, integrated_lufs, true_peak_dbtp
from housevox.audio.resample import resample
from housevox.audio.slicing import plan_segments
from housevox.audio.zero_crossing import find_zero_crossing
from housevox.errors import HousevoxError

SR = 44100


def sine(freq, seconds, amplitude, sr=SR, phase=0.0):
    t = np.arange(int(seconds * sr)) / sr
    return amplitude * np.sin(2 * np.pi * freq * t + phase)


def is_crossing(mix, boundary):
    return boundary in (0, len(mix)) or mix[boundary - 1] * mix[boundary] <= 0


# --- loudness -------------------------------------------------------------------------------------

def test_stereo_1k_sine_reads_its_peak_level_in_lufs():
    # EBU Tech 3341 case 1: a 1 kHz sine at -20 dBFS in both channels reads -20 LUFS.
    x = sine(997, 10, db_to_amplitude(-20))
    assert integrated_lufs(np.stack([x, x]), SR) == pytest.approx(-20.0, abs=0.1)


def test_mono_sine_is_3db_below_the_same_sine_in_stereo():
    x = sine(997, 10, db_to_amplitude(-20))
    assert integrated_lufs(x[None], SR) == pytest.approx(-23.01, abs=0.1)


def test_silence_and_sub_gate_signals_have_no_loudness():
    assert integrated_lufs(np.zeros((2, SR * 5)), SR) == -np.inf
    assert integrated_lufs(sine(997, 5, db_to_amplitude(-80))[None], SR) == -np.inf


def test_true_peak_finds_the_inter_sample_peak():
    # fs/4 sine at 45 degrees: every sample sits at 0.707 A, the waveform peaks at A (+3 dB).
    x = sine(SR / 4, 1, 0.5, phase=np.pi / 4)[None] * np.hanning(SR)  # faded: no edge to ring on
    assert 20 * np.log10(np.abs(x).max()) == pytest.approx(20 * np.log10(0.5) - 3.01, abs=0.01)
    assert true_peak_dbtp(x) == pytest.approx(20 * np.log10(0.5), abs=0.1)


def test_gain_goes_to_target_when_the_peak_allows():
    assert capped_gain_db(-20.0, -10.0, -11.0, -1.0) == (pytest.approx(9.0), False)


def test_gain_cap_engages_on_a_crest_heavy_signal_and_holds_the_ceiling():
    rng = np.random.default_rng(0)
    clicks = 0.01 * rng.standard_normal((2, SR * 10))
    clicks[:, :: SR // 2] = 0.9  # sharp transients twice a second over a quiet bed
    lufs, peak = integrated_lufs(clicks, SR), true_peak_dbtp(clicks)
    gain_db, capped = capped_gain_db(lufs, peak, -11.0, -1.0)
    assert capped and gain_db < -11.0 - lufs
    out = quantize_pcm24(clicks * db_to_amplitude(gain_db)) / PCM24_SCALE
    assert true_peak_dbtp(out) <= -1.0 + 1e-4
    assert true_peak_dbtp(out) == pytest.approx(-1.0, abs=0.01)


# --- zero crossings and slicing -------------------------------------------------------------------

def test_find_zero_crossing_directions():
    mix = np.array([1.0, 1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1])  # crossings at boundaries 2 and 6
    assert find_zero_crossing(mix, 5, 3, "nearest") == (6, True)
    assert find_zero_crossing(mix, 4, 2, "nearest") == (2, True)  # tie: the earlier one
    assert find_zero_crossing(mix, 3, 3, "forward") == (6, True)
    assert find_zero_crossing(mix, 5, 3, "backward") == (2, True)


def test_find_zero_crossing_falls_back_to_min_abs_and_says_so():
    mix = np.array([5.0, 4, 3, 0.5, 2, 3, 4, 5, 6])
    assert find_zero_crossing(mix, 4, 3, "nearest") == (3, False)


def test_track_edges_count_as_crossings():
    mix = np.ones(10)
    assert find_zero_crossing(mix, 0, 3, "nearest") == (0, True)
    assert find_zero_crossing(mix, 8, 3, "forward") == (10, True)


def test_plan_cuts_on_crossings_with_one_second_overlap_and_ends_at_track_end():
    rng = np.random.default_rng(1)
    mix = sine(97, 65, 0.5) + 0.05 * rng.standard_normal(65 * SR)
    plan = plan_segments(mix, SR)
    assert len(plan) == 3
    assert plan[0].start == 0 and plan[-1].end == len(mix)
    for seg in plan:
        assert seg.zero_crossing_start and seg.zero_crossing_end
        assert is_crossing(mix, seg.start) and is_crossing(mix, seg.end)
        assert 30 * SR <= seg.end - seg.start <= 30 * SR + 0.010 * SR
    overlap = plan[0].end - plan[1].start
    assert abs(overlap - SR) <= 0.020 * SR
    # the last window is anchored to the end: it starts at or before end - 30 s, so it overlaps more
    assert len(mix) - 30 * SR - 0.010 * SR <= plan[-1].start <= len(mix) - 30 * SR
    assert plan[1].end - plan[2].start > SR


def test_plan_flags_borders_without_a_crossing_in_reach():
    mix = 1.0 + sine(5, 65, 0.1)  # positive everywhere: no sign change at all
    plan = plan_segments(mix, SR)
    assert [s.zero_crossing_start for s in plan] == [True, False, False]
    assert [s.zero_crossing_end for s in plan] == [False, False, True]
    assert all(s.end - s.start >= 30 * SR for s in plan)


def test_plan_short_and_exact_length_tracks():
    assert plan_segments(np.ones(29 * SR), SR) == []
    [whole] = plan_segments(np.ones(29 * SR), SR, keep_short=True)
    assert (whole.start, whole.end) == (0, 29 * SR)
    [exact] = plan_segments(sine(100, 30, 0.5), SR)
    assert (exact.start, exact.end) == (0, 30 * SR)


# --- channels, resampling -------------------------------------------------------------------------

def test_downmix_folds_even_channels_left_and_odd_right():
    audio = np.arange(6, dtype=np.float32)[:, None] * np.ones((6, 4), dtype=np.float32)
    out = downmix_to_stereo(audio)
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out[:, 0], [2.0, 3.0])  # mean(0, 2, 4), mean(1, 3, 5)
    np.testing.assert_allclose(mono_mix(out), out.sum(axis=0))


def test_resample_keeps_pitch_level_and_overs():
    x = sine(1000, 2, 1.5, sr=48000).astype(np.float32)[None]  # 3.5 dB over full scale
    y = resample(x, 48000, SR)
    assert y.shape == (1, 2 * SR)
    middle = y[0, SR // 2: -SR // 2]
    assert np.abs(middle).max() == pytest.approx(1.5, abs=0.01)
    spectrum = np.abs(np.fft.rfft(middle))
    assert np.argmax(spectrum) * SR / len(middle) == pytest.approx(1000, abs=2)
    assert resample(x, 48000, 48000) is x


def test_resample_refuses_rates_without_a_practical_ratio():
    with pytest.raises(HousevoxError, match="unsupported sample rate 44101 Hz"):
        resample(np.zeros((1, 1000), np.float32), 44101, SR)


# --- file I/O -------------------------------------------------------------------------------------

def test_pcm24_round_trip_is_exact_and_full_scale_does_not_wrap(tmp_path):
    x = np.array([[0.0, 0.5, -0.5, 1.0, -1.0, 1.2, 1e-9]])
    pcm = quantize_pcm24(x)
    assert pcm[0, 3] == PCM24_SCALE - 1 and pcm[0, 4] == -PCM24_SCALE and pcm[0, 5] == PCM24_SCALE - 1
    write_pcm24(tmp_path / "a.wav", pcm, SR)
    info = sf.info(tmp_path / "a.wav")
    assert (info.subtype, info.samplerate, info.format) == ("PCM_24", SR, "WAV")
    back, sr = load_audio(tmp_path / "a.wav")
    np.testing.assert_array_equal(np.rint(back.astype(np.float64) * PCM24_SCALE), pcm)
    assert list(tmp_path.iterdir()) == [tmp_path / "a.wav"]  # no temp file left behind


def test_float_file_over_full_scale_is_not_clipped_on_load(tmp_path):
    x = sine(440, 1, 2.0)
    sf.write(tmp_path / "hot.wav", x, SR, subtype="FLOAT")
    audio, _ = load_audio(tmp_path / "hot.wav")
    assert np.abs(audio).max() == pytest.approx(2.0, abs=1e-4)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_samples_are_rejected(tmp_path, value):
    x = sine(440, 1, 0.5)
    x[100] = value
    sf.write(tmp_path / "bad.wav", x, SR, subtype="FLOAT")
    with pytest.raises(HousevoxError, match="NaN or Inf"):
        load_audio(tmp_path / "bad.wav")


def test_truncated_wav_is_rejected(tmp_path):
    sf.write(tmp_path / "t.wav", sine(440, 2, 0.5), SR, subtype="PCM_16")
    data = (tmp_path / "t.wav").read_bytes()
    (tmp_path / "t.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(HousevoxError, match="truncated"):
        load_audio(tmp_path / "t.wav")


@pytest.mark.parametrize("content", [b"", b"this is a text file, not audio\n" * 20])
def test_empty_or_text_files_are_rejected_with_the_path(tmp_path, content):
    (tmp_path / "x.wav").write_bytes(content)
    with pytest.raises(HousevoxError, match=r"x\.wav: cannot read audio"):
        load_audio(tmp_path / "x.wav")
