"""`python -m housevox.prep` end to end on generated tracks, good and bad."""

import json
import os
import re
import shutil
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile as sf

from housevox import prep
from housevox.audio.channels import mono_mix
from housevox.audio.io import load_audio, quantize_pcm24, write_pcm24
from housevox.audio.loudness import integrated_lufs, true_peak_dbtp
from housevox.demo_audio import synthesize_track
from housevox.errors import run_cli

SR = 44100
MANIFEST_KEYS = {
    "file", "track", "source", "source_sha256", "segment_index", "start_sample", "end_sample", "start_s", "end_s",
    "sample_rate", "channels", "lufs_in", "gain_db", "lufs_out", "true_peak_dbtp", "capped",
    "zero_crossing_start", "zero_crossing_end", "caption", "lyrics", "bpm", "key", "timesignature", "language",
    "lyrics_source", "metas_source",
}


def music(seconds, sr=SR, seed=0):
    return synthesize_track(np.random.default_rng(seed), seconds, sr, tonic=57)


def make_inputs(src):
    """A folder of good and bad tracks, each with a known expected outcome."""
    src.mkdir()
    groove = music(65)
    sf.write(src / "groove.wav", groove.T, SR, subtype="FLOAT")
    (src / "groove.json").write_text(json.dumps({"caption": "deep house, soulful vocal", "lyrics": "la la", "bpm": "122 bpm",
                                                 "key": "Am", "timesignature": "4/4", "language": "en"}))
    write_pcm24(src / "café ñ.flac", quantize_pcm24(music(31, 48000, seed=1)), 48000, container="FLAC")
    (src / "café ñ.txt").write_text("piano house\n")
    (src / "café ñ.lyrics.txt").write_text("oh oh\n")
    rng = np.random.default_rng(2)
    clicks = 0.01 * rng.standard_normal(31 * SR)
    clicks[:: SR // 2] = 0.9
    sf.write(src / "clicks.wav", clicks, SR, subtype="FLOAT")
    tail = groove[:, -31 * SR:]
    sf.write(src / "hot.wav", 2.0 * tail[0] / np.abs(tail[0]).max(), SR, subtype="FLOAT")
    sf.write(src / "quad.wav", np.tile(tail.T, 2), SR, subtype="PCM_24")
    (src / "empty.wav").write_bytes(b"")
    (src / "notes.wav").write_text("not audio at all\n" * 50)
    sf.write(src / "truncated.wav", tail.T, SR, subtype="PCM_16")
    (src / "truncated.wav").write_bytes((src / "truncated.wav").read_bytes()[:2_000_000])
    nan = tail.copy()
    nan[0, 1000] = np.nan
    sf.write(src / "nan.wav", nan.T, SR, subtype="FLOAT")
    sf.write(src / "silence.wav", np.zeros(31 * SR), SR, subtype="PCM_16")
    sf.write(src / "sidecar.wav", tail.T, SR, subtype="PCM_16")
    (src / "sidecar.json").write_text('{"caption": "unterminated')
    sf.write(src / "badmeta.wav", tail.T, SR, subtype="PCM_16")
    (src / "badmeta.json").write_text(json.dumps({"key": "Am", "timesignature": "7/8"}))
    sf.write(src / "short.wav", groove[:, : 5 * SR].T, SR, subtype="PCM_16")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    make_inputs(root / "src")
    out = root / "out"
    rc = run_cli(prep.main, ["--input", str(root / "src"), "--output", str(out), "--workers", "1", "--caption", "default caption"])
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    return {"root": root, "src": root / "src", "out": out, "rc": rc, "rows": rows, "report": report}


def rows_of(batch, track):
    return [r for r in batch["rows"] if r["track"] == track]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_bad_inputs_are_reported_and_the_rest_is_processed(batch):
    assert batch["rc"] == 0
    failed = {e["source"].rsplit("/", 1)[-1]: e["reason"] for e in batch["report"]["failed"]}
    skipped = {e["source"].rsplit("/", 1)[-1]: e["reason"] for e in batch["report"]["skipped"]}
    assert set(failed) == {"empty.wav", "notes.wav", "truncated.wav", "nan.wav", "sidecar.wav", "badmeta.wav"}
    assert failed["badmeta.wav"].endswith("badmeta.json: timesignature '7/8' is not a time signature ACE-Step knows:"
                                          " 2 (2/4), 3 (3/4), 4 (4/4) or 6 (6/8)")
    assert not list(batch["out"].glob("badmeta*"))
    assert "cannot read audio" in failed["empty.wav"] and "cannot read audio" in failed["notes.wav"]
    assert "sidecar.json: unreadable caption sidecar" in failed["sidecar.wav"]
    assert "truncated" in failed["truncated.wav"] and "NaN" in failed["nan.wav"]
    assert set(skipped) == {"silence.wav", "short.wav"}
    assert "silent" in skipped["silence.wav"] and "shorter than 30 s" in skipped["short.wav"]
    assert {r["track"] for r in batch["rows"]} == {"groove", "café ñ", "clicks", "hot", "quad"}
    assert batch["report"]["counts"]["segments"] == len(batch["rows"]) == 3 + 4 * 2


def test_manifest_rows_have_the_schema_in_deterministic_order(batch):
    for row in batch["rows"]:
        assert MANIFEST_KEYS <= set(row)
        assert (batch["out"] / row["file"]).is_file()
        assert row["file"] == f"{row['track']}_{row['segment_index']:03d}.wav"
    order = [(r["source"], r["segment_index"]) for r in batch["rows"]]
    assert order == sorted(order)


def test_segments_are_24_bit_pcm_at_44k1_on_disk(batch):
    for row in batch["rows"]:
        path = batch["out"] / row["file"]
        info = sf.info(path)
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_24", SR, row["channels"])
        assert info.frames == row["end_sample"] - row["start_sample"]
        header = path.read_bytes()[:64]
        fmt = header.index(b"fmt ")
        assert int.from_bytes(header[fmt + 22: fmt + 24], "little") == 24  # bits per sample


def test_written_loudness_hits_target_and_true_peak_stays_under_ceiling(batch):
    for row in batch["rows"]:
        audio, _ = load_audio(batch["out"] / row["file"])
        peak = true_peak_dbtp(audio)
        assert integrated_lufs(audio, SR) == pytest.approx(row["lufs_out"], abs=0.01)
        assert peak <= -1.0 + 1e-3
        assert peak == pytest.approx(row["true_peak_dbtp"], abs=0.01)
        if not row["capped"]:
            assert row["lufs_out"] == pytest.approx(-11.0, abs=0.05)


def test_gain_cap_engages_on_the_crest_heavy_track(batch):
    clicks = rows_of(batch, "clicks")
    assert clicks and all(r["capped"] and r["lufs_out"] < -11.5 for r in clicks)
    assert {r["file"] for r in clicks} <= set(batch["report"]["capped"])
    assert batch["report"]["counts"]["segments_capped"] == sum(r["capped"] for r in batch["rows"])


def test_cuts_land_on_zero_crossings_with_one_second_overlap_and_the_last_ends_at_track_end(batch):
    rows = rows_of(batch, "groove")
    audio, _ = load_audio(batch["src"] / "groove.wav")
    mix = mono_mix(audio)
    assert [r["segment_index"] for r in rows] == [0, 1, 2]
    for r in rows:
        for boundary, flagged in ((r["start_sample"], r["zero_crossing_start"]), (r["end_sample"], r["zero_crossing_end"])):
            if flagged:
                assert boundary in (0, len(mix)) or mix[boundary - 1] * mix[boundary] <= 0
        assert 30.0 <= r["end_s"] - r["start_s"] <= 30.011
    assert abs(rows[0]["end_s"] - rows[1]["start_s"] - 1.0) <= 0.02
    assert rows[0]["start_sample"] == 0 and rows[-1]["end_sample"] == len(mix)
    assert rows[1]["end_sample"] - rows[2]["start_sample"] >= SR  # the end-anchored window overlaps more


def ffmpeg_ebur128(path):
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostats", "-hide_banner", "-i", str(path),
           "-filter_complex", "ebur128=peak=true", "-f", "null", "-"]
    log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    summary = log[log.rindex("Summary:"):]
    lufs = float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1))
    peak = float(re.search(r"Peak:\s+(-?[\d.]+) dBFS", summary).group(1))
    return lufs, peak


