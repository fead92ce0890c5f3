"""Crash at any moment: SIGKILL `housevox.fit` and `housevox.prep` again and again, then compare with uninterrupted runs.

Kills come from a seeded RNG, so a failure reproduces. Each is either a timed kill (an external
SIGKILL after a random delay: mid-step, mid-validation, mid-save, whatever is running) or a kill
inside an atomic write (tests/helpers/crash_points.py tears the temp file of the n-th checkpoint,
LoRA or cache-entry write and dies before the rename). The run starts with two cache entries
missing, so its first kills land in cache building. After every kill every file of the run is
checked (no torn checkpoint, LoRA, cache entry, JSON or WAV; leftover `.tmp` files are allowed and
ignored), and the run resumes with `--ckpt_path last`. At the end the LoRA files of every epoch are
byte-identical to an uninterrupted run's, and so are the step losses and the checkpoint weights.

Each CLI call runs in a child forked from a server that imported torch once
(tests/helpers/fork_runner.py), so a call costs its own work, not 10 s of imports.

CI runs 12 fit kills on a 6-epoch run and 6 prep kills (about a minute). For the long version,
`HOUSEVOX_LONG_RELIABILITY=1 pytest tests/reliability/test_kill_resume.py` runs 60 fit kills on
a 24-epoch run and 25 prep kills.
"""

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from fork_client import ForkServer
from safetensors import safe_open
from test_train import step_losses, write_config

from housevox.data.cache import entry_problem

LONG = os.environ.get("HOUSEVOX_LONG_RELIABILITY") == "1"
FIT_KILLS, EPOCHS, PREP_KILLS = (60, 24, 25) if LONG else (12, 6, 6)
CRASH_CALLBACK = "--trainer.callbacks+=crash_points.KillInWrite"


@pytest.fixture(scope="module")
def server():
    srv = ForkServer()
    yield srv
    srv.close()


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def check_files(*folders: Path) -> int:
    """Assert every real file under `folders` is whole; returns how many were checked."""
    checked = 0
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not is_temp(p)):
            if path.suffix == ".ckpt":
                ckpt = torch.load(path, weights_only=True)
                assert "state_dict" in ckpt and "housevox" in ckpt, path
            elif path.suffix == ".safetensors":
                with safe_open(path, "pt") as fh:
                    for key in fh.keys():
                        fh.get_tensor(key)
                if path.parent.name == "entries":
                    assert entry_problem(path, path.stem) is None, path
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".jsonl":
                [json.loads(line) for line in path.read_text().splitlines()]
            elif path.suffix == ".wav":
                assert sf.info(str(path)).frames > 0, path
                sf.read(str(path))
            else:
                continue
            checked += 1
    return checked


def link_segments(src: Path, dst: Path, drop_entries: int = 0, rng: random.Random | None = None) -> Path:
    """A private copy of a segments folder (WAVs hard-linked), with `drop_entries` cache entries removed."""
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if path.is_file():
            os.link(path, dst / path.name)
    shutil.copytree(src / "cache", dst / "cache")
    entries = sorted((dst / "cache" / "entries").glob("*.safetensors"))
    for path in (rng or random.Random(0)).sample(entries, drop_entries):
        path.unlink()
    return dst


def last_step(run: Path) -> int:
    last = run / "checkpoints" / "last.ckpt"
    return torch.load(last, weights_only=True)["global_step"] if last.is_file() else -1


