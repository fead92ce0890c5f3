"""Predicted training-step memory: the fake-tensor trace against the same real step on CPU, and its arithmetic."""

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from housevox.acestep.config import AceStepConfig
from housevox.acestep.modules import build_dit
from housevox.errors import run_cli
from housevox.lora import LoRASettings, resolve_targets
from housevox.lora.__main__ import main
from housevox.plan import memory
from housevox.plan.memory import ACTIVATIONS, FROZEN, GRADS, LORA, OPTIMIZER, LiveBytes, RunShape, predict
from housevox.train.quantize import quantize_frozen_base
from housevox.train.synthetic import base_config, with_depth

CPU = dict(dtype=torch.float32, round_to=1)  # what a CPU run holds: the comparison is byte for byte


def real_peak(base: dict, shape: RunShape) -> dict:
    """The same two production steps on real random-init tensors, tracked the same way."""
    module = memory.module_for(base, shape, "random", torch.float32)
    tracker = LiveBytes()
    memory.measure_steps(module, shape, tracker)
    return tracker.peak


def lora_params(base: dict, shape: RunShape) -> int:
    dit = build_dit(AceStepConfig.from_upstream(base), device="meta")
    return resolve_targets(dit, LoRASettings(rank=shape.rank, alpha=shape.rank, target_modules_str=shape.target_modules_str,
                                             attention_type=shape.attention_type)).lora_params


@pytest.mark.parametrize("optimizer", ["adamw8bit", "adamw"])
@pytest.mark.parametrize("checkpointing", [True, False])
def test_tiny_prediction_matches_the_real_cpu_step(optimizer, checkpointing):
    base, shape = base_config("tiny"), RunShape(rank=16, optimizer_type=optimizer, gradient_checkpointing=checkpointing,
                                                frames=200, cond_len=40)
    predicted, real = predict(base, shape, **CPU).peak, real_peak(base, shape)
    assert sum(predicted.values()) == pytest.approx(sum(real.values()), rel=0.05)
    for category in (FROZEN, LORA, OPTIMIZER):  # nothing in these depends on the kernels: exact
        assert predicted[category] == real[category]


@pytest.mark.slow
def test_xl_width_one_layer_prediction_matches_the_real_cpu_step():
    base, shape = base_config("xl", layers=1), RunShape(rank=16, frames=50, cond_len=40)
    predicted, real = predict(base, shape, **CPU).peak, real_peak(base, shape)
    assert sum(predicted.values()) == pytest.approx(sum(real.values()), rel=0.05)
    assert predicted[FROZEN] == real[FROZEN] > 800 * 2**20  # the 1-layer XL DiT in fp32
    assert predicted[OPTIMIZER] == real[OPTIMIZER]


def test_rank_grows_lora_grads_and_adam_state_by_their_bytes_per_parameter():
    base = base_config("tiny")
    low, high = RunShape(rank=8, optimizer_type="adamw"), RunShape(rank=32, optimizer_type="adamw")
    a, b = predict(base, low, **CPU).peak, predict(base, high, **CPU).peak
    extra = lora_params(base, high) - lora_params(base, low)
    assert b[LORA] - a[LORA] == 4 * extra  # fp32 LoRA weights
    assert b[OPTIMIZER] - a[OPTIMIZER] == 8 * extra  # AdamW: two fp32 moments per parameter
    assert b[FROZEN] == a[FROZEN]