def test_ffmpeg_ebur128_agrees_with_the_manifest(batch):
    for row in rows_of(batch, "groove")[:1] + rows_of(batch, "clicks")[:1] + rows_of(batch, "café ñ")[:1]:
        lufs, peak = ffmpeg_ebur128(batch["out"] / row["file"])
        assert lufs == pytest.approx(row["lufs_out"], abs=0.3)
        assert peak == pytest.approx(row["true_peak_dbtp"], abs=0.3)


def test_float_source_over_full_scale_is_scaled_not_clipped(batch):
    source, _ = load_audio(batch["src"] / "hot.wav")
    assert np.abs(source).max() == pytest.approx(2.0, abs=1e-4)
    for row in rows_of(batch, "hot"):
        out, _ = load_audio(batch["out"] / row["file"])
        seg = source[:, row["start_sample"]: row["end_sample"]].astype(np.float64)
        gain = 10 ** (row["gain_db"] / 20)
        assert np.abs(out - seg * gain).max() < 1e-4  # clipped peaks on the way in would leave errors ~0.1


def test_multichannel_source_is_downmixed_with_a_warning(batch):
    [track] = [t for t in batch["report"]["tracks"] if t["track"] == "quad"]
    assert track["warnings"] == ["4 channels downmixed to stereo"]
    assert all(r["channels"] == 2 for r in rows_of(batch, "quad"))


