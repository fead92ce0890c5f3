"""The same LoRA at any batch split: per-sample draws and a per-sample loss make b × k only a summation order."""

import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import ROOT, run_fit, step_losses

EPOCHS = 3


def demo_config(path: Path, checkpoint: Path, segments: Path, batch_size: int, accumulate: int) -> Path:
    """configs/demo.yaml on the test fixtures, with LoRA dropout on (the demo has none) so its draws are checked too."""
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["model"].update(checkpoint_dir=str(checkpoint), dropout=0.1, sample_every_n_epochs=0, checkpoint_every_n_steps=1)
    config["data"].update(segments_dir=str(segments), batch_size=batch_size, val_fraction=0.0)
    config["trainer"].update(max_epochs=EPOCHS, accumulate_grad_batches=accumulate, enable_progress_bar=False)
    path.write_text(yaml.safe_dump(config))
    return path


def lora_of(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / f"lora/epoch_{EPOCHS:03d}/adapter/adapter_model.safetensors")


def entry_differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    """|a − b| of every entry of every tensor, over the LoRA's scale (max |b| over all tensors)."""
    assert a.keys() == b.keys()
    scale = max(b[k].abs().max().item() for k in b)
    return torch.cat([(a[k] - b[k]).abs().flatten() for k in b]) / scale


@pytest.fixture(scope="module")
def splits(tmp_path_factory, tiny_checkpoint, tiny_segments):
    runs = {}
    for b, k in ((1, 4), (4, 1), (2, 2)):
        root = tmp_path_factory.mktemp(f"split{b}x{k}")
        result = run_fit(demo_config(root / "cfg.yaml", tiny_checkpoint, tiny_segments, b, k), root)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[b, k] = root / "lightning_logs" / "demo"
    return runs


def test_one_by_four_four_by_one_and_two_by_two_train_the_same_lora(splits):
    """Same LoRA up to float summation order: losses and gradient norms agree to 1e-5, and so does every entry of
    the LoRA but a rare few. Adam divides by √v + ε, so an entry whose gradient is ~0 turns float-order noise into
    an update of up to ~lr·1e-2 (measured: 1 entry of 47,104 at 4.8e-4 of the LoRA's scale, the rest within 1e-5,
    most identical); a wrong sample weighting or draw moves every entry by far more."""
    reference = lora_of(splits[1, 4])
    assert max(t.abs().max().item() for k, t in reference.items() if "lora_B" in k) > 0, "the LoRA never trained"
    for split in ((4, 1), (2, 2)):
        diff = entry_differences(lora_of(splits[split]), reference)
        assert (diff > 1e-5).sum().item() <= diff.numel() // 10_000 and diff.max().item() <= 2e-3, split
    curves = {split: {tag: series(run, tag) for tag in ("train/loss_step", "train/grad_norm")}
              for split, run in splits.items()}
    for split in ((4, 1), (2, 2)):
        for tag, values in curves[split].items():
            ref = curves[1, 4][tag]
            assert len(values) == len(ref) == 2 * EPOCHS
            assert max(abs(a - b) / abs(b) for a, b in zip(values, ref)) <= 1e-5, (split, tag)


