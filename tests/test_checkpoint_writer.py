"""Background checkpoint writer: a CPU copy written by one thread, at most one write in flight, atomic files."""

import threading
import time
from types import SimpleNamespace

import torch

from housevox.train import checkpoint_io, stopping
from housevox.train.checkpoint_io import AtomicCheckpointIO


def _checkpoint(step: int, value: float) -> dict:
    return {"epoch": 0, "global_step": step, "loops": {"batch": step}, "state_dict": {"w": torch.full((64, 64), value)},
            "optimizer_states": [{"state": {0: {"exp_avg": torch.full((64,), value)}}}]}


def test_the_file_holds_the_state_at_save_time_not_later_in_place_updates(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    ckpt = _checkpoint(1, 1.0)
    io.save_checkpoint(ckpt, path)
    io.wait_for_copy()  # what the trainer does before the next optimizer step
    ckpt["state_dict"]["w"].add_(5.0)  # training goes on mutating the live tensors
    ckpt["optimizer_states"][0]["state"][0]["exp_avg"].zero_()
    io.wait()
    saved = torch.load(path, weights_only=True)
    assert torch.equal(saved["state_dict"]["w"], torch.ones(64, 64))
    assert torch.equal(saved["optimizer_states"][0]["state"][0]["exp_avg"], torch.ones(64))


def test_at_most_one_write_in_flight_and_same_moment_saves_join_it(tmp_path, monkeypatch):
    release, running, writes = threading.Event(), threading.Event(), []
    real = checkpoint_io.save_torch

    def slow(obj, path):
        running.set()
        release.wait(10)
        writes.append((path.name, obj["global_step"]))
        real(obj, path)

    monkeypatch.setattr(checkpoint_io, "save_torch", slow)
    io = AtomicCheckpointIO()
    io.save_checkpoint(_checkpoint(3, 3.0), tmp_path / "epoch_001.ckpt")
    assert running.wait(10)
    io.save_checkpoint(_checkpoint(3, 3.0), tmp_path / "last.ckpt")  # same moment: joins, returns at once
    assert writes == [] and io._writer.is_alive()
    later = threading.Thread(target=io.save_checkpoint, args=(_checkpoint(4, 4.0), tmp_path / "last.ckpt"))
    later.start()
    later.join(0.3)
    assert later.is_alive()  # a later moment waits for the write in flight
    release.set()
    later.join(10)
    io.teardown()
    assert writes == [("epoch_001.ckpt", 3), ("last.ckpt", 3), ("last.ckpt", 4)]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_001.ckpt", "last.ckpt"]


def test_a_signal_stop_returns_only_once_its_checkpoint_is_on_disk(tmp_path, monkeypatch):
    """save_stop_point (Ctrl-C / SIGTERM) reports a last.ckpt that is complete, not one still being written."""
    release, real = threading.Event(), checkpoint_io.save_torch

    def slow(obj, path):
        release.wait(10)
        real(obj, path)

    monkeypatch.setattr(checkpoint_io, "save_torch", slow)
    for name in ("run_dir", "export_path", "training_metadata", "write_export"):  # the LoRA export is not under test
        monkeypatch.setattr(stopping, name, {"run_dir": lambda trainer: tmp_path,
                                             "export_path": lambda trainer, stem: tmp_path / "lora" / stem / "x.safetensors",
                                             "training_metadata": lambda *args: {},
                                             "write_export": lambda *args: None}[name])
    io = AtomicCheckpointIO()
    (tmp_path / "checkpoints").mkdir()
    trainer = SimpleNamespace(global_step=5, strategy=SimpleNamespace(checkpoint_io=io),
                              save_checkpoint=lambda path, weights_only: io.save_checkpoint(_checkpoint(5, 5.0), path))
    threading.Timer(0.5, release.set).start()
    ckpt, _ = stopping.save_stop_point(trainer, None, "SIGTERM", 1, write_checkpoint=True)
    assert release.is_set()
    assert torch.load(ckpt, weights_only=True)["global_step"] == 5
    assert io._writer is None  # nothing left in flight for the exit to cut


def _xl_shaped_checkpoint(step: int, modules: int = 352, scale: int = 16) -> dict:
    """The seed run's last.ckpt layout scaled down 16x in bytes: per module LoRA A/B (fp32) and AdamW8bit's step,
    state1, state2 (uint8) and absmax1/2 (fp32 per 256-block); 4,224 tensors, ~120 MB."""
    gen = torch.Generator().manual_seed(step)
    state_dict, optimizer = {}, {}
    for i in range(modules):
        for j, name in enumerate(("lora_A", "lora_B")):
            n = 128 * 2560 // scale
            state_dict[f"dit.layers.{i}.{name}.weight"] = torch.randn(n, generator=gen)
            optimizer[2 * i + j] = {"step": torch.tensor(float(step)), "state1": torch.randint(0, 255, (n,), dtype=torch.uint8),
                                    "state2": torch.randint(0, 255, (n,), dtype=torch.uint8),
                                    "absmax1": torch.rand(n // 256), "absmax2": torch.rand(n // 256)}
    return {"epoch": 0, "global_step": step, "loops": {"step": step}, "state_dict": state_dict,
            "optimizer_states": [{"state": optimizer, "param_groups": [{"lr": 1e-4, "params": list(optimizer)}]}]}


def test_each_save_blocks_the_caller_under_a_tenth_of_its_write(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    for step in range(1, 6):
        checkpoint = _xl_shaped_checkpoint(step)
        io.save_checkpoint(checkpoint, path)
        time.sleep(0.25)  # the accumulated micro-batches before the next optimizer step (seed: 4 x ~1 s, scaled 16x)
        io.wait_for_copy()  # the trainer's fence before the optimizer step (its wait counts as blocked)
        while io._writer.is_alive():  # the rest of the 50 steps between saves in the seed run
            time.sleep(0.01)
    io.teardown()
    assert len(io.timings) == 5
    print(io.timings)
    assert all(blocked < 0.1 * written for blocked, written in io.timings), io.timings
    assert torch.load(path, weights_only=True)["global_step"] == 5