def test_fit_survives_repeated_sigkill(tmp_path, server, tiny_checkpoint, tiny_segments):
    rng = random.Random(20260801)
    ref_segments = link_segments(tiny_segments, tmp_path / "ref_segments")
    ref_root, root = tmp_path / "ref", tmp_path / "killed"
    epochs = ["--trainer.max_epochs", str(EPOCHS)]
    ref_config = write_config(tmp_path / "ref.yaml", tiny_checkpoint, ref_segments)
    assert server.run("housevox.fit", ["fit", "--config", ref_config, "--trainer.default_root_dir", ref_root, *epochs],
                      tmp_path / "ref.log") == 0, (tmp_path / "ref.log").read_text()[-3000:]

    segments = link_segments(tiny_segments, tmp_path / "segments", drop_entries=2, rng=rng)
    config = write_config(tmp_path / "cfg.yaml", tiny_checkpoint, segments)
    run, log = root / "lightning_logs" / "t", tmp_path / "killed.log"
    plan = ["cache:1", "cache:2"]  # the first two kills tear cache entries: the build must resume
    kills, checked, kinds, stalled, rc, trace = 0, 0, {}, 0, None, []
    for attempt in range(4 * FIT_KILLS):
        if kills >= FIT_KILLS:
            break
        spec = plan.pop(0) if plan else rng.choice(["time", "time", "ckpt", "lora"])
        env, kill_after = {"HOUSEVOX_STEP_DELAY": "0.1"}, None
        if spec == "time":
            kill_after = rng.uniform(0.1, 1.0) * 1.25 ** min(stalled, 3)
        elif ":" not in spec:
            spec = f"{spec}:{rng.randint(1, 4)}"
        if spec != "time":
            env["HOUSEVOX_KILL_IN_WRITE"] = spec
        before = last_step(run)
        resume = ["--ckpt_path", "last"] if before >= 0 else []
        rc = server.run("housevox.fit", ["fit", "--config", config, "--trainer.default_root_dir", root, *epochs,
                                         CRASH_CALLBACK, *resume], log, env=env, kill_after=kill_after)
        if rc == 0:
            break
        assert rc == -9, log.read_text()[-3000:]
        kills += 1
        kinds[spec.split(":")[0]] = kinds.get(spec.split(":")[0], 0) + 1
        checked += check_files(root, segments)
        stalled = stalled + 1 if last_step(run) == before else 0
        trace.append((spec, round(kill_after or 0, 2), before, last_step(run)))
    assert kills >= FIT_KILLS, f"the run finished after {kills} kills: {trace}"
    if rc != 0:
        rc = server.run("housevox.fit", ["fit", "--config", config, "--trainer.default_root_dir", root, *epochs,
                                         "--ckpt_path", "last"], log)
    assert rc == 0, log.read_text()[-3000:]
    print(f"fit: {kills} SIGKILLs survived {kinds}, {checked} file checks after kills")

    ref_run = ref_root / "lightning_logs" / "t"
    assert not [p for p in run.rglob("*") if is_temp(p)], "temp files left in the run folder"
    assert not [p for p in (segments / "cache").rglob("*") if is_temp(p)], "temp files left in the cache"
    check_files(root, segments)
    ref_files = sorted(p.relative_to(ref_run) for p in (ref_run / "lora").rglob("*") if p.is_file())
    ours = sorted(p.relative_to(run) for p in (run / "lora").rglob("*") if p.is_file())
    assert ours == ref_files and len(ref_files) == 3 * EPOCHS, trace
    for rel in ref_files:
        assert (run / rel).read_bytes() == (ref_run / rel).read_bytes(), f"{rel} differs from the uninterrupted run"
    assert step_losses(run) == step_losses(ref_run)
    for name in ("last.ckpt", f"epoch_{EPOCHS:03d}.ckpt"):
        a = torch.load(run / "checkpoints" / name, weights_only=True)
        b = torch.load(ref_run / "checkpoints" / name, weights_only=True)
        assert a["global_step"] == b["global_step"]
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])


def test_prep_survives_repeated_sigkill(tmp_path, server, tiny_segments):
    """Kill prep mid-run again and again; the re-run writes the same manifest and byte-identical WAVs."""
    rng = random.Random(20260802)
    # The fixture's prep input, copied to the same place relative to the output: same sources, same manifest.
    tracks = shutil.copytree(tiny_segments.parent / "tracks", tmp_path / "tracks")
    out, log = tmp_path / "segments", tmp_path / "prep.log"
    argv = ["--input", tracks, "--output", out, "--workers", "1"]
    kills, kinds, stalled = 0, {}, 0
    for attempt in range(4 * PREP_KILLS):
        if kills >= PREP_KILLS:
            break
        done = sorted(out.glob("*.wav")) if out.is_dir() else []
        if rng.random() < 0.3:
            env, kill_after, kind = {"HOUSEVOX_KILL_IN_WRITE": f"other:{rng.randint(1, 3)}"}, None, "write"
        else:
            env, kill_after, kind = {}, rng.uniform(0.05, 1.5) * 1.5 ** stalled, "time"
        rc = server.run("housevox.prep", argv, log, env=env, kill_after=kill_after)
        if rc == 0:
            shutil.rmtree(out)  # finished before the kill: start over, the kill is what is tested
            continue
        assert rc == -9, log.read_text()[-3000:]
        kills += 1
        kinds[kind] = kinds.get(kind, 0) + 1
        check_files(out)
        stalled = stalled + 1 if sorted(out.glob("*.wav")) == done else 0
    assert kills >= PREP_KILLS
    assert server.run("housevox.prep", argv, log) == 0, log.read_text()[-3000:]
    print(f"prep: {kills} SIGKILLs survived {kinds}")
    assert (out / "manifest.jsonl").read_bytes() == (tiny_segments / "manifest.jsonl").read_bytes()
    assert (out / "report.json").read_bytes() == (tiny_segments / "report.json").read_bytes()
    wavs = sorted(p.name for p in out.glob("*.wav"))
    assert wavs == sorted(p.name for p in tiny_segments.glob("*.wav")) and len(wavs) == 6
    for name in wavs:
        assert (out / name).read_bytes() == (tiny_segments / name).read_bytes(), name
    assert not [p for p in out.iterdir() if is_temp(p)], "temp files left by prep"
