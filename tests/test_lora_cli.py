"""`python -m housevox.lora inspect|lint|convert`, and the lint rules behind it."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from housevox.acestep.config import AceStepConfig
from housevox.acestep.modules import build_dit
from housevox.acestep.presets import PRESETS
from housevox.errors import run_cli
from housevox.lora import LoRASettings, LoRAWeights, read_lora, resolve_targets, write_comfyui_file
from housevox.lora.__main__ import main
from housevox.lora.formats import LoRAFile
from housevox.plan.lint import lint_run
from housevox.lora.inspect import describe
from housevox.lora.targets import to_original_path

SEED_TARGETS = "q_proj k_proj v_proj o_proj w1 w2 c_proj gate_proj up_proj down_proj"
SEED_V1 = {  # the seed document's failed run, field for field
    "name": "house_xl_failed_attempt_v1", "description": "FAILED RUN", "adapter_type": "lora",
    "rank": 128, "alpha": 6, "dropout": 0.0, "target_modules_str": SEED_TARGETS, "attention_type": "both",
    "bias": "none", "learning_rate": 5e-05, "batch_size": 1, "gradient_accumulation": 4, "epochs": 100,
    "warmup_steps": 100, "weight_decay": 0.01, "max_grad_norm": 1.0, "seed": -1, "shift": 1.0,
    "num_inference_steps": 50, "optimizer_type": "adamw8bit", "scheduler_type": "cosine_restarts",
    "cfg_ratio": 0.0, "save_every": 5, "log_every": 10, "log_heavy_every": 25, "gradient_checkpointing": True,
    "offload_encoder": False, "sample_every_n_epochs": 0,
}


@pytest.fixture(scope="module")
def xl_plan():
    dit = build_dit(AceStepConfig.from_upstream(PRESETS["xl"]), device="meta")
    return dit, resolve_targets(dit, LoRASettings(rank=128, alpha=128, target_modules_str=SEED_TARGETS))


def xl_shapes(dit, paths, rank):
    mods = dict(dit.named_modules())
    return {to_original_path(p): {"A": (rank, mods[p].in_features), "B": (mods[p].out_features, rank)} for p in paths}


def cli(argv, capsys):
    code = run_cli(main, argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_describe_xl_rank_128_explains_the_size(xl_plan, tmp_path):
    dit, plan = xl_plan
    shapes = xl_shapes(dit, plan.module_paths, 128)
    lf = LoRAFile(tmp_path / "x.safetensors", "peft", "lora", {}, {}, shapes, {"BF16": 704}, {"BF16": 318_767_104},
                  {m: 128.0 for m in shapes}, {m: 128 for m in shapes}, "adapter_config.json")
    text = "\n".join(describe(lf))
    assert "modules: 352 (self 128 / cross 128 / mlp 96), layers 0..31" in text
    assert "parameters: 318,767,104" in text
    assert "self_attn.q_proj: 128*(2560+4096) = 851,968 x 32" in text
    assert "318,767,104 params x 2 bytes = 637,534,208 bytes (637.5 MB)" in text and "fp32 1275.1 MB" in text
    assert "never changes the file size" in text


def test_inspect_real_xl_file_from_header(xl_plan, tmp_path, capsys):
    dit, plan = xl_plan
    shapes = xl_shapes(dit, plan.module_paths, 1)  # rank 1 keeps the file at 5 MB
    weights = LoRAWeights({m: (torch.zeros(s["A"]), torch.zeros(s["B"])) for m, s in shapes.items()},
                          {m: 6.0 for m in shapes}, {"base_model": "acestep-v15-xl-base"})
    write_comfyui_file(tmp_path / "xl.safetensors", weights)
    code, out, _ = cli(["inspect", str(tmp_path / "xl.safetensors")], capsys)
    assert code == 0
    assert "ComfyUI" in out and "modules: 352" in out and "parameters: 2,490,368" in out
    assert "rank: 1  alpha: 6 (.alpha tensors)  scale alpha/r: 6" in out
    assert "BF16 (704 tensors)" in out and "base_model: acestep-v15-xl-base" in out


@pytest.mark.parametrize("fmt", ["peft", "diffusers", "comfyui"])
def test_convert_round_trip_through_cli(tmp_path, capsys, fmt):
    torch.manual_seed(0)
    mods = {"layers.0.self_attn.q_proj": (torch.randn(2, 8), torch.randn(8, 2)),
            "layers.1.mlp.down_proj": (torch.randn(2, 16), torch.randn(8, 2))}
    src = LoRAWeights(mods, {"layers.0.self_attn.q_proj": 2.0, "layers.1.mlp.down_proj": 4.0}, {"epoch": "5"})
    write_comfyui_file(tmp_path / "src.safetensors", src, dtype=torch.float32)
    dst = tmp_path / ("out" if fmt == "peft" else "out.safetensors")
    code, out, _ = cli(["convert", str(tmp_path / "src.safetensors"), "--to", fmt, "--out", str(dst)], capsys)
    assert code == 0 and "float32" in out
    back = read_lora(dst)
    assert back.alpha == src.alpha and back.metadata == src.metadata
    assert all(torch.equal(back.modules[m][i], src.modules[m][i]) for m in mods for i in (0, 1))
    code, _, _ = cli(["convert", str(dst), "--to", "comfyui", "--out", str(tmp_path / "b.safetensors"),
                      "--lora-dtype", "bf16"], capsys)
    assert code == 0 and read_lora(tmp_path / "b.safetensors").modules["layers.1.mlp.down_proj"][0].dtype == torch.bfloat16


def test_lint_seed_v1_json_catches_the_v1_mistakes(tmp_path, capsys):
    (tmp_path / "v1.json").write_text(json.dumps(SEED_V1))
    code, out, _ = cli(["lint", "--config", str(tmp_path / "v1.json")], capsys)
    assert code == 0
    assert "assuming ACE-Step v1.5 XL base" in out
    assert "scale alpha/r = 6/128 = 0.047" in out and "~21x weaker than with alpha = rank (128)" in out
    assert "target names w1, w2, c_proj match no module" in out
    assert "cfg_ratio 0 on a base model" in out
    assert "352 modules adapted" in out and "318,767,104" in out and "637.5 MB in bfloat16" in out
    assert "alpha never changes it" in out and "total optimizer steps: unknown" in out


def test_lint_seed_v2_has_no_alpha_warning(tmp_path, capsys):
    (tmp_path / "v2.json").write_text(json.dumps({**SEED_V1, "alpha": 128}))
    _, out, _ = cli(["lint", "--config", str(tmp_path / "v2.json")], capsys)
    assert "weaker" not in out and "3 warnings" not in out and "2 warnings" in out


def test_lint_yaml_reads_checkpoint_config_and_manifest(tmp_path, capsys, monkeypatch):
    ckpt, segments = tmp_path / "ckpt", tmp_path / "segments"
    ckpt.mkdir()
    segments.mkdir()
    (ckpt / "config.json").write_text(json.dumps({**PRESETS["tiny"], "is_turbo": True, "model_version": "turbo"}))
    (segments / "manifest.jsonl").write_text("{}\n" * 10)
    (tmp_path / "run.yaml").write_text(
        "model:\n  rank: 8\n  alpha: 16\n  target_modules_str: q_proj up_proj\n  attention_type: self\n"
        "  cfg_ratio: 0.0\n  warmup_steps: 100\n  checkpoint_dir: ckpt\n"
        "trainer:\n  max_epochs: 30\n  accumulate_grad_batches: 4\n"
        "data:\n  batch_size: 1\n  segments_dir: segments\n"
    )
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(["lint", "--config", "run.yaml"], capsys)
    assert code == 0
    assert "model: custom-64-turbo from ckpt/config.json" in out
    assert "total optimizer steps: 90" in out  # ceil(10 / 1 / 4) = 3 per epoch x 30
    assert "warmup_steps 100 >= the run's 90 optimizer steps" in out
    assert "cfg_ratio" not in out  # turbo: CFG is distilled away
    assert "4 modules adapted (self 2 / cross 0 / mlp 2)" in out


@pytest.mark.parametrize(
    ("total", "num_cycles", "cycle_steps", "late"),
    [(5800, 4, None, False), (5800, 1, None, False), (1000, 4, 290, True), (1000, 4, 225, False)],
)
def test_lint_flags_a_restart_in_the_last_tenth(total, num_cycles, cycle_steps, late):
    warnings = lint_run(LoRASettings(), cfg_ratio=0.15, model_version="base", warmup_steps=100, total_steps=total,
                        num_cycles=num_cycles, cycle_steps=cycle_steps, plan=None)
    assert any("last cosine restart" in w for w in warnings) == late


def test_lint_alpha_far_above_rank_and_unknown_names_without_plan():
    warnings = lint_run(LoRASettings(rank=4, alpha=64, target_modules_str="q_proj w1"), cfg_ratio=0.1,
                        model_version="base", warmup_steps=0, total_steps=None, num_cycles=4, cycle_steps=None, plan=None)
    assert any("~16x stronger" in w for w in warnings) and any("w1 match no module" in w for w in warnings)


def test_lint_unreadable_or_invalid_config_is_one_line_exit_2(tmp_path, capsys):
    code, out, err = cli(["lint", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and err.startswith("error:") and "nope.yaml" in err and len(err.splitlines()) == 1
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    assert cli(["lint", "--config", str(tmp_path / "bad.yaml")], capsys)[0] == 2
    (tmp_path / "rank.json").write_text(json.dumps({**SEED_V1, "rank": 0}))
    code, _, err = cli(["lint", "--config", str(tmp_path / "rank.json")], capsys)
    assert code == 2 and "rank: must be a positive integer" in err


def test_module_entry_point_prints_one_line_for_a_foreign_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"lora_unet_mid_block.lora_up.weight": torch.zeros(2, 2)}, tmp_path / "sdxl.safetensors")
    proc = subprocess.run([sys.executable, "-m", "housevox.lora", "inspect", str(tmp_path / "sdxl.safetensors")],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: " in proc.stderr and "sdxl.safetensors" in proc.stderr and "lora_unet_mid_block" in proc.stderr


def test_lint_lokr_seed_json_warns_where_comfyui_would_ignore_alpha(tmp_path, capsys):
    (tmp_path / "lokr.json").write_text(json.dumps({**SEED_V1, "adapter_type": "lokr", "alpha": 64}))
    code, out, _ = cli(["lint", "--config", str(tmp_path / "lokr.json")], capsys)
    assert code == 0 and "adapter: LoKr, scale alpha/r = 64/128 = 0.500" in out
    assert "352 of 352 modules keep both Kronecker factors full" in out and "ComfyUI and LyCORIS ignore alpha" in out
    assert "adapter parameters = sum of the Kronecker factors' sizes" in out
    (tmp_path / "lokr_r.json").write_text(json.dumps({**SEED_V1, "adapter_type": "lokr", "alpha": 128}))
    _, out, _ = cli(["lint", "--config", str(tmp_path / "lokr_r.json")], capsys)
    assert "Kronecker factors full" not in out


@pytest.mark.parametrize("adapter_type, quantize_base, expected", [
    ("lokr", "nf4", "fails at the first step"),
    ("dora", "int8", "dequantises every adapted weight"),
    ("dora", "none", None),
])
def test_lint_lokr_and_dora_on_quantised_bases(adapter_type, quantize_base, expected):
    warnings = lint_run(LoRASettings(adapter_type=adapter_type, rank=8, alpha=8), cfg_ratio=0.1, model_version="base",
                        warmup_steps=0, total_steps=None, num_cycles=4, cycle_steps=None, plan=None,
                        quantize_base=quantize_base)
    assert any(expected in w for w in warnings) if expected else not warnings


def _trained_tiny(settings: LoRASettings):
    from housevox.lora import apply_lora, extract_lora

    torch.manual_seed(0)
    dit = build_dit(AceStepConfig.from_upstream(PRESETS["tiny"]), device="cpu").requires_grad_(False)
    apply_lora(dit, settings)
    with torch.no_grad():
        for p in dit.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape) * 0.1)
    return extract_lora(dit)


def test_inspect_and_convert_a_lokr(tmp_path, capsys):
    from housevox.lora import write_peft_folder

    weights = _trained_tiny(LoRASettings(adapter_type="lokr", rank=4, alpha=6))
    write_peft_folder(tmp_path / "peft", weights)
    code, out, _ = cli(["inspect", str(tmp_path / "peft")], capsys)
    assert code == 0 and "adapter: LoKr" in out and "PEFT adapter" in out
    assert "self_attn.q_proj: w1 8x8 + w2 8x8 = 128 x 2 = 256" in out
    assert "mlp.up_proj: w1 8x8 + w2 16x4+4x8 (rank 4) = 160 x 2 = 320" in out  # 64 + 64 + 32
    assert "16 of 22 modules have both factors full" in out
    params = sum(t.numel() for parts in weights.modules.values() for t in parts.values())
    assert f"parameters: {params:,} " in out
    code, out, _ = cli(["convert", str(tmp_path / "peft"), "--to", "comfyui", "--out", str(tmp_path / "c.safetensors")], capsys)
    assert code == 0
    code, _, _ = cli(["convert", str(tmp_path / "c.safetensors"), "--to", "acestep-lokr", "--out", str(tmp_path / "ace")], capsys)
    assert code == 0 and (tmp_path / "ace" / "lokr_weights.safetensors").is_file()
    code, _, _ = cli(["convert", str(tmp_path / "ace"), "--to", "peft", "--out", str(tmp_path / "peft2")], capsys)
    back = read_lora(tmp_path / "peft2")
    assert code == 0 and all(torch.allclose(back.delta(p), weights.delta(p), rtol=0, atol=1e-6) for p in weights.modules)
    code, _, err = cli(["convert", str(tmp_path / "peft"), "--to", "diffusers", "--out", str(tmp_path / "d.safetensors")],
                       capsys)
    assert code == 1 and "LoRA only" in err and len(err.splitlines()) == 1


def test_convert_dora_needs_its_base_for_comfyui(tmp_path, capsys):
    from housevox.lora import write_comfyui_file as write_comfy
    from housevox.lora import write_peft_folder

    weights = _trained_tiny(LoRASettings(adapter_type="dora", rank=4, alpha=4))
    write_peft_folder(tmp_path / "peft", weights)
    code, _, err = cli(["convert", str(tmp_path / "peft"), "--to", "comfyui", "--out", str(tmp_path / "c.safetensors")],
                       capsys)
    assert code == 1 and "needs the base weights" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c.safetensors").exists()
    write_comfy(tmp_path / "ok.safetensors", weights)
    code, out, _ = cli(["inspect", str(tmp_path / "ok.safetensors")], capsys)
    assert code == 0 and "adapter: DoRA" in out and "+ 64 (magnitude)" in out and "convention: dora_scale" in out
    assert re.search(r"size: [\d,]+ params x 2 bytes \+ [\d,]+ params x 4 bytes = ", out)  # bf16 factors, fp32 scales
