"""Target resolution (names → exact DiT modules), LoRA/LoKr/DoRA injection, seeded init and the LoRA scale."""

import logging

import pytest
import torch

from housevox.acestep.config import AceStepConfig
from housevox.acestep.modules import build_dit
from housevox.acestep.presets import PRESETS
from housevox.errors import HousevoxError
from housevox.lora import LoRASettings, apply_lora, init_lora_weights, resolve_targets, set_lora_scale
from housevox.lora import to_diffusers_path, to_original_path
from housevox.lora.targets import lora_layers

SEED_TARGETS = "q_proj k_proj v_proj o_proj w1 w2 c_proj gate_proj up_proj down_proj"


TINY = AceStepConfig.from_upstream(PRESETS["tiny"])


@pytest.fixture(scope="module")
def xl_meta():
    return build_dit(AceStepConfig.from_upstream(PRESETS["xl"]), device="meta")


def tiny_dit(dtype=torch.float32):
    torch.manual_seed(0)
    return build_dit(TINY, device="cpu").to(dtype)


def tiny_inputs():
    """x_t, t, r, encoder states, context latents with the widths the tiny config declares."""
    g = torch.Generator().manual_seed(1)
    latent = TINY.audio_acoustic_hidden_dim
    x = torch.randn(2, 8, latent, generator=g)
    t = torch.rand(2, generator=g)
    enc = torch.randn(2, 5, TINY.encoder_hidden_size, generator=g)
    ctx = torch.randn(2, 8, TINY.in_channels - latent, generator=g)
    return x, t, t, enc, ctx


@pytest.mark.parametrize(
    ("diffusers", "original"),
    [
        ("layers.3.self_attn.to_out.0", "layers.3.self_attn.o_proj"),
        ("layers.12.cross_attn.to_k", "layers.12.cross_attn.k_proj"),
        ("layers.0.mlp.up_proj", "layers.0.mlp.up_proj"),
    ],
)
def test_path_renames_both_ways(diffusers, original):
    assert to_original_path(diffusers) == original
    assert to_diffusers_path(original) == diffusers


@pytest.mark.parametrize("bad", ["layers.0.mlp.q_proj", "layers.0.self_attn.gate_proj", "decoder.layers.0.mlp.up_proj", "layers.x.mlp.up_proj"])
def test_path_rename_rejects_non_adaptable_modules(bad):
    with pytest.raises(HousevoxError, match="not an adaptable"):
        to_original_path(bad)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("rank", {"rank": 0}),
        ("rank", {"rank": 4.5}),
        ("alpha", {"alpha": 0}),
        ("dropout", {"dropout": 1.0}),
        ("dropout", {"dropout": -0.1}),
        ("attention_type", {"attention_type": "all"}),
        ("bias", {"bias": "all"}),
        ("target_modules_str", {"target_modules_str": "  "}),
        ("adapter_type", {"adapter_type": "loha"}),
        ("lokr_factor", {"lokr_factor": 4}),  # a LoKr option on a LoRA
        ("lokr_factor", {"adapter_type": "lokr", "lokr_factor": 0}),
        ("lokr_rank_dropout", {"adapter_type": "lokr", "lokr_rank_dropout": 1.0}),
        ("lokr_full_matrix", {"adapter_type": "lokr", "lokr_full_matrix": True, "lokr_decompose_both": True}),
        ("dropout", {"adapter_type": "lokr", "dropout": 0.1}),
    ],
)
def test_settings_validation_names_the_field(field, kwargs):
    with pytest.raises(HousevoxError, match=f"^{field}:"):
        LoRASettings(**kwargs)


def test_seed_targets_on_xl_give_352_modules_and_318m_params(xl_meta):
    plan = resolve_targets(xl_meta, LoRASettings(rank=128, alpha=6, target_modules_str=SEED_TARGETS))
    assert len(plan.module_paths) == 352
    assert plan.lora_params == 318_767_104
    assert plan.counts == {"self": 128, "cross": 128, "mlp": 96}
    assert plan.unmatched_names == ["w1", "w2", "c_proj"]
    assert plan.module_paths[:11] == [
        "layers.0.self_attn.to_q", "layers.0.self_attn.to_k", "layers.0.self_attn.to_v", "layers.0.self_attn.to_out.0",
        "layers.0.cross_attn.to_q", "layers.0.cross_attn.to_k", "layers.0.cross_attn.to_v",
        "layers.0.cross_attn.to_out.0", "layers.0.mlp.gate_proj", "layers.0.mlp.up_proj", "layers.0.mlp.down_proj",
    ]
    assert plan.module_paths[-1] == "layers.31.mlp.down_proj"
    assert not any("encoder" in p or "condition" in p for p in plan.module_paths)


@pytest.mark.parametrize(
    ("attention_type", "names", "counts", "per_layer"),
    [
        # 2B: q,o 2048->2048 (4096 each), k,v 2048->1024 (3072 each); MLP 3 x (2048+6144)
        ("self", "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj", {"self": 96, "cross": 0, "mlp": 72}, 14336 + 24576),
        ("cross", "q_proj v_proj", {"self": 0, "cross": 48, "mlp": 0}, 4096 + 3072),
        ("both", "down_proj", {"self": 0, "cross": 0, "mlp": 24}, 8192),
    ],
)
def test_attention_type_restricts_attention_names_only(attention_type, names, counts, per_layer):
    dit = build_dit(AceStepConfig.from_upstream(PRESETS["2b"]), device="meta")
    plan = resolve_targets(dit, LoRASettings(rank=16, target_modules_str=names, attention_type=attention_type))
    assert plan.counts == counts
    assert plan.lora_params == 16 * per_layer * 24
    assert plan.unmatched_names == []