def test_sidecar_captions_are_carried_into_every_segment(batch):
    for r in rows_of(batch, "groove"):
        assert (r["caption"], r["lyrics"], r["bpm"], r["key"], r["timesignature"], r["language"]) == (
            "deep house, soulful vocal", "la la", 122, "A minor", "4", "en")
        assert r["metas_source"] == {"bpm": {"source": "given", "typed": "122 bpm"}, "key": {"source": "given", "typed": "Am"},
                                     "timesignature": {"source": "given", "typed": "4/4"}}
        assert r["lyrics_source"] == "untimed"
    for r in rows_of(batch, "café ñ"):
        assert (r["caption"], r["lyrics"]) == ("piano house", "oh oh")
        assert r["file"].startswith("café ñ_")
    assert all(r["caption"] == "default caption" and r["lyrics"] is None for r in rows_of(batch, "clicks"))


def test_metas_not_given_are_measured_with_their_confidence(batch):
    """café ñ has no sidecar metas: its 122 bpm, A minor, 4/4 groove is measured (A minor = tonic 57)."""
    for r in rows_of(batch, "café ñ"):
        assert (r["bpm"], r["key"], r["timesignature"]) == (122, "A minor", "4")
        assert {m["source"] for m in r["metas_source"].values()} == {"measured"}
        assert all(0.0 <= m["confidence"] <= 1.0 for m in r["metas_source"].values())
    [table] = [m for m in batch["report"]["metas"] if m["track"] == "café ñ"]
    assert table["bpm"]["value"] == 122 and table["key"]["source"] == "measured"
    assert "sidecar" in batch["report"]["metas_hint"] and batch["report"]["analysis"] is True


def test_untimed_lyrics_on_several_segments_are_a_warning(batch):
    [groove] = [t for t in batch["report"]["tracks"] if t["track"] == "groove"]
    assert any("untimed lyrics: each of the 3 segments gets the whole text" in w for w in groove["warnings"])


def test_rerun_skips_finished_tracks_and_changes_nothing(batch):
    before = snapshot(batch["out"])
    mtimes = {p.name: p.stat().st_mtime_ns for p in batch["out"].glob("*.wav")}
    assert run_cli(prep.main, ["--input", str(batch["src"]), "--output", str(batch["out"]), "--workers", "1",
                               "--caption", "default caption"]) == 0
    assert snapshot(batch["out"]) == before
    assert {p.name: p.stat().st_mtime_ns for p in batch["out"].glob("*.wav")} == mtimes


