"""Corrupt inputs: each gives one `error: ...` line naming the file or field and a non-zero exit, or a clean skip.

Complements tests/test_acestep.py (missing/foreign checkpoint folders), tests/test_cache.py and
tests/test_lora_formats.py with the damaged-file cases of issue 8, driven through the CLIs where they
are the user's entry point. A disk-full save is here too: the previous checkpoint must survive it.
"""

import errno
import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from test_train import write_config

from housevox.atomic import save_safetensors
from housevox.data.cache import build_cache, load_entry
from housevox.errors import HousevoxError, run_cli
from housevox.fit import main as fit_main
from housevox.lora.__main__ import main as lora_main
from housevox.train import checkpoint_io
from housevox.train.checkpoint_io import AtomicCheckpointIO

TRIED = []  # every corrupt input below, counted for the report


def one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code != 0 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    TRIED.append(lines[0])
    return lines[0]


def fit(tmp_path, config, *extra) -> int:
    return run_cli(fit_main, ["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path), *extra])


@pytest.fixture
def broken_checkpoint(tmp_path, tiny_checkpoint):
    return shutil.copytree(tiny_checkpoint, tmp_path / "acestep-v15-tiny")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_checkpoint_shard(tmp_path, broken_checkpoint, tiny_segments, capsys, damage):
    shard = sorted(broken_checkpoint.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x13\x37" * 999, "empty": b""}[damage])
    config = write_config(tmp_path / "cfg.yaml", broken_checkpoint, tiny_segments)
    one_line_error(capsys, fit(tmp_path, config, "--trainer.max_epochs", "1"), shard.name)


def test_corrupt_last_ckpt_points_at_the_previous_good_one(tmp_path, tiny_checkpoint, tiny_segments, capsys):
    config = write_config(tmp_path / "cfg.yaml", tiny_checkpoint, tiny_segments)
    assert fit(tmp_path, config, "--trainer.max_epochs", "1") == 0
    last = tmp_path / "lightning_logs/t/checkpoints/last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # torn by an older version
    capsys.readouterr()
    one_line_error(capsys, fit(tmp_path, config, "--ckpt_path", "last"), "last.ckpt", "unreadable", "epoch_001.ckpt")
    last.write_bytes(b"\x80\x04garbage")
    one_line_error(capsys, fit(tmp_path, config, "--ckpt_path", "last"), "last.ckpt", "epoch_001.ckpt")


def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """Disk full mid-save: one clear error, the old last.ckpt bitwise intact, no temp file left behind."""
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 4, "state_dict": {"w": torch.ones(3)}}, path)
    io.wait()  # written in the background: its error (if any) comes with the next save or wait
    before = path.read_bytes()

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", full_disk)
    with pytest.raises(HousevoxError, match="No space left on device.*previous checkpoint is untouched"):
        io.save_checkpoint({"global_step": 5, "state_dict": {"w": torch.zeros(3)}}, path)
        io.wait()
    TRIED.append("ENOSPC during checkpoint save")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("damage", ["nan", "shape", "truncate"])
def test_bad_cache_entry_is_refused(tmp_path, tiny_segments, damage):
    entry = sorted((tiny_segments / "cache/entries").glob("*.safetensors"))[0]
    bad = tmp_path / entry.name
    tensors = load_file(entry)
    from safetensors import safe_open
    with safe_open(entry, "pt") as fh:
        meta = fh.metadata()
    if damage == "nan":
        tensors["target_latents"][3, 1] = float("nan")
    elif damage == "shape":
        tensors["target_latents"] = tensors["target_latents"][:100]
    save_safetensors(tensors, bad, metadata=meta)
    if damage == "truncate":
        bad.write_bytes(entry.read_bytes()[:-100])
    with pytest.raises(HousevoxError, match=rf"{bad.name}: bad cache entry"):
        load_entry(bad, entry.stem)
    TRIED.append(f"cache entry {damage}")


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "../segments_evil/x.wav"])
def test_manifest_path_outside_segments_is_refused(tmp_path, tiny_checkpoint, tiny_segments, name):
    segments = tmp_path / "segments"
    segments.mkdir()
    row = json.loads((tiny_segments / "manifest.jsonl").read_text().splitlines()[0])
    (segments / "manifest.jsonl").write_text(json.dumps(row | {"file": name}) + "\n")
    report = build_cache(segments, tiny_checkpoint, segments / "cache")
    assert report.built == 0 and len(report.skipped) == 1
    assert report.skipped[0][0] == name and ("leaves the segments folder" in report.skipped[0][1]
                                              or "absolute path" in report.skipped[0][1])
    assert json.loads((segments / "cache/index.json").read_text())["entries"] == []
    TRIED.append(f"manifest path {name}")


def _lora_file(tmp_path, tensors: dict) -> str:
    path = tmp_path / "lora.safetensors"
    save_file(tensors, str(path))
    return str(path)


@pytest.mark.parametrize("tensors, needle", [
    ({"base_model.model.layers.0.self_attn.q_proj.lora_down.weight": torch.zeros(4, 8),
      "base_model.model.layers.0.self_attn.q_proj.lora_up.weight": torch.zeros(8, 5)}, "do not form a LoRA pair"),
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, "not an ACE-Step v1.5 DiT adapter key"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, "foreign model"),
])
def test_foreign_or_mismatched_lora(tmp_path, capsys, tensors, needle):
    path = _lora_file(tmp_path, tensors)
    one_line_error(capsys, run_cli(lora_main, ["inspect", path]), "lora.safetensors", needle)


def test_garbage_lora_file(tmp_path, capsys):
    path = tmp_path / "lora.safetensors"
    path.write_bytes(b"\xff" * 64)
    one_line_error(capsys, run_cli(lora_main, ["inspect", str(path)]), "lora.safetensors")


@pytest.mark.parametrize("edit, field", [
    (lambda c: c["model"].update(rnak=4), "rnak"),
    (lambda c: c["model"].update(rank="four"), "rank"),
    (lambda c: c["model"].update(learning_rate=[1, 2]), "learning_rate"),
    (lambda c: c["data"].update(batch_size="x"), "batch_size"),
    (lambda c: c.update(trainr={}), "trainr"),
    (lambda c: c["trainer"].update(max_epochs="many"), "max_epochs"),
])
def test_bad_yaml(tmp_path, tiny_checkpoint, tiny_segments, capsys, edit, field):
    path = write_config(tmp_path / "cfg.yaml", tiny_checkpoint, tiny_segments)
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config))
    one_line_error(capsys, fit(tmp_path, path), field)


def test_unparseable_yaml(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: {rank: [\n")
    one_line_error(capsys, fit(tmp_path, path), "cfg.yaml")


def test_report_counts():
    print(f"corrupt inputs tried: {len(TRIED)}")
