"""Segment cache built with the tiny checkpoint: shapes, idempotence, targeted rebuilds, torn entries, bad rows."""

import json
import logging
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from housevox.acestep import load_silence_latent, open_checkpoint
from housevox.acestep.checkpoint import CheckpointFolder
from housevox.acestep.conditioning import context_latents
from housevox.atomic import save_safetensors
from housevox.data import SegmentCacheDataModule, build_cache, entry_key, load_entry, read_index
from housevox.data.cache import entry_path, entry_problem, segment_audio
from housevox.errors import HousevoxError

SR = 44100
SEGMENT = 1_323_000  # 30.0 s at 44.1 kHz


def _row(file, track, index, caption="deep house, soulful vocal"):
    return {"file": file, "track": track, "source": f"{track}.wav", "source_sha256": "0" * 64, "segment_index": index,
            "start_s": 29.0 * index, "end_s": 29.0 * index + 30.0, "sample_rate": SR, "channels": 1, "caption": caption,
            "lyrics": "[Verse] ooh yeah" if track == "a" else None, "bpm": 122, "key": "A minor",
            "timesignature": 4, "language": "en"}


def write_manifest(folder, rows, extra_lines=()):
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    (folder / "manifest.jsonl").write_text("".join(line + "\n" for line in lines))


def read_manifest(folder):
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.startswith('{"')]


@pytest.fixture(scope="module")
def built(tiny_checkpoint, tmp_path_factory):
    """Three good segments (track a: 2 mono, track b: 1 stereo) plus bad rows, built once for the module."""
    seg = tmp_path_factory.mktemp("segments")
    rng = np.random.default_rng(0)
    for name, channels in (("a_000.wav", 1), ("a_001.wav", 1), ("b_000.wav", 2)):
        sf.write(seg / name, 0.1 * rng.standard_normal((SEGMENT, channels)), SR, subtype="PCM_24")
    sf.write(seg / "short_000.wav", np.zeros((SEGMENT - SR, 1)), SR, subtype="PCM_24")
    (seg / "junk_000.wav").write_bytes(b"not a wav file")
    rows = [_row("a_000.wav", "a", 0), _row("a_001.wav", "a", 1), _row("b_000.wav", "b", 0, caption="piano house")]
    bad = [_row(name, "bad", 0) for name in ("gone_000.wav", "../../etc/passwd", "/etc/passwd", "short_000.wav", "junk_000.wav")]
    write_manifest(seg, rows + bad, extra_lines=["{not json"])
    report = build_cache(seg, tiny_checkpoint, seg / "cache", default_caption="house")
    return seg, report


def _copy(built, tmp_path):
    seg = tmp_path / "segments"
    shutil.copytree(built[0], seg)
    return seg


def test_entries_have_contract_shapes_and_dtypes(built, tiny_checkpoint):
    seg, report = built
    config = open_checkpoint(tiny_checkpoint).config
    d, e = config.audio_acoustic_hidden_dim, config.encoder_hidden_size
    index = read_index(seg / "cache")
    assert report.built == 3 and sorted(r["file"] for r in index) == ["a_000.wav", "a_001.wav", "b_000.wav"]
    silence = load_silence_latent(tiny_checkpoint)
    for row in index:
        entry = load_entry(entry_path(seg / "cache", row["key"]))
        length = row["L"]
        assert entry["target_latents"].shape == (750, d) and entry["target_latents"].dtype == torch.float32
        assert entry["encoder_hidden_states"].shape == (length, e) and entry["encoder_hidden_states"].dtype == torch.float32
        assert entry["encoder_attention_mask"].shape == (length,) and entry["encoder_attention_mask"].dtype == torch.bool
        assert torch.equal(entry["context_latents"], context_latents(silence, 750))
    # Track b has no lyrics and another caption, so its condition length differs from track a's.
    assert len({r["L"] for r in index if r["track"] == "a"}) == 1 and index[0]["L"] != index[2]["L"]


def test_bad_rows_are_reported_and_skipped(built):
    skipped = dict(built[1].skipped)
    assert set(skipped) == {"gone_000.wav", "../../etc/passwd", "/etc/passwd", "short_000.wav", "junk_000.wav",
                            "manifest.jsonl:9"}
    assert "leaves the segments folder" in skipped["../../etc/passwd"]
    assert "absolute" in skipped["/etc/passwd"] and "shorter than 30.0 s" in skipped["short_000.wav"]