def test_interrupted_run_leaves_no_partial_wav_and_a_rerun_completes(batch, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(batch["src"] / "groove.wav", src)
    out = tmp_path / "out"
    real_write, calls = sf.write, []

    def write_then_interrupt(file, data, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:  # Ctrl-C in the middle of the second segment's file
            real_write(file, data[: len(data) // 2], *args, **kwargs)
            raise KeyboardInterrupt
        real_write(file, data, *args, **kwargs)

    monkeypatch.setattr(sf, "write", write_then_interrupt)
    assert run_cli(prep.main, ["--input", str(src), "--output", str(out), "--workers", "1"]) == 130
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["groove_000.wav"]
    (out / ".groove_001.wav.k1ll3d.tmp").write_bytes(b"RIFF")  # what a kill -9 mid-write leaves
    monkeypatch.setattr(sf, "write", real_write)
    assert run_cli(prep.main, ["--input", str(src), "--output", str(out), "--workers", "1"]) == 0
    assert sorted(p.name for p in out.glob("*.wav")) == ["groove_000.wav", "groove_001.wav", "groove_002.wav"]
    assert not list(out.glob(".*.tmp"))
    for name in ("groove_000.wav", "groove_001.wav", "groove_002.wav"):
        assert (out / name).read_bytes() == (batch["out"] / name).read_bytes()


def test_a_changed_input_replaces_its_old_segments(batch, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    shutil.copy(batch["src"] / "hot.wav", src / "x.wav")
    assert run_cli(prep.main, ["--input", str(src), "--output", str(out), "--workers", "1", "--keep-short"]) == 0
    assert sorted(p.name for p in out.glob("*.wav")) == ["x_000.wav", "x_001.wav"]
    shutil.copy(batch["src"] / "short.wav", src / "x.wav")
    assert run_cli(prep.main, ["--input", str(src), "--output", str(out), "--workers", "1", "--keep-short"]) == 0
    assert sorted(p.name for p in out.glob("*.wav")) == ["x_000.wav"]
    [row] = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert row["end_sample"] == 5 * SR and sf.info(out / "x_000.wav").frames == 5 * SR


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_reported(batch, tmp_path):
    shutil.copy(batch["src"] / "hot.wav", tmp_path / "locked.wav")
    (tmp_path / "locked.wav").chmod(0)
    rc = run_cli(prep.main, ["--input", str(tmp_path / "locked.wav"), str(batch["src"] / "hot.wav"),
                             "--output", str(tmp_path / "out"), "--workers", "1"])
    assert rc == 0
    [failed] = json.loads((tmp_path / "out" / "report.json").read_text())["failed"]
    assert failed["source"].endswith("locked.wav") and "Permission denied" in failed["reason"]


def test_two_workers_write_the_same_bytes(batch, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("groove.wav", "clicks.wav"):
        shutil.copy(batch["src"] / name, src)
    assert run_cli(prep.main, ["--input", str(src), "--output", str(tmp_path / "out"), "--workers", "2"]) == 0
    written = sorted(p.name for p in (tmp_path / "out").glob("*.wav"))
    assert written == [r["file"] for r in batch["rows"] if r["track"] in ("clicks", "groove")]
    for name in written:
        assert (tmp_path / "out" / name).read_bytes() == (batch["out"] / name).read_bytes()


def test_keep_short_and_stereo(batch, tmp_path):
    assert run_cli(prep.main, ["--input", str(batch["src"] / "short.wav"), "--output", str(tmp_path), "--workers", "1",
                               "--keep-short", "--stereo"]) == 0
    [row] = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert (row["start_sample"], row["end_sample"], row["channels"]) == (0, 5 * SR, 2)


def test_strict_turns_any_failure_into_a_non_zero_exit(batch, tmp_path, capsys):
    rc = run_cli(prep.main, ["--input", str(batch["src"] / "clicks.wav"), str(batch["src"] / "empty.wav"),
                             "--output", str(tmp_path), "--workers", "1", "--strict"])
    assert rc == 1
    assert "--strict" in capsys.readouterr().err
    assert json.loads((tmp_path / "report.json").read_text())["counts"]["tracks_failed"] == 1


def test_no_segment_written_is_an_error(batch, tmp_path, capsys):
    rc = run_cli(prep.main, ["--input", str(batch["src"] / "notes.wav"), "--output", str(tmp_path), "--workers", "1"])
    assert rc == 1
    assert "no segments written" in capsys.readouterr().err


@pytest.mark.parametrize("make", ["missing", "empty_folder"])
def test_missing_path_or_empty_folder_is_one_line_and_exit_2(tmp_path, capsys, make):
    target = tmp_path / "nothing"
    if make == "empty_folder":
        target.mkdir()
    assert run_cli(prep.main, ["--input", str(target), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(target) in err
    assert not (tmp_path / "out").exists()


def test_cli_module_reports_a_missing_path_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "housevox.prep", "--input", str(tmp_path / "nope"), "--output",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: input not found: {tmp_path / 'nope'}"]


def test_formats_libsndfile_cannot_read_are_reported_with_the_fix(tmp_path):
    """An .m4a in a folder is not silently left out of the dataset: the report names it and how to convert it."""
    src = tmp_path / "src"
    src.mkdir()
    write_pcm24(src / "ok.wav", quantize_pcm24(music(31.0)), SR)
    (src / "phone.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(2000))
    out = tmp_path / "out"
    assert run_cli(prep.main, ["--input", str(src), "--output", str(out), "--workers", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    (failed,) = report["failed"]
    assert failed["source"].endswith("phone.m4a")
    assert "convert it to WAV or FLAC" in failed["reason"] and not failed["reason"].startswith(failed["source"])


def test_timed_lyrics_per_segment_malformed_lrc_kept_untimed_and_no_analyze(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for name in ("timed", "broken"):
        write_pcm24(src / f"{name}.wav", quantize_pcm24(music(65.0)), SR)
    (src / "timed.lrc").write_text("[verse]\n[00:40.00] sung in the second window\n[00:44.00]\n")
    (src / "broken.json").write_text(json.dumps({"bpm": 124, "lyrics_lrc": "[00:01.00] ok\n[00:02.00] ok too\noops\n"}))
    assert run_cli(prep.main, ["--input", str(src), "--output", str(out), "--workers", "1", "--no-analyze"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["track"] == "timed"]
    # Windows [0, 30), [29, 59) and the end-anchored [35, 65): the line at 40-44 s is sung in the last two.
    assert [r["lyrics"] for r in timed] == ["[Instrumental]"] + ["[verse]\nsung in the second window"] * 2
    assert {r["lyrics_source"] for r in timed} == {"lrc"}
    broken = [r for r in rows if r["track"] == "broken"]
    assert len(broken) == 3 and {r["lyrics"] for r in broken} == {"ok\nok too\noops"}  # never dropped
    report = json.loads((out / "report.json").read_text())
    [warning] = [w for t in report["tracks"] if t["track"] == "broken" for w in t["warnings"] if "lyrics_lrc" in w]
    assert warning.startswith("broken.json lyrics_lrc line 3: not an LRC line") and "\n" not in warning
    assert "broken.json lyrics_lrc line 3" in captured.err
    # --no-analyze: nothing measured; the given bpm still wins.
    assert (broken[0]["bpm"], broken[0]["key"], broken[0]["metas_source"]["key"]) == (124, None, {"source": "missing"})
    assert report["analysis"] is False and "124 given" in captured.out and "N/A" in captured.out
    # An edited .lrc re-slices the lyrics on the next run without rewriting any audio.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")}
    (src / "timed.lrc").write_text("[chorus]\n[00:05.00] now in the first window\n[00:09.00]\n")
    assert run_cli(prep.main, ["--input", str(src), "--output", str(out), "--workers", "1", "--no-analyze"]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["lyrics"] for r in rows if r["track"] == "timed"] == ["[chorus]\nnow in the first window"] + ["[Instrumental]"] * 2
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")} == mtimes
