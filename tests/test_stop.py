"""Ctrl-C and SIGTERM during fit save the step reached (checkpoint + LoRA), exit 130 / 143, and resume exactly.

The signal comes at a random moment of the first epoch (a seeded pick of micro-batch and hook, so a failure
reproduces), with gradient accumulation 2, so it can land mid-accumulation. Each CLI call is a child of
the fork server (tests/helpers/fork_runner.py), so a fit costs its own work, not the imports.
"""

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
from fork_client import ForkServer  # noqa: E402
from test_train import step_losses, write_config  # noqa: E402

EPOCHS = 2
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server():
    srv = ForkServer()
    yield srv
    srv.close()


def config(path: Path, checkpoint: Path, segments: Path) -> Path:
    write_config(path, checkpoint, segments, checkpoint_every_n_steps=1000, save_every=EPOCHS)
    doc = yaml.safe_load(path.read_text())
    doc["trainer"].update(max_epochs=EPOCHS, accumulate_grad_batches=2)
    doc["trainer"]["callbacks"] = [{"class_path": "signal_at.SignalAt"}]
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, server, tiny_checkpoint, tiny_segments):
    root = tmp_path_factory.mktemp("ref")
    cfg = config(root / "cfg.yaml", tiny_checkpoint, tiny_segments)
    assert server.run("housevox.fit", ["fit", "--config", cfg, "--trainer.default_root_dir", root], root / "log") == 0, \
        (root / "log").read_text()[-3000:]
    return root / "lightning_logs" / "t", cfg


# 3 training micro-batches an epoch (6 segments, one held-out track of 3), 2 a step: micro-batch 0 is mid-accumulation,
# 2 is the epoch's last step (its validation and export run before the stop).
@pytest.mark.parametrize("name, code, again, batch", [("INT", 130, True, 0), ("TERM", 143, False, 2)])
def test_signal_saves_the_step_and_resumes_exactly(tmp_path, server, reference, name, code, again, batch):
    ref_run, cfg = reference
    moments = ["start", "backward", "end"] + (["step"] if batch else [])  # micro-batch 0 takes no optimizer step
    moment = (batch, random.Random(f"stop-{name}").choice(moments))
    env = {"HOUSEVOX_SIGNAL": f"{name}:{moment[0]}:{moment[1]}", **({"HOUSEVOX_SIGNAL_AGAIN": "1"} if again else {})}
    log = tmp_path / "log"
    argv = ["fit", "--config", cfg, "--trainer.default_root_dir", tmp_path]
    assert server.run("housevox.fit", argv, log, env=env) == code, log.read_text()[-3000:]

    text = log.read_text()
    signalled = int(re.search(r"signalled at step (\d+)", text).group(1))
    stopped = re.search(r"stopped by SIG\w+ at optimizer step (\d+)", text)
    assert stopped, text[-3000:]
    step = int(stopped.group(1))
    assert signalled <= step <= signalled + 1, moment  # at most the step in flight is finished
    if again:
        assert "already stopping; the save completes first" in text
    run = tmp_path / "lightning_logs" / "t"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step
    lora = run / "lora" / f"step_{step:06d}" / f"t_step_{step:06d}.safetensors"
    with safe_open(lora, "pt") as fh:
        meta = fh.metadata()
    assert meta["interrupted"] == f"SIG{name} at step {step}" and meta["global_step"] == str(step)
    assert (lora.parent / "adapter" / "adapter_model.safetensors").is_file()
    assert f"LoRA:       {lora.parent}" in text and "--ckpt_path last" in text.splitlines()[-1]

    assert server.run("housevox.fit", [*argv, "--ckpt_path", "last"], log) == 0, log.read_text()[-3000:]
    final = Path("lora") / f"epoch_{EPOCHS:03d}"
    for ref_file in sorted((ref_run / final).rglob("*.safetensors")):
        ours = run / ref_file.relative_to(ref_run)
        assert ours.read_bytes() == ref_file.read_bytes(), f"{ours} differs from the uninterrupted run"
    assert step_losses(run) == step_losses(ref_run)


def test_a_terminals_ctrl_c_reaches_the_workers_too(tmp_path, reference):
    """Ctrl-C in a terminal signals the whole process group: DataLoader workers ignore it, so the step in flight
    (here mid-accumulation, needing the worker's next batch) still finishes and saves."""
    _, cfg = reference
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent / "helpers"), "PYTHONUNBUFFERED": "1",
           "HOUSEVOX_SIGNAL": "INT:0:backward:group"}
    result = subprocess.run([sys.executable, "-m", "housevox.fit", "fit", "--config", str(cfg), "--data.num_workers", "1",
                             "--trainer.default_root_dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600, start_new_session=True)  # its own group: the signal stays in it
    assert result.returncode == 130, result.stderr[-3000:]
    assert "stopped by SIGINT at optimizer step 1" in result.stderr
    run = tmp_path / "lightning_logs" / "t"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
    assert (run / "lora" / "step_000001" / "t_step_000001.safetensors").is_file()