def test_second_build_builds_nothing(built, tiny_checkpoint):
    seg, _ = built
    before = {p.name: p.stat().st_mtime_ns for p in (seg / "cache" / "entries").iterdir()}
    report = build_cache(seg, tiny_checkpoint, seg / "cache", default_caption="house")
    assert (report.built, report.reused) == (0, 3)
    assert {p.name: p.stat().st_mtime_ns for p in (seg / "cache" / "entries").iterdir()} == before


def test_editing_one_caption_rebuilds_only_that_track(built, tiny_checkpoint, tmp_path):
    seg = _copy(built, tmp_path)
    old = {r["file"]: r["key"] for r in read_index(seg / "cache")}
    write_manifest(seg, [r | {"caption": "acid house"} if r["track"] == "b" else r for r in read_manifest(seg)])
    report = build_cache(seg, tiny_checkpoint, seg / "cache", default_caption="house")
    new = {r["file"]: r["key"] for r in read_index(seg / "cache")}
    assert (report.built, report.reused) == (1, 2)
    assert new["a_000.wav"] == old["a_000.wav"] and new["a_001.wav"] == old["a_001.wav"]
    assert new["b_000.wav"] != old["b_000.wav"]
    assert not entry_path(seg / "cache", old["b_000.wav"]).exists()  # the stale entry is pruned


def test_one_segments_new_lyrics_and_another_tracks_measured_bpm_rebuild_only_those(built, tiny_checkpoint, tmp_path):
    """What an edited .lrc (one window's lines) or a re-measured tempo changes in the manifest rebuilds those entries only."""
    seg = _copy(built, tmp_path)
    old = {r["file"]: r["key"] for r in read_index(seg / "cache")}
    edited = {"a_001.wav": {"lyrics": "[chorus]\na new line"}, "b_000.wav": {"bpm": 124}}
    write_manifest(seg, [r | edited.get(r["file"], {}) for r in read_manifest(seg)])
    report = build_cache(seg, tiny_checkpoint, seg / "cache", default_caption="house")
    new = {r["file"]: r for r in read_index(seg / "cache")}
    assert (report.built, report.reused) == (2, 1)
    assert new["a_000.wav"]["key"] == old["a_000.wav"]
    assert new["a_001.wav"]["key"] != old["a_001.wav"] and new["a_001.wav"]["lyrics"] == "[chorus]\na new line"
    assert new["b_000.wav"]["key"] != old["b_000.wav"] and new["b_000.wav"]["bpm"] == 124


def test_truncated_entry_is_detected_and_rebuilt_identically(built, tiny_checkpoint, tmp_path):
    seg = _copy(built, tmp_path)
    key = read_index(seg / "cache")[0]["key"]
    path = entry_path(seg / "cache", key)
    original = {name: t.clone() for name, t in load_entry(path).items()}  # load_entry maps the file
    path.write_bytes(path.read_bytes()[:-100])
    assert "unreadable" in entry_problem(path, key)
    with pytest.raises(HousevoxError, match=key):
        load_entry(path)
    report = build_cache(seg, tiny_checkpoint, seg / "cache", default_caption="house")
    assert (report.built, report.reused) == (1, 2)
    rebuilt = load_entry(path)  # the posterior sample is seeded by the entry key
    assert all(torch.equal(rebuilt[name], original[name]) for name in original)


def test_another_checkpoint_rebuilds_everything_with_one_line(built, tiny_checkpoint, tmp_path, monkeypatch, caplog):
    seg = _copy(built, tmp_path)
    write_manifest(seg, read_manifest(seg)[2:3])  # one segment keeps the full rebuild cheap
    monkeypatch.setattr(CheckpointFolder, "fingerprint", lambda self: "another checkpoint")
    with caplog.at_level(logging.WARNING, logger="housevox.data.cache"):
        report = build_cache(seg, tiny_checkpoint, seg / "cache", default_caption="house")
    assert (report.built, report.reused) == (1, 0)
    assert [r.message for r in caplog.records if "another checkpoint" in r.message][0].count("\n") == 0
    assert len(list((seg / "cache" / "entries").iterdir())) == 1


def test_datamodule_prepares_nothing_new_and_batches(built, tiny_checkpoint):
    seg, _ = built
    dm = SegmentCacheDataModule(str(seg), str(tiny_checkpoint), default_caption="house", val_tracks=["b"])
    dm.prepare_data()
    assert dm.last_build_report.built == 0
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [b["target_latents"].shape[0] for b in batches] == [1, 1]
    assert {dm.train_set.entries[int(i)]["track"] for b in batches for i in b["index"]} == {"a"}
    assert [dm.val_set.entries[int(b["index"][0])]["track"] for b in dm.val_dataloader()] == ["b"]


