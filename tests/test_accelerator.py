"""No silent CPU fallback: a run that needs a GPU stops in one line with the reason and the fix; the doctor reports."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import save_file

import housevox.accelerator as accelerator
from housevox.accelerator import CudaEnv, check_can_train, cuda_problem
from housevox.acestep.presets import PRESETS
from housevox.doctor import lock_verdict, report
from housevox.errors import run_cli
from housevox.fit import main as fit_main

CPU_ONLY_WINDOWS = CudaEnv("2.11.0+cpu", None, False, system="Windows")
OLD_DRIVER = CudaEnv("2.11.0+cu130", "13.0", False, driver_cuda=12040, driver_version="550.54.15",
                     gpus=("NVIDIA GeForce RTX 4090",), system="Linux")
NO_DEVICE = CudaEnv("2.11.0+cu130", "13.0", False, system="Linux")
WORKING = CudaEnv("2.11.0+cu130", "13.0", True, driver_cuda=13000, driver_version="580.65", system="Linux")


def test_cpu_only_build_names_the_build_and_the_cuda_index():
    problem = cuda_problem(CPU_ONLY_WINDOWS)
    assert "CPU-only build" in problem and "Windows" in problem
    assert "--index-url https://download.pytorch.org/whl/cu126" in problem and "torch==2.11.0" in problem


def test_old_driver_names_both_versions_and_the_fix():
    problem = cuda_problem(OLD_DRIVER)
    assert "CUDA 13.0" in problem and ">= 580" in problem and "550.54.15" in problem and "CUDA 12.4" in problem
    assert "update the driver" in problem and "whl/cu126" in problem


def test_gpu_runs_are_refused_without_cuda_but_cpu_runs_and_small_models_pass():
    assert "XL DiT needs an NVIDIA GPU" in check_can_train("auto", "xl", OLD_DRIVER)
    assert "2B DiT" in check_can_train(None, "2b", NO_DEVICE)
    assert "trainer.accelerator gpu" in check_can_train("gpu", "custom-64", CPU_ONLY_WINDOWS)
    assert check_can_train("cpu", "xl", OLD_DRIVER) is None  # an explicit choice is honoured
    assert check_can_train("auto", "custom-64", OLD_DRIVER) is None  # a tiny model may train on the CPU
    assert check_can_train("auto", "xl", WORKING) is None


def _write_config(path, checkpoint, segments, accelerator_name):
    path.write_text(yaml.safe_dump({
        "run_name": "t", "model": {"checkpoint_dir": str(checkpoint), "rank": 4, "alpha": 4, "seed": 1},
        "data": {"segments_dir": str(segments), "batch_size": 1},
        "trainer": {"max_epochs": 1, "accelerator": accelerator_name, "enable_progress_bar": False}}))
    return path


@pytest.fixture
def xl_checkpoint(tmp_path):
    """An XL-shaped checkpoint folder: the real config.json, a stand-in weight file (never loaded: the run stops first)."""
    folder = tmp_path / "acestep-v15-xl-base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(PRESETS["xl"]))
    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("env", [CPU_ONLY_WINDOWS, OLD_DRIVER, NO_DEVICE], ids=["cpu-only-build", "driver-too-old", "no-device"])
def test_xl_fit_stops_in_one_line_with_reason_and_fix(tmp_path, xl_checkpoint, tiny_segments, capsys, monkeypatch, env):
    monkeypatch.setattr(accelerator, "probe", lambda: env)
    config = _write_config(tmp_path / "xl.yaml", xl_checkpoint, tiny_segments, "auto")
    code = run_cli(fit_main, ["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith("error: the XL DiT needs an NVIDIA GPU")
    assert cuda_problem(env) in err
    assert not (tmp_path / "lightning_logs").exists()  # stopped before any run folder or cache work


def test_gpu_accelerator_on_tiny_model_stops_too(tmp_path, tiny_checkpoint, tiny_segments, capsys, monkeypatch):
    monkeypatch.setattr(accelerator, "probe", lambda: OLD_DRIVER)
    config = _write_config(tmp_path / "gpu.yaml", tiny_checkpoint, tiny_segments, "gpu")
    assert run_cli(fit_main, ["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trainer.accelerator gpu needs an NVIDIA GPU" in err and "550.54.15" in err


def test_lock_verdict_per_platform():
    assert "suits this machine" in lock_verdict(WORKING, "Linux", "x86_64")
    assert "needs driver >= 580" in lock_verdict(OLD_DRIVER, "Linux", "x86_64")
    assert "CPU-only on Windows" in lock_verdict(CPU_ONLY_WINDOWS, "Windows", "AMD64")


def test_doctor_report_on_a_simulated_old_driver_and_here():
    lines = report(OLD_DRIVER)
    text = "\n".join(lines)
    assert "torch 2.11.0+cu130: CUDA 13.0 build" in text and "NVIDIA driver: 550.54.15 (supports CUDA 12.4)" in text
    assert "GPU (nvidia-smi): NVIDIA GeForce RTX 4090" in text and "CUDA: unusable: " in text
    assert "bitsandbytes" in text and "attention" in text
    done = subprocess.run([sys.executable, "-m", "housevox.doctor"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"torch {torch.__version__}" in done.stdout and "uv.lock's torch" in done.stdout


def test_ddp_uses_the_gradients_as_its_buckets():
    from lightning.pytorch.strategies import DDPStrategy

    from housevox.fit import ddp_strategy

    strategy = ddp_strategy("ddp")
    assert isinstance(strategy, DDPStrategy) and strategy._ddp_kwargs["gradient_as_bucket_view"] is True
    assert ddp_strategy("auto") == "auto" and ddp_strategy("fsdp") == "fsdp"