def test_apply_lora_freezes_base_keeps_lora_fp32_and_logs(caplog):
    dit = tiny_dit(torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="housevox"):
        plan = apply_lora(dit, LoRASettings(rank=4, alpha=8, target_modules_str=SEED_TARGETS))
    trainable = {n: p for n, p in dit.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())
    assert sum(p.numel() for p in trainable.values()) == plan.lora_params == 4 * 2 * (2 * 448 + 3 * 192)
    frozen = [p for n, p in dit.named_parameters() if ".lora_" not in n]
    assert all(not p.requires_grad and p.dtype == torch.bfloat16 for p in frozen)
    assert "LoRA: 22 modules adapted (self 8 / cross 8 / mlp 6), 11,776 trainable parameters" in caplog.text
    assert "match no module in ACE-Step v1.5 and were ignored: w1, w2, c_proj" in caplog.text


def test_apply_lora_with_nothing_matched_fails():
    with pytest.raises(HousevoxError, match="matches no module"):
        apply_lora(tiny_dit(), LoRASettings(rank=4, target_modules_str="w1 w2 c_proj"))


def test_scale_zero_is_exactly_the_base_and_scale_is_absolute():
    dit = tiny_dit().requires_grad_(False)  # CPU F.linear rounds differently for weights that require grad
    inputs = tiny_inputs()
    with torch.no_grad():
        base = dit(*inputs)
        apply_lora(dit, LoRASettings(rank=4, alpha=4))
        for name, p in dit.named_parameters():
            if ".lora_B." in name:
                torch.nn.init.normal_(p)
        full = dit(*inputs)
        set_lora_scale(dit, 0.0)
        assert torch.equal(dit(*inputs), base)
        set_lora_scale(dit, 0.5)
        half = dit(*inputs)
        set_lora_scale(dit, 0.5)  # absolute: a second call does not halve again
        assert torch.equal(dit(*inputs), half)
        set_lora_scale(dit, 1.0)
        assert torch.equal(dit(*inputs), full)
    assert not torch.allclose(full, base) and not torch.allclose(half, full)


def test_set_lora_scale_without_adapters_fails():
    with pytest.raises(HousevoxError, match="no LoRA adapters"):
        set_lora_scale(tiny_dit(), 0.5)


@pytest.mark.parametrize("settings", [
    LoRASettings(adapter_type="lokr", rank=128, alpha=128),
    LoRASettings(adapter_type="lokr", rank=8, alpha=8, lokr_decompose_both=True, lokr_factor=8),
    LoRASettings(adapter_type="dora", rank=128, alpha=128),
], ids=["lokr-r128", "lokr-r8-both-f8", "dora-r128"])
def test_planned_parameter_count_is_what_peft_creates_on_xl(settings):
    """The plan's size arithmetic (lint, inspect) against the parameters PEFT really injects (1 XL layer, meta)."""
    raw = {**PRESETS["xl"], "num_hidden_layers": 1, "layer_types": PRESETS["xl"]["layer_types"][:1]}
    dit = build_dit(AceStepConfig.from_upstream(raw), device="meta")
    plan = resolve_targets(dit, settings)
    lora = resolve_targets(dit, LoRASettings(rank=settings.rank, alpha=settings.alpha)).lora_params
    apply_lora(dit, settings)
    assert plan.lora_params == sum(p.numel() for p in dit.parameters() if p.requires_grad)
    assert (plan.lora_params < lora) if settings.adapter_type == "lokr" else (plan.lora_params == lora + 2 * 4096 + 2 * 1024 * 2 + 2 * 2560 + 2 * 9728 + 2560)


def _initial_factors(settings, seed, target_modules_str=None, global_seed=0):
    torch.manual_seed(global_seed)  # the global RNG must not matter
    dit = tiny_dit()
    if target_modules_str:
        settings = LoRASettings(**{**settings.__dict__, "target_modules_str": target_modules_str})
    apply_lora(dit, settings)
    init_lora_weights(dit, seed)
    return dit, {n: p.detach().clone() for n, p in dit.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("settings", [
    LoRASettings(adapter_type="lokr", rank=4, alpha=4),
    LoRASettings(adapter_type="lokr", rank=2, alpha=2, lokr_decompose_both=True),
    LoRASettings(adapter_type="dora", rank=4, alpha=4),
], ids=["lokr", "lokr-decompose-both", "dora"])
def test_lokr_and_dora_init_depends_only_on_the_run_seed(settings):
    dit, first = _initial_factors(settings, seed=7)
    _, again = _initial_factors(settings, seed=7, global_seed=99)
    _, fewer = _initial_factors(settings, seed=7, target_modules_str="q_proj up_proj", global_seed=5)
    _, other = _initial_factors(settings, seed=8)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert fewer and all(torch.equal(t, first[k]) for k, t in fewer.items())  # independent of the other modules
    random = [k for k, t in first.items() if t.abs().sum() > 0 and "magnitude" not in k]
    assert random and all(not torch.equal(first[k], other[k]) for k in random)
    x = tiny_inputs()
    with torch.no_grad():  # PEFT's init law: the update starts at zero
        adapted = dit(*x)
        set_lora_scale(dit, 0.0)
        if settings.adapter_type == "lokr":
            torch.testing.assert_close(adapted, dit(*x), rtol=0, atol=0)
        else:  # DoRA at scale 0 still rescales by m/‖W‖, which at init is 1
            torch.testing.assert_close(adapted, dit(*x), rtol=0, atol=1e-5)
    assert all(p.dtype == torch.float32 for n, p in dit.named_parameters() if p.requires_grad)
    assert {type(layer).__name__ for layer in lora_layers(dit).values()} == {"Linear"}
