"""The three LoRA layouts: lossless round trips, merged weights, and loading in PEFT and diffusers."""

import json

import pytest
import torch
from diffusers.loaders import AceStepLoraLoaderMixin
from peft import PeftModel
from safetensors.torch import save_file
from torch import nn

from housevox.acestep.config import AceStepConfig
from housevox.acestep.modules import build_dit
from housevox.acestep.presets import PRESETS
from housevox.errors import HousevoxError
from housevox.lora import (
    LoRASettings,
    LoRAWeights,
    apply_lora,
    extract_lora,
    load_lora_into,
    read_lora,
    to_diffusers_path,
    write_comfyui_file,
    write_diffusers_file,
    write_peft_folder,
)
from housevox.lora.targets import lora_layers

TINY = AceStepConfig.from_upstream(PRESETS["tiny"])
WRITERS = {"peft": write_peft_folder, "comfyui": write_comfyui_file, "diffusers": write_diffusers_file}


def out_path(tmp_path, fmt):
    return tmp_path / fmt if fmt == "peft" else tmp_path / f"{fmt}.safetensors"


@pytest.fixture
def trained():
    """A tiny DiT with LoRA (rank 4, alpha 6) whose B factors are random, i.e. 'after training'."""
    torch.manual_seed(0)
    dit = build_dit(TINY, device="cpu").requires_grad_(False)
    apply_lora(dit, LoRASettings(rank=4, alpha=6.0))
    for layer in lora_layers(dit).values():
        nn.init.normal_(layer.lora_B["default"].weight)
    return dit


@pytest.fixture
def weights(trained):
    w = extract_lora(trained)
    w.metadata = {"base_model": "tiny", "rank": "4", "alpha": "6"}
    return w


def assert_same(a: LoRAWeights, b: LoRAWeights):
    assert list(a.modules) == list(b.modules)
    for p, (wa, wb) in a.modules.items():
        assert wa.dtype == b.modules[p][0].dtype and torch.equal(wa, b.modules[p][0]), p
        assert torch.equal(wb, b.modules[p][1]), p
    assert a.alpha == b.alpha and a.metadata == b.metadata


