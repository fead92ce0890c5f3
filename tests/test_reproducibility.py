"""Same config, data, base and seed ⇒ the same LoRA, whatever ran before; identical inputs ⇒ identical bytes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from housevox.acestep.fixture import make_fixture
from housevox.fit import main as fit_main
from housevox.lora.targets import ADAPTER, lora_layers
from housevox.train.module import HouseVoxLoRA

ROOT = Path(__file__).resolve().parents[1]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def lora_tensors(run: Path) -> dict[str, torch.Tensor]:
    files = sorted((run / "lora").glob("epoch_*/*.safetensors"))
    assert files, f"no LoRA export in {run}"
    return load_file(files[-1])


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs (max abs {(a[key] - b[key]).abs().max():.3g})"


def initial_lora_a(checkpoint: Path, seed: int) -> tuple[HouseVoxLoRA, dict[str, torch.Tensor]]:
    module = HouseVoxLoRA(str(checkpoint), rank=4, alpha=4, seed=seed)
    module.configure_model()
    return module, {path: layer.lora_A[ADAPTER].weight.detach().clone() for path, layer in lora_layers(module.dit).items()}


def test_fixture_folders_written_in_different_places_are_byte_identical(tmp_path):
    first = make_fixture(tmp_path / "a" / "acestep-v15-tiny", preset="tiny", seed=0)
    torch.randn(1000)  # whatever ran before must not matter
    second = make_fixture(tmp_path / "somewhere" / "else" / "acestep-v15-tiny", preset="tiny", seed=0)
    a, b = folder_bytes(first), folder_bytes(second)
    assert a.keys() == b.keys() and "silence_latent.pt" in a
    assert [name for name in a if a[name] != b[name]] == []
    assert folder_bytes(make_fixture(tmp_path / "seed1", preset="tiny", seed=1)) != a


def test_lora_init_comes_from_the_run_seed(tiny_checkpoint):
    _, first = initial_lora_a(tiny_checkpoint, seed=7)
    torch.manual_seed(12345)
    torch.randn(100)
    _, again = initial_lora_a(tiny_checkpoint, seed=7)
    _, other = initial_lora_a(tiny_checkpoint, seed=8)
    assert_bitwise_equal(first, again)
    assert all(not torch.equal(first[path], other[path]) for path in first)
    assert all(a.abs().max() > 0 for a in first.values())


def test_a_drawn_seed_is_drawn_before_the_adapters_and_decides_them(tiny_checkpoint):
    drawn, init = initial_lora_a(tiny_checkpoint, seed=-1)
    assert drawn.run_seed is not None and drawn.seed_was_drawn
    _, replay = initial_lora_a(tiny_checkpoint, seed=drawn.run_seed)
    assert_bitwise_equal(init, replay)


def test_fit_that_builds_everything_equals_fit_that_finds_it_on_disk(tmp_path, demo_root):
    """Run 1 writes the demo segments and cache in-process; run 2 finds them on disk.

    The demo base is the session's (building it is covered by the two-folder make demo test below).
    """
    shutil.copytree(demo_root, tmp_path / "demo")
    args = ["fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.max_epochs", "2", "--model.sample_every_n_epochs", "0", "--trainer.enable_progress_bar", "false"]
    assert fit_main([*args, "--run_name", "built"]) == 0
    torch.manual_seed(999)
    torch.rand(10)
    assert fit_main([*args, "--run_name", "found"]) == 0
    runs = tmp_path / "lightning_logs"
    assert_bitwise_equal(lora_tensors(runs / "built"), lora_tensors(runs / "found"))


def copy_tracked_files(dest: Path) -> Path:
    """What a fresh clone holds (tracked and untracked-but-not-ignored files), mtimes kept."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow
def test_make_demo_in_two_fresh_folders_gives_identical_files(tmp_path):
    if shutil.which("make") is None or not (ROOT / ".git").exists():
        pytest.skip("needs make and a git checkout")
    venv = Path(sys.prefix)
    stamp = venv / ".housevox-installed"
    outputs = [copy_tracked_files(tmp_path / name) for name in ("first", "second-folder")]
    # Both at once, a core each; the shared, already installed venv (`-o` keeps make from reinstalling it).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    demos = [subprocess.Popen(["make", "demo", f"VENV={venv}", "-o", str(stamp)], cwd=clone, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for clone in outputs]
    for demo in demos:
        log = demo.communicate(timeout=900)[0]
        assert demo.returncode == 0, log[-3000:]
    first, second = outputs
    assert_bitwise_equal(lora_tensors(first / "lightning_logs" / "demo"), lora_tensors(second / "lightning_logs" / "demo"))
    for folder in ("demo/checkpoints", "demo/tracks", "demo/segments", "lightning_logs/demo/lora"):
        a, b = folder_bytes(first / folder), folder_bytes(second / folder)
        varying = {name for name in a if name.endswith("cache/index.json")}  # mtime_ns and the checkpoint path
        assert a.keys() == b.keys(), folder
        assert [n for n in a if n not in varying and a[n] != b[n]] == [], folder