def test_entry_key_depends_on_every_input():
    base = ("0" * 64, "caption", "lyrics", {"bpm": 120}, "ckpt")
    variants = [("1" * 64, *base[1:]), (base[0], "other", *base[2:]), (*base[:2], None, *base[3:]),
                (*base[:3], {"bpm": 121}, base[4]), (*base[:4], "ckpt2")]
    keys = {entry_key(*base)} | {entry_key(*v) for v in variants}
    assert len(keys) == 6 and entry_key(*base) == entry_key(*base)


def test_load_entry_rejects_nan_and_bad_shapes(tmp_path):
    good = {"target_latents": torch.zeros(750, 4), "encoder_hidden_states": torch.zeros(5, 8),
            "encoder_attention_mask": torch.ones(5, dtype=torch.bool), "context_latents": torch.zeros(750, 8)}
    meta = {"key": "k", "format_version": "1"}
    save_safetensors(good, tmp_path / "k.safetensors", meta)
    assert load_entry(tmp_path / "k.safetensors")["encoder_attention_mask"].all()
    for name, tensors in (("nan", good | {"target_latents": torch.full((750, 4), float("nan"))}),
                          ("shape", good | {"context_latents": torch.zeros(750, 6)}),
                          ("frames", good | {"target_latents": torch.zeros(700, 4), "context_latents": torch.zeros(700, 8)})):
        save_safetensors(tensors, tmp_path / f"{name}.safetensors", meta | {"key": name})
        with pytest.raises(HousevoxError, match=f"{name}.safetensors"):
            load_entry(tmp_path / f"{name}.safetensors")
    with pytest.raises(HousevoxError, match="header key"):
        load_entry(tmp_path / "k.safetensors", key="other")


def test_segment_audio_is_48k_stereo_exactly_30s(tmp_path):
    t = np.arange(SEGMENT + 500) / SR
    sf.write(tmp_path / "mono.wav", 0.5 * np.sin(2 * np.pi * 440 * t), SR, subtype="PCM_24")
    audio = segment_audio(tmp_path / "mono.wav")
    assert audio.shape == (1, 2, 1_440_000) and torch.equal(audio[0, 0], audio[0, 1])
    sf.write(tmp_path / "short.wav", np.zeros(SEGMENT - 10), SR, subtype="PCM_24")
    with pytest.raises(HousevoxError, match="shorter than 30.0 s"):
        segment_audio(tmp_path / "short.wav")


def test_missing_manifest_names_the_path(tiny_checkpoint, tmp_path):
    with pytest.raises(HousevoxError, match="manifest.jsonl"):
        build_cache(tmp_path, tiny_checkpoint, tmp_path / "cache")


def test_the_encoding_is_in_the_key_and_caches_never_mix_encodings(built, tiny_checkpoint, tmp_path):
    """fp32 on the CPU keeps the keys caches always had; another encoding (bf16 here, or CUDA) gets its own entries."""
    import hashlib

    from safetensors import safe_open

    from housevox.data.cache import CACHE_FORMAT_VERSION, REFERENCE_ENCODING, encoding_name

    fields = ("a" * 64, "house", None, {"bpm": 120}, "f" * 64)
    before = hashlib.sha256(json.dumps([CACHE_FORMAT_VERSION, *fields], sort_keys=True).encode()).hexdigest()
    assert entry_key(*fields) == entry_key(*fields, REFERENCE_ENCODING) == before
    assert len({entry_key(*fields, e) for e in (REFERENCE_ENCODING, "bfloat16@cpu", "float32@cuda")}) == 3
    assert encoding_name(torch.float32, "cuda:1") == "float32@cuda"

    seg = _copy(built, tmp_path)
    fp32 = {r["file"]: r["key"] for r in read_index(seg / "cache")}
    report = build_cache(seg, tiny_checkpoint, seg / "cache", default_caption="house", dtype=torch.bfloat16)
    assert (report.built, report.reused) == (3, 0)
    bf16 = {r["file"]: r["key"] for r in read_index(seg / "cache")}
    assert fp32.keys() == bf16.keys() and not set(fp32.values()) & set(bf16.values())
    with safe_open(seg / "cache" / "entries" / f"{next(iter(bf16.values()))}.safetensors", "pt") as fh:
        assert fh.metadata()["encoding"] == "bfloat16@cpu"
