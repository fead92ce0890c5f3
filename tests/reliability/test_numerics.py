"""Injected NaN gradients: a skipped step leaves the LoRA untouched; too many in a row stop resumably."""

import json

import pytest
import torch
from fork_client import ForkServer
from test_train import write_config


@pytest.fixture(scope="module")
def server():
    srv = ForkServer()
    yield srv
    srv.close()


def fit(server, config, root, log, env, *extra):
    argv = ["fit", "--config", config, "--trainer.default_root_dir", root, "--trainer.callbacks+=nan_grads.NaNGrads", *extra]
    return server.run("housevox.fit", argv, log, env=env)


def test_nan_step_is_skipped_and_training_goes_on(tmp_path, server, tiny_checkpoint, tiny_segments):
    config = write_config(tmp_path / "cfg.yaml", tiny_checkpoint, tiny_segments)
    env = {"HOUSEVOX_NAN_STEPS": "2,5", "HOUSEVOX_NAN_REPORT": str(tmp_path / "nan.json")}
    assert fit(server, config, tmp_path, tmp_path / "log", env, "--trainer.max_epochs", "2") == 0
    log = (tmp_path / "log").read_text()
    assert "non-finite loss/gradients at step 2: step skipped (1 in a row)" in log
    assert "at step 5: step skipped" in log
    assert json.loads((tmp_path / "nan.json").read_text()) == {"2": True, "5": True}, "a skipped step changed the LoRA"
    ckpt = torch.load(tmp_path / "lightning_logs/t/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_too_many_nan_steps_stop_with_a_resumable_checkpoint(tmp_path, server, tiny_checkpoint, tiny_segments):
    config = write_config(tmp_path / "cfg.yaml", tiny_checkpoint, tiny_segments, max_nonfinite_steps=3)
    env = {"HOUSEVOX_NAN_STEPS": "4-", "HOUSEVOX_NAN_REPORT": str(tmp_path / "nan.json")}
    assert fit(server, config, tmp_path, tmp_path / "log", env) == 0
    log = (tmp_path / "log").read_text()
    assert "stopping: 3 non-finite steps in a row" in log and "--ckpt_path last" in log
    last = tmp_path / "lightning_logs/t/checkpoints/last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] < 9 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    # the cause fixed (no more injected NaN), the run resumes from that checkpoint and finishes
    assert fit(server, config, tmp_path, tmp_path / "log2", {}, "--ckpt_path", "last") == 0, (tmp_path / "log2").read_text()[-2000:]
    assert torch.load(last, weights_only=True)["global_step"] == 9