def test_extract_uses_original_names(weights):
    assert len(weights.modules) == 22
    assert list(weights.modules)[:4] == [f"layers.0.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    a, b = weights.modules["layers.0.self_attn.k_proj"]
    assert a.shape == (4, 64) and b.shape == (32, 4) and a.dtype == torch.float32
    assert set(weights.alpha.values()) == {6.0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", list(WRITERS))
def test_round_trip_is_bitwise(tmp_path, weights, fmt, dtype):
    WRITERS[fmt](out_path(tmp_path, fmt), weights, dtype=dtype)
    assert_same(read_lora(out_path(tmp_path, fmt)), weights.to(dtype))


def test_conversion_chain_through_all_formats_is_lossless(tmp_path, weights):
    weights.alpha["layers.1.mlp.up_proj"] = 3.0  # per-module alpha must survive every layout
    w = weights.to(torch.bfloat16)
    for fmt in ("comfyui", "diffusers", "peft", "comfyui"):
        WRITERS[fmt](tmp_path / f"step-{fmt}", w, dtype=torch.bfloat16)
        w = read_lora(tmp_path / f"step-{fmt}")
    assert_same(w, weights.to(torch.bfloat16))
    config = json.loads((tmp_path / "step-peft" / "adapter_config.json").read_text())
    assert config["lora_alpha"] == 6.0 and config["alpha_pattern"] == {"layers.1.mlp.up_proj": 3.0}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_exported_delta_equals_the_trained_effective_weight(tmp_path, trained, weights, fmt):
    layers = lora_layers(trained)
    for dtype in (torch.float32, torch.bfloat16):
        WRITERS[fmt](out_path(tmp_path, fmt), weights, dtype=dtype)
        loaded = read_lora(out_path(tmp_path, fmt))
        for path in loaded.modules:
            layer = layers[to_diffusers_path(path)]
            trained_delta = layer.get_delta_weight("default")
            merged = layer.base_layer.weight + loaded.delta(path)
            if dtype == torch.float32:
                assert torch.equal(loaded.delta(path), trained_delta), path
                assert torch.equal(merged, layer.base_layer.weight + trained_delta), path
            else:  # each factor rounded to bf16: relative error a few 2^-8
                tol = 0.03 * trained_delta.abs().max().item()
                torch.testing.assert_close(loaded.delta(path), trained_delta, rtol=0, atol=tol)


def test_load_lora_into_fresh_model_reproduces_the_adapters(tmp_path, trained, weights):
    write_peft_folder(tmp_path / "peft", weights)
    fresh = build_dit(TINY, device="cpu")
    load_lora_into(fresh, read_lora(tmp_path / "peft"))
    got, want = lora_layers(fresh), lora_layers(trained)
    assert set(got) == set(want)
    for name, layer in want.items():
        assert torch.equal(got[name].get_delta_weight("default"), layer.get_delta_weight("default")), name
        assert got[name].scaling["default"] == layer.scaling["default"] == 1.5
    assert all(p.requires_grad == (".lora_" in n) for n, p in fresh.named_parameters())


def test_load_lora_into_respects_per_module_rank_and_alpha(weights):
    path = "layers.1.cross_attn.v_proj"
    a, b = weights.modules[path]
    weights.modules[path] = (a[:2].clone(), b[:, :2].clone())
    weights.alpha[path] = 1.0
    dit = build_dit(TINY, device="cpu")
    load_lora_into(dit, weights)
    layer = lora_layers(dit)[to_diffusers_path(path)]
    assert layer.r["default"] == 2 and layer.scaling["default"] == 0.5
    assert lora_layers(dit)["layers.0.self_attn.to_q"].scaling["default"] == 1.5


def test_load_lora_into_rejects_other_model_sizes(weights):
    path = "layers.0.self_attn.q_proj"
    weights.modules[path] = (torch.zeros(4, 2560), torch.zeros(4096, 4))
    with pytest.raises(HousevoxError, match=r"xl-lora.safetensors: layers\.0\.self_attn\.q_proj is a 2560→4096 LoRA.*64→64"):
        load_lora_into(build_dit(TINY, device="cpu"), weights, source="xl-lora.safetensors")
    weights.modules = {"layers.7.mlp.up_proj": (torch.zeros(4, 64), torch.zeros(128, 4))}
    weights.alpha = {"layers.7.mlp.up_proj": 4.0}
    with pytest.raises(HousevoxError, match=r"layers\.7\.mlp\.up_proj does not exist in this model \(2 layers\)"):
        load_lora_into(build_dit(TINY, device="cpu"), weights)


def original_names_tree(weights: LoRAWeights) -> nn.Module:
    """ACE-Step's own module naming (`layers.N.self_attn.q_proj`), Linear shapes taken from the LoRA."""
    root = nn.Module()
    root.layers = nn.ModuleList(nn.Module() for _ in range(TINY.num_hidden_layers))
    for path, (a, b) in weights.modules.items():
        _, i, block, name = path.split(".")
        parent = root.layers[int(i)]
        if not hasattr(parent, block):
            parent.add_module(block, nn.Module())
        getattr(parent, block).add_module(name, nn.Linear(a.shape[1], b.shape[0], bias=False))
    return root


def test_peft_folder_loads_with_peft_model_from_pretrained(tmp_path, weights):
    weights.alpha["layers.0.mlp.gate_proj"] = 2.0
    write_peft_folder(tmp_path / "adapter", weights)
    model = PeftModel.from_pretrained(original_names_tree(weights), tmp_path / "adapter")
    loaded = dict(model.named_modules())
    for path, (a, b) in weights.modules.items():
        layer = loaded[f"base_model.model.{path}"]
        assert torch.equal(layer.lora_A["default"].weight, a) and torch.equal(layer.lora_B["default"].weight, b)
        assert layer.scaling["default"] == weights.alpha[path] / 4
    assert sum(1 for m in loaded.values() if hasattr(m, "lora_A")) == len(weights.modules)


class _Pipe(AceStepLoraLoaderMixin):
    """Just enough of AceStepPipeline for its LoRA loader (transformer + components)."""

    hf_device_map = None

    def __init__(self, transformer):
        self.transformer = transformer
        self.components = {"transformer": transformer}


@pytest.mark.parametrize("fmt", ["diffusers", "peft"])
def test_diffusers_ace_step_loader_accepts_our_files(tmp_path, weights, fmt):
    weights.alpha["layers.1.self_attn.o_proj"] = 2.0
    WRITERS[fmt](out_path(tmp_path, fmt), weights, dtype=torch.float32)
    file = tmp_path / ("peft/adapter_model.safetensors" if fmt == "peft" else "diffusers.safetensors")
    dit = build_dit(TINY, device="cpu")
    _Pipe(dit).load_lora_weights(str(file.parent), weight_name=file.name, adapter_name="x")
    adapted = {n: m for n, m in dit.named_modules() if hasattr(m, "lora_A") and "x" in m.lora_A}
    assert set(adapted) == {to_diffusers_path(p) for p in weights.modules}
    for path, (a, b) in weights.modules.items():
        layer = adapted[to_diffusers_path(path)]
        assert torch.equal(layer.lora_A["x"].weight, a) and torch.equal(layer.lora_B["x"].weight, b)
        assert layer.scaling["x"] == weights.alpha[path] / 4, path


def test_reads_ace_step_trainer_output(tmp_path, weights):
    """ACE-Step's trainer: `<out>/adapter/`, short target names; tolerate `.default.` keys without prefix."""
    folder = tmp_path / "epoch_5" / "adapter"
    folder.mkdir(parents=True)
    tensors = {}
    for path, (a, b) in weights.modules.items():
        tensors[f"{path}.lora_A.default.weight"] = a
        tensors[f"{path}.lora_B.default.weight"] = b
    save_file(tensors, folder / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "r": 4, "lora_alpha": 6,
              "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    weights.metadata = {}
    assert_same(read_lora(tmp_path / "epoch_5"), weights)


def test_comfyui_file_without_alpha_reads_as_alpha_equal_rank(tmp_path, weights):
    tensors = {}
    for path, (a, b) in weights.modules.items():
        tensors[f"base_model.model.{path}.lora_down.weight"] = a
        tensors[f"base_model.model.{path}.lora_up.weight"] = b
    save_file(tensors, tmp_path / "noalpha.safetensors")
    assert set(read_lora(tmp_path / "noalpha.safetensors").alpha.values()) == {4.0}


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, "lora_unet_down"),
        ({"base_model.model.layers.0.mlp.w1.lora_A.weight": torch.zeros(4, 8)}, "not an adaptable"),
        ({"base_model.model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(4, 8)}, "no lora_B tensor"),
        ({"base_model.model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(4, 8),
          "base_model.model.layers.0.mlp.up_proj.lora_B.weight": torch.zeros(8, 3)}, "do not form a LoRA pair"),
    ],
)
def test_foreign_or_broken_files_fail_naming_the_file(tmp_path, tensors, message):
    save_file(tensors, tmp_path / "other.safetensors")
    with pytest.raises(HousevoxError, match=rf"other\.safetensors.*{message}"):
        read_lora(tmp_path / "other.safetensors")


def test_unreadable_inputs_fail_cleanly(tmp_path, weights):
    with pytest.raises(HousevoxError, match="no such file"):
        read_lora(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(HousevoxError, match="junk.safetensors: not a readable safetensors"):
        read_lora(tmp_path / "junk.safetensors")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(HousevoxError, match="adapter_model.bin"):
        read_lora(tmp_path / "pickled")
    bare = {f"base_model.model.{p}.lora_{x}.weight": t for p, ab in weights.modules.items() for x, t in zip("AB", ab)}
    save_file(bare, tmp_path / "bare.safetensors")
    with pytest.raises(HousevoxError, match="alpha is unknown"):
        read_lora(tmp_path / "bare.safetensors")