def series(run: Path, tag: str) -> list[float]:
    acc = EventAccumulator(str(run))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_sigkill_mid_epoch_at_four_by_one_resumes_bitwise(tmp_path, splits, tiny_checkpoint, tiny_segments):
    """6 segments at 4 × 1 are 2 steps an epoch: killed after step 4, last.ckpt is step 3, mid-epoch 2."""
    config = demo_config(tmp_path / "cfg.yaml", tiny_checkpoint, tiny_segments, 4, 1)
    run = tmp_path / "lightning_logs" / "demo"
    killed = run_fit(config, tmp_path, "--trainer.callbacks+=kill_at_step.KillAtStep", kill_at_step=4)
    assert killed.returncode == -signal.SIGKILL
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["epoch"] == 1
    resumed = run_fit(config, tmp_path, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ours, reference = lora_of(run), lora_of(splits[4, 1])
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    assert step_losses(run) == step_losses(splits[4, 1])


@pytest.mark.parametrize("adapter", [{"dropout": 0.1}, {"adapter_type": "dora"}])
def test_padded_batch_loss_is_the_mean_of_the_single_losses(tiny_checkpoint, adapter):
    """4 segments of different L in one padded micro-batch: each sample's loss = that segment alone (same draws)."""
    from housevox.acestep.loading import locate_checkpoint
    from housevox.data.datamodule import collate
    from housevox.train.module import HouseVoxLoRA
    from housevox.train.synthetic import synthetic_sample

    module = HouseVoxLoRA(str(tiny_checkpoint), rank=4, alpha=8, seed=15, cfg_ratio=0.5, gradient_checkpointing=False,
                          **adapter)
    module.configure_model()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:  # a trained-looking LoRA, so the adapter path matters
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    cfg = locate_checkpoint(str(tiny_checkpoint)).config
    items = [{**synthetic_sample(cfg, 40, length, seed=i), "index": 10 + i} for i, length in enumerate((7, 19, 3, 12))]
    batch = collate(items)
    assert batch["padded"]
    with torch.no_grad():
        draws = module.sample_draws(batch["index"].tolist(), 40, cfg.audio_acoustic_hidden_dim)
        assert draws["drop"] is not None and not draws["drop"].all(), "cfg_ratio 0.5 should drop some rows, not all"
        together = module.training_step(dict(batch), 0)["loss"]
        alone = [module.training_step(collate([item]), 0)["loss"] for item in items]
    assert abs(together.item() - torch.stack(alone).mean().item()) <= 1e-5 * abs(together.item())


@pytest.mark.slow
@pytest.mark.parametrize("adapter", [{}, {"adapter_type": "lokr", "rank": 4, "alpha": 4}, {"adapter_type": "dora"}])
def test_compiled_blocks_train_the_same_losses(tiny_checkpoint, adapter):
    """model.compile on vs off (with gradient checkpointing and padded batches): the same losses within 1e-4."""
    from housevox.acestep.loading import locate_checkpoint
    from housevox.data.datamodule import collate
    from housevox.train.module import HouseVoxLoRA
    from housevox.train.synthetic import synthetic_sample

    cfg = locate_checkpoint(str(tiny_checkpoint)).config
    batches = [collate([{**synthetic_sample(cfg, 40, length, seed=s + i), "index": s + i} for i, length in enumerate(lens)])
               for s, lens in ((0, (7, 12)), (2, (9, 9)), (4, (5, 11)))]
    losses = {}
    for compiled in (False, True):
        module = HouseVoxLoRA(str(tiny_checkpoint), **{"rank": 4, "alpha": 8, **adapter}, seed=3, cfg_ratio=0.3,
                              learning_rate=1e-4, warmup_steps=0, optimizer_type="adamw", compile=compiled)
        module.configure_model()
        assert all((block._compiled_call_impl is not None) == compiled for block in module.dit.layers)
        optimizer = module.configure_optimizers()
        optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
        losses[compiled] = []
        for step, batch in enumerate(batches * 2):
            loss = module.training_step(dict(batch), step)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[compiled].append(loss.item())
    assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(losses[True], losses[False])), losses
    assert losses[False][3] != losses[False][0], "the LoRA should have moved between the two visits of batch 0"


def test_batch_size_auto_stays_one_on_cpu_and_says_so(tmp_path, tiny_checkpoint, tiny_segments):
    config = demo_config(tmp_path / "cfg.yaml", tiny_checkpoint, tiny_segments, 1, 4)
    result = run_fit(config, tmp_path, "--data.batch_size", "auto", "--trainer.max_epochs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch_size auto: 1 x accumulate_grad_batches 4 (not on a GPU)" in result.stderr
    assert torch.load(tmp_path / "lightning_logs/demo/checkpoints/last.ckpt", weights_only=True)["global_step"] == 2


def test_draws_belong_to_the_sample_not_to_its_batch_or_rank(tiny_checkpoint):
    """What makes any split (and any DDP rank) exact: a sample's draws depend on (run seed, epoch, index) alone."""
    from housevox.data import SeededBatchSampler
    from housevox.train.module import HouseVoxLoRA

    module = HouseVoxLoRA(str(tiny_checkpoint), rank=4, alpha=4, seed=5, cfg_ratio=0.5)
    both, alone = module.sample_draws([3, 8], 20, 4), module.sample_draws([8], 20, 4)
    assert torch.equal(both["noise"][1], alone["noise"][0]) and torch.equal(both["t"][1:], alone["t"])
    assert both["sample_seeds"][1] == alone["sample_seeds"][0] != both["sample_seeds"][0]
    assert not torch.equal(both["noise"][0], both["noise"][1]) and both["t"][0] != both["t"][1]
    ranks = [SeededBatchSampler([(750, 6)] * 8, 2, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    indices = [sum(list(sampler), []) for sampler in ranks]
    assert not set(indices[0]) & set(indices[1]), "2 gloo ranks train different samples, so they draw different noise"
