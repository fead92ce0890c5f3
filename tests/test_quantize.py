"""Low-memory mode on the tiny DiT (CPU): bitsandbytes int8/NF4 base under a trainable LoRA."""

import copy
import importlib.util
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch

from housevox.acestep import AceStepConfig
from housevox.acestep.modules import build_dit
from housevox.acestep.presets import PRESETS
from housevox.errors import HousevoxError
from housevox.lora import LoRASettings, apply_lora
from housevox.plan.memory import measure_load
from housevox.train.quantize import quantize_frozen_base

BNB_LAYER = {"int8": bnb.nn.Linear8bitLt, "nf4": bnb.nn.Linear4bit}
TOLERANCE = {"int8": 0.02, "nf4": 0.1}  # relative L2 error of the DiT output against the fp32 base


@pytest.fixture(scope="module")
def tiny():
    """(fp32 tiny DiT, inputs, its output) — shared, deep-copied by each test."""
    cfg = AceStepConfig.from_upstream(PRESETS["tiny"])
    torch.manual_seed(0)
    dit = build_dit(cfg, device="cpu").eval()
    gen = torch.Generator().manual_seed(1)
    t = torch.tensor([0.5])
    inputs = (torch.randn(1, 40, cfg.audio_acoustic_hidden_dim, generator=gen), t, t,
              torch.randn(1, 12, cfg.encoder_hidden_size, generator=gen),
              torch.randn(1, 40, cfg.in_channels - cfg.audio_acoustic_hidden_dim, generator=gen))
    with torch.no_grad():
        return dit, inputs, dit(*inputs)


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_quantized_base_trains_lora_and_stays_close(tiny, mode):
    base, inputs, reference = tiny
    dit = copy.deepcopy(base)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in dit.layers.modules())
    assert quantize_frozen_base(dit, mode) == n_linear
    plan = apply_lora(dit, LoRASettings(rank=4, alpha=4))
    adapted = [dit.get_submodule(p) for p in plan.module_paths]
    assert all(isinstance(m.base_layer, BNB_LAYER[mode]) for m in adapted)  # PEFT's bnb-aware LoRA layers
    dit.train()
    out = dit(*inputs)
    assert (out - reference).norm() / reference.norm() < TOLERANCE[mode]
    out.pow(2).mean().backward()
    named = dict(dit.named_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in named.items() if ".lora_B." in n)
    assert all(not p.requires_grad and p.grad is None for n, p in named.items() if ".lora_" not in n)


def test_none_is_a_no_op_and_bad_modes_fail(tiny):
    dit = copy.deepcopy(tiny[0])
    assert quantize_frozen_base(dit, "none") == 0
    assert all(type(m) is torch.nn.Linear for m in dit.layers.modules() if isinstance(m, torch.nn.Linear))
    with pytest.raises(HousevoxError, match="quantize_base"):
        quantize_frozen_base(dit, "int4")
    with pytest.raises(HousevoxError, match="meta"):
        quantize_frozen_base(build_dit(AceStepConfig.from_upstream(PRESETS["tiny"])), "int8")


def test_module_with_quantized_base_takes_a_step():
    """HouseVoxLoRA(quantize_base=nf4) through the benchmark's random-init subclass: configure, loss, backward."""
    spec = importlib.util.spec_from_file_location("train_step", Path(__file__).parents[1] / "benchmarks" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    module = bench.RandomInitLoRA(bench.base_config("tiny"), rank=4, alpha=4, seed=0, quantize_base="nf4")
    module.configure_model()
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in module.dit.modules())
    batch = {k: v[None, :40] for k, v in bench.SyntheticSegments(module.config, 1, 40, 12).sample.items()}
    loss = module.flow_loss(batch, torch.tensor([0.5]), torch.randn(1, 40, module.config.audio_acoustic_hidden_dim))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in module.trainable_parameters())


@pytest.fixture(scope="module")
def bf16_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with bf16 shards, as real checkpoints ship (an fp32 file adds an fp32 host read buffer of the
    one tensor being read, which LiveBytes counts on the CPU but a GPU never holds)."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("bf16") / tiny_checkpoint.name
    shutil.copytree(tiny_checkpoint, folder)
    for shard in folder.glob("model*.safetensors"):
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(shard).items()},
                  str(shard), metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_quantise_while_loading_peaks_at_the_quantised_model_plus_one_layer(bf16_checkpoint, mode):
    peak, final, dit = measure_load(bf16_checkpoint, mode, while_loading=True)
    old_peak, old_final, old = measure_load(bf16_checkpoint, mode, while_loading=False)
    layer = max(m.in_features * m.out_features * 2 for m in dit.layers.modules() if isinstance(m, BNB_LAYER[mode]))
    assert peak <= 1.05 * final + layer
    assert old_peak > 1.05 * old_final + layer  # loading the whole bf16 base first breaks the promise
    assert final == old_final
    mine, theirs = dit.state_dict(), old.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)  # the same bytes
    assert dit.is_loaded_in_8bit == (mode == "int8") and dit.is_loaded_in_4bit == (mode == "nf4")


def test_int8_quantised_by_rows_is_the_one_call_result():
    weight = torch.randn(1100, 96, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    from housevox.train.quantize import _int8_by_rows

    cb, scb, _ = bnb.functional.int8_vectorwise_quant(weight.to(torch.float16))
    mine = _int8_by_rows(weight)
    assert torch.equal(mine[0], cb) and torch.equal(mine[1], scb)
