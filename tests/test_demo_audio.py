"""Demo audio synthesis: deterministic, the promised format and sidecars, fast enough for tests."""

import json
import time

import numpy as np
import soundfile as sf

from housevox import demo_audio
from housevox.lyrics import parse_lrc


def test_demo_tracks_are_deterministic_with_caption_sidecars(tmp_path):
    start = time.perf_counter()
    paths = demo_audio.synthesize_demo_tracks(tmp_path / "a", n_tracks=2, seed=7, duration_s=10.0)
    elapsed = time.perf_counter() - start
    again = demo_audio.synthesize_demo_tracks(tmp_path / "b", n_tracks=2, seed=7, duration_s=10.0)
    other = demo_audio.synthesize_demo_tracks(tmp_path / "c", n_tracks=1, seed=8, duration_s=10.0)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    assert paths[0].read_bytes() != other[0].read_bytes()
    assert elapsed < 3.0  # 20 s of audio; a 75 s demo track takes about a second
    for path in paths:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.duration) == (44100, 2, "PCM_24", 10.0)
        audio, _ = sf.read(path)
        assert 0.2 < np.abs(audio).max() < 1.0 and np.abs(audio.mean()) < 0.01
        sidecar = json.loads(path.with_suffix(".json").read_text())
        # No typed metas or lyrics: prep measures tempo, key and metre and slices the .lrc.
        assert set(sidecar) == {"caption", "language", "synthesised"} and sidecar["language"] == "en"
        truth = sidecar["synthesised"]
        assert 118 <= truth["bpm"] <= 128 and truth["timesignature"] == "4" and truth["key"].split()[1] in ("major", "minor")
        lines = parse_lrc(path.with_suffix(".lrc").read_text(), duration_s=10.0)
        assert lines == []  # 10 s is all instrumental intro


def test_lrc_is_timed_to_the_bars_the_voice_sings_in():
    groove = demo_audio.Groove(bpm=120.0, vocal_from_bar=16)  # 2 s bars
    lines = parse_lrc(demo_audio.lrc_lyrics(np.random.default_rng(0), groove, 90.0), duration_s=90.0)
    sung = groove.sung_bars(45)
    assert [line.start_s for line in lines] == [40.0, 44.0, 56.0, 60.0, 72.0, 76.0, 88.0]
    assert all(sung[int(line.start_s // 2)] and sung[int((line.end_s - 0.01) // 2)] for line in lines)
    assert [line.section for line in lines[::2]] == ["[verse]", "[chorus]", "[verse]", "[chorus]"]


def test_kick_lands_on_every_beat_at_122_bpm():
    audio = demo_audio.synthesize_track(np.random.default_rng(0), 8.0, 8000, tonic=57)
    envelope = np.abs(audio.sum(axis=0)).reshape(-1, 80).max(axis=1)  # 10 ms frames
    spectrum = np.abs(np.fft.rfft(envelope - envelope.mean()))
    freqs = np.fft.rfftfreq(envelope.size, d=0.010)
    band = (freqs > 1.0) & (freqs < 3.0)
    assert abs(freqs[band][np.argmax(spectrum[band])] - 122 / 60) < 0.15


def test_cli_writes_the_requested_tracks(tmp_path, capsys):
    assert demo_audio.main([str(tmp_path), "--tracks", "1", "--seed", "3", "--sample-rate", "22050", "--duration", "5"]) == 0
    [wav] = sorted(tmp_path.glob("*.wav"))
    assert sf.info(wav).samplerate == 22050 and capsys.readouterr().out.strip() == str(wav)
    assert wav.with_suffix(".json").is_file() and wav.with_suffix(".lrc").is_file()