def test_adamw8bit_state_is_two_bytes_per_parameter_plus_block_scales():
    base, shape = base_config("tiny"), RunShape(rank=64, optimizer_type="adamw8bit", min_8bit_size=0)
    module = memory.module_for(base, shape, "meta", torch.float32)
    blocks = sum(-(-p.numel() // 256) for p in module.trainable_parameters())
    state = predict(base, shape, **CPU).peak[OPTIMIZER]
    qmaps = 2 * 256 * 4  # the two shared 256-entry lookup tables
    assert state == 2 * lora_params(base, shape) + 2 * 4 * blocks + qmaps


def test_checkpointing_keeps_activations_flat_in_depth_and_without_it_they_grow_per_block_and_per_sample():
    base = base_config("tiny")
    shape = RunShape(rank=4, frames=400, cond_len=40)
    on = [predict(with_depth(base, n), shape, **CPU).peak[ACTIVATIONS] for n in (2, 4)]
    block_input = (shape.frames // 2) * 64 * 4  # tokens x hidden x fp32: all a checkpointed block keeps
    assert on[1] - on[0] in (0, 2 * block_input)
    off = {(n, b): predict(with_depth(base, n), replace(shape, gradient_checkpointing=False, batch_size=b), **CPU).peak[ACTIVATIONS]
           for n in (2, 4, 6) for b in (1, 2)}
    per_block = off[4, 1] - off[2, 1]
    assert per_block > 0 and off[6, 1] - off[4, 1] == pytest.approx(per_block, rel=0.01)
    # every per-sample saved tensor doubles with the batch (the trace shows ~16 % more per block at batch 2 on CPU)
    assert 2 * per_block <= off[4, 2] - off[2, 2] <= 2.5 * per_block
    assert off[2, 1] > on[0]


def test_deep_bases_are_extended_linearly_from_two_shallow_traces():
    base, shape = with_depth(base_config("tiny"), 8), RunShape(rank=8, gradient_checkpointing=False, frames=200, cond_len=40)
    extended = predict(base, shape)
    full = memory._cached_trace.__wrapped__(json.dumps(base, sort_keys=True), shape, torch.bfloat16, memory.CUDA_BLOCK)
    assert any("extended linearly" in m for m in extended.modelled)
    for category in memory.CATEGORIES:
        assert extended.peak[category] == pytest.approx(full[0][category], rel=0.01, abs=4096)
    assert extended.flops == pytest.approx(full[1], rel=1e-6)
    assert extended.ops == pytest.approx(full[2], rel=1e-6)  # the op count grows by the same ops per block


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_quantised_layout_matches_bitsandbytes_storage(mode):
    holder = nn.Module()
    holder.layers = nn.Sequential(nn.Linear(1024, 2560, bias=False), nn.Linear(2560, 768, bias=False))
    quantize_frozen_base(holder, mode)
    tensors = {}
    for layer in holder.layers:
        state = getattr(layer.weight, "quant_state", None)
        parts = [layer.weight, getattr(layer.weight, "SCB", None)]
        if state is not None:
            parts += [state.absmax, state.state2.absmax if state.nested else None]
        tensors.update({t.data_ptr(): t.numel() * t.element_size() for t in parts if t is not None})
    modelled = sum(memory.quantised_bytes(o, i, mode) for o, i in [(2560, 1024), (768, 2560)])
    assert sum(tensors.values()) == pytest.approx(modelled, rel=0.01)
    assert modelled < (2560 * 1024 + 768 * 2560) * 2 * (0.51 if mode == "int8" else 0.27)  # of bf16


def test_quantisation_changes_only_the_frozen_weights_and_one_dequantised_weight():
    base, shape = base_config("tiny"), RunShape(rank=8)
    plain, nf4 = predict(base, shape), predict(base, replace(shape, quantize_base="nf4"))
    assert nf4.peak[FROZEN] < plain.peak[FROZEN]
    assert nf4.peak[LORA] == plain.peak[LORA] and nf4.peak[GRADS] == plain.peak[GRADS]
    assert nf4.peak[ACTIVATIONS] - plain.peak[ACTIVATIONS] == 128 * 64 * 2  # tiny's largest block Linear in bf16
    assert any("nf4 frozen weights" in m for m in nf4.modelled)
    assert plain.load_bytes == plain.peak[FROZEN] and nf4.load_bytes == nf4.peak[FROZEN] + 128 * 64 * 2
    assert "while loading the base" in "\n".join(memory.describe(nf4))


def test_step_time_follows_the_counted_flops():
    base = base_config("tiny")
    on, off = (predict(base, RunShape(rank=8, gradient_checkpointing=c)) for c in (True, False))
    assert on.flops > off.flops > 0  # recompute
    assert off.step_seconds(100.0, 0.5) == pytest.approx(off.flops / 50e12)


def test_step_time_has_a_host_term_with_both_bounds():
    base = base_config("tiny")
    on, off = (predict(base, RunShape(rank=8, gradient_checkpointing=c)) for c in (True, False))
    assert on.ops > off.ops > 1000  # recompute issues the forward's ops again
    assert off.host_seconds == pytest.approx(off.ops * memory.HOST_SECONDS_PER_OP)
    line = next(line for line in memory.describe(off, "h100") if "host term" in line)
    gpu = off.step_seconds(memory.GPUS["h100"][1])
    assert f"{max(gpu, off.host_seconds):.3f}-{gpu + off.host_seconds:.3f} s on h100" in line


def cli(argv, capsys):
    code = run_cli(main, argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_lint_names_the_cheapest_change_that_fits(tmp_path, tiny_checkpoint, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  checkpoint_dir: {tiny_checkpoint}\n  rank: 8\n  alpha: 8\n  cfg_ratio: 0.15\n")
    base = json.loads((tiny_checkpoint / "config.json").read_text())
    plain, int8 = predict(base, RunShape(rank=8)), predict(base, RunShape(rank=8, quantize_base="int8"))
    budget = (plain.on_card_gib + int8.on_card_gib) / 2
    code, out, err = cli(["lint", "--config", str(config), "--gpu-memory", f"{budget:.6f}", "--gpu", "rtx3090"], capsys)
    assert code == 0, err
    assert f"= {plain.on_card_gib:.2f} GiB on the card" in out
    assert "frozen weights" in out and "optimizer state" in out and "s on rtx3090" in out
    assert "cheapest change that fits: quantize_base: int8" in out
    _, roomy, _ = cli(["lint", "--config", str(config), "--gpu-memory", "24"], capsys)
    assert "exceeds" not in roomy and "0 warnings" in roomy


def test_lint_rejects_a_bad_budget_and_a_bad_quantize_mode(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  quantize_base: int4\n")
    with pytest.raises(SystemExit) as bad_budget:
        main(["lint", "--config", str(config), "--gpu-memory", "lots"])
    assert bad_budget.value.code == 2 and "--gpu-memory" in capsys.readouterr().err
    code, _, err = cli(["lint", "--config", str(config), "--preset", "2b"], capsys)
    assert code != 0 and "quantize_base" in err and "Traceback" not in err


def test_auto_batch_size_takes_the_largest_divisor_of_the_effective_batch_that_fits():
    base, shape = base_config("tiny"), RunShape(rank=8, gradient_checkpointing=False)
    on_card = {b: predict(base, replace(shape, batch_size=b)).on_card_gib for b in (1, 2, 4)}
    assert on_card[1] < on_card[2] < on_card[4]
    between = (on_card[2] + on_card[4]) / 2
    assert memory.auto_batch_size(base, shape, on_card[4] + 1, 4)[0] == 4
    b, why = memory.auto_batch_size(base, shape, between, 4)
    assert b == 2 and "2 x accumulate_grad_batches 2 (effective batch 4 kept)" in why and "batch 4" in why
    assert memory.auto_batch_size(base, shape, between, 6)[0] == 2, "6 and 3 are over the budget, 2 fits"
    assert memory.auto_batch_size(base, shape, on_card[1] / 2, 4)[0] == 1, "nothing fits: 1, and the lint says why"


def test_lint_reads_fit_overrides_and_predicts_each_variant(tmp_path, tiny_checkpoint, capsys):
    """What you lint is what you run: fit's own overrides change the plan the lint prints."""
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  checkpoint_dir: {tiny_checkpoint}\n  rank: 8\n  alpha: 8\n  cfg_ratio: 0.15\n"
                      "  gradient_checkpointing: true\n")
    base = json.loads((tiny_checkpoint / "config.json").read_text())
    runs = {"": RunShape(rank=8), "--model.quantize_base nf4": RunShape(rank=8, quantize_base="nf4"),
            "--model.gradient_checkpointing false": RunShape(rank=8, gradient_checkpointing=False),
            "--model.rank=4 --model.alpha=4": RunShape(rank=4)}
    for overrides, shape in runs.items():
        code, out, err = cli(["lint", "--config", str(config), *overrides.split()], capsys)
        assert code == 0, err
        assert f"predicted peak GPU memory ({shape.describe()})" in out
        assert f"= {predict(base, shape).on_card_gib:.2f} GiB on the card" in out
    assert predict(base, runs["--model.quantize_base nf4"]).allocated != predict(base, runs[""]).allocated


def test_lint_override_errors_are_fits_one_line_errors(tmp_path, tiny_checkpoint, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  checkpoint_dir: {tiny_checkpoint}\n")
    code, _, err = cli(["lint", "--config", str(config), "--model.no_such_field", "1"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "unrecognized arguments: --model.no_such_field" in err
    code, _, err = cli(["lint", "--config", str(config), "--model.rank", "banana"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "model.rank" in err and "banana" in err
    code, _, err = cli(["lint", "--config", str(config), "--model.quantize_base", "int4"], capsys)
    assert code == 2 and "quantize_base" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as extra:
        main(["inspect", str(config), "--model.rank", "4"])
    assert extra.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_lint_states_the_compile_cost_and_plans_batch_size_auto_as_one(tmp_path, tiny_checkpoint, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  checkpoint_dir: {tiny_checkpoint}\n  rank: 8\n  alpha: 8\n  cfg_ratio: 0.15\n"
                      "data:\n  batch_size: auto\n")
    code, out, err = cli(["lint", "--config", str(config), "--model.compile", "true"], capsys)
    assert code == 0, err
    assert "compile true: the first steps of every fit process" in out and "one-time cost" in out
    assert f"predicted peak GPU memory ({RunShape(rank=8).describe()})" in out, "auto is planned at batch 1"
    code, out, _ = cli(["lint", "--config", str(config)], capsys)
    assert code == 0 and "compile true" not in out


def test_ddp_ranks_add_the_gradient_buckets_a_single_process_frees():
    base = base_config("tiny")
    off = predict(base, RunShape(rank=8, gradient_checkpointing=False))
    assert off.peak[GRADS] == 0 < off.peak[LORA]  # its peak comes after zero_grad: a single process holds no gradients
    assert memory.ddp_rank_extra(off) == off.peak[LORA]  # DDP's buckets (the gradients' storage) stay allocated
    assert memory.ddp_rank_extra(off, bucket_view=False) == off.peak[LORA]
    on = predict(base, RunShape(rank=8, gradient_checkpointing=True))
    assert memory.ddp_rank_extra(on) == on.peak[LORA] - on.peak[GRADS]
    assert memory.ddp_rank_extra(on, bucket_view=False) == on.peak[LORA]  # without the view: a second copy
    assert memory.on_card_gib(off, 1) == off.on_card_gib
    assert memory.on_card_gib(off, 4) == pytest.approx(off.on_card_gib + off.peak[LORA] / 2**30)
    assert not any("per DDP rank" in line for line in memory.describe(off))
    line = next(line for line in memory.describe(off, ranks=4) if "per DDP rank" in line)
    assert f"= {memory.on_card_gib(off, 4):.2f} GiB on each card" in line
    budget = off.on_card_gib + off.peak[LORA] / 2 / 2**30  # fits one process, not a DDP rank
    shape = RunShape(rank=8, gradient_checkpointing=False)
    assert memory.memory_lint(base, shape, budget)[1] == []
    assert "exceeds" in memory.memory_lint(base, shape, budget, ranks=2)[1][0]


def test_render_peak_adds_encoders_vae_and_the_larger_of_sampler_and_decode_to_the_resident_state(tiny_checkpoint):
    base = json.loads((tiny_checkpoint / "config.json").read_text())
    p = predict(base, RunShape(rank=8))
    short, wide, long = (memory.render_peak(base, p, takes, frames, tiny_checkpoint)
                         for takes, frames in ((1, 50), (4, 50), (1, 300)))
    assert short.resident == p.peak[FROZEN] + p.peak[LORA] + p.peak[OPTIMIZER], "gradients are freed before a render"
    assert short.allocated > short.resident + short.encoders + short.vae > short.resident
    assert wide.sampler > short.sampler, "CFG batch 2 x takes"
    assert long.sampler > short.sampler and long.decode > short.decode and long.allocated > short.allocated
    assert str(tiny_checkpoint) in "; ".join(short.sources), "encoders and VAE read from the checkpoint's files"
    config_only = memory.render_peak(base, p, 1, 50)
    assert "published config" in "; ".join(config_only.sources) and config_only.encoders > short.encoders


def test_lint_prints_the_xl_render_peaks_and_warns_when_a_configured_preview_does_not_fit(tmp_path, capsys):
    code, out, err = cli(["lint", "--config", "configs/house_vocal_beast_v2.yaml", "--preset", "xl"], capsys)
    assert code == 0, err
    training = float(out.split(" GiB on the card")[0].rsplit("= ", 1)[1])
    renders = [line for line in out.splitlines() if "render peak (" in line]
    assert len(renders) == 2 and "preview: 1 take(s) x 10 s, not configured" in renders[0]
    assert all(float(line.split(" GiB on the card")[0].rsplit("= ", 1)[1]) > training for line in renders)
    between = (training + float(renders[0].split(" GiB on the card")[0].rsplit("= ", 1)[1])) / 2
    _, quiet, _ = cli(["lint", "--config", "configs/house_vocal_beast_v2.yaml", "--preset", "xl", "--gpu-memory",
                       f"{between:.2f}"], capsys)
    assert "preview render" not in quiet, "no preview configured: no warning"
    _, loud, _ = cli(["lint", "--config", "configs/house_vocal_beast_v2.yaml", "--preset", "xl", "--gpu-memory",
                      f"{between:.2f}", "--model.sample_every_n_epochs", "1"], capsys)
    assert "warning: preview render: predicted" in loud and "sample_every_n_epochs: 0" in loud
