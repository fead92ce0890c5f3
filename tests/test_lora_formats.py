"""The adapter layouts: lossless round trips, merged weights, and loading in PEFT, diffusers and (re-derived) ComfyUI."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from diffusers.loaders import AceStepLoraLoaderMixin
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from housevox.acestep.config import AceStepConfig
from housevox.acestep.modules import build_dit
from housevox.acestep.presets import PRESETS
from housevox.errors import HousevoxError, run_cli
from housevox.lora import (
    LoRASettings,
    LoRAWeights,
    apply_lora,
    extract_lora,
    load_lora_into,
    read_lora,
    to_diffusers_path,
    to_original_path,
    write_acestep_lokr,
    write_comfyui_file,
    write_diffusers_file,
    write_peft_folder,
)
from housevox.lora.apps import diffusers_reading
from housevox.lora.formats import CONVENTION_KEY, in_out_features, open_lora
from housevox.lora.targets import init_lora_weights, lora_layers

ROOT = Path(__file__).resolve().parents[1]
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


def original_names_tree(weights, base: nn.Module | None = None) -> nn.Module:
    """ACE-Step's own module naming (`layers.N.self_attn.q_proj`), Linear shapes taken from the adapter.

    With `base` (a housevox DiT), each Linear gets that DiT's weight for the module.
    """
    root = nn.Module()
    root.layers = nn.ModuleList(nn.Module() for _ in range(TINY.num_hidden_layers))
    base_modules = dict(base.named_modules()) if base is not None else {}
    for path in weights.modules:
        _, i, block, name = path.split(".")
        parent = root.layers[int(i)]
        if not hasattr(parent, block):
            parent.add_module(block, nn.Module())
        linear = nn.Linear(*in_out_features(weights, path), bias=False)
        if base is not None:
            source = base_modules[to_diffusers_path(path)]
            linear.weight.data.copy_(getattr(source, "base_layer", source).weight)
        getattr(parent, block).add_module(name, linear)
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


@pytest.mark.parametrize("targets", ["gate_proj up_proj down_proj", "q_proj gate_proj"])
def test_what_inspect_says_diffusers_does_is_what_its_loader_does(tmp_path, capsys, targets):
    """diffusers takes the PEFT file only when some key holds q_proj/k_proj (an MLP-only one is ignored without an
    error), takes the `convert --to diffusers` file whatever the targets, and refuses the ComfyUI file."""
    from housevox.lora.__main__ import main as lora_main

    dit = build_dit(TINY, device="cpu").requires_grad_(False)
    apply_lora(dit, LoRASettings(rank=4, alpha=4.0, target_modules_str=targets))
    weights = extract_lora(dit)
    files = {"peft": write_peft_folder(tmp_path / "peft", weights) / "adapter_model.safetensors",
             "diffusers": write_diffusers_file(tmp_path / "d.safetensors", weights),
             "comfyui": write_comfyui_file(tmp_path / "c.safetensors", weights)}
    verdicts = {}
    for fmt, file in files.items():
        reading = diffusers_reading(list(open_lora(file).keys))
        fresh = build_dit(TINY, device="cpu")
        try:
            _Pipe(fresh).load_lora_weights(str(file.parent), weight_name=file.name, adapter_name="x")
        except ValueError:
            assert reading.verdict == "refuses", fmt
        else:
            loaded = sum(1 for m in fresh.modules() if hasattr(m, "lora_A") and "x" in m.lora_A)
            assert (reading.verdict, reading.modules) == ("loads" if loaded else "ignores", loaded), fmt
        verdicts[fmt] = reading.verdict
    mlp_only = "q_proj" not in targets
    assert verdicts == {"peft": "ignores" if mlp_only else "loads", "diffusers": "loads", "comfyui": "refuses"}
    run_cli(lora_main, ["inspect", str(tmp_path / "peft")])
    assert f"diffusers (AceStepPipeline.load_lora_weights): {verdicts['peft']}" in capsys.readouterr().out
    run_cli(lora_main, ["convert", str(files["comfyui"]), "--to", "peft", "--out", str(tmp_path / "again")])
    assert ("note: diffusers (AceStepPipeline.load_lora_weights): ignores" in capsys.readouterr().out) == mlp_only


def test_diffusers_loads_the_dora_peft_file_with_its_magnitudes(tmp_path):
    dit = build_dit(TINY, device="cpu").requires_grad_(False)
    apply_lora(dit, LoRASettings(adapter_type="dora", rank=4, alpha=4.0))
    weights = extract_lora(dit)
    file = write_peft_folder(tmp_path / "peft", weights) / "adapter_model.safetensors"
    fresh = build_dit(TINY, device="cpu")
    _Pipe(fresh).load_lora_weights(str(file.parent), weight_name=file.name, adapter_name="x")
    dora = {n: m for n, m in fresh.named_modules() if hasattr(m, "lora_magnitude_vector") and "x" in m.lora_magnitude_vector}
    assert set(dora) == {to_diffusers_path(p) for p in weights.modules}
    for path, m in weights.magnitude.items():
        assert torch.equal(dora[to_diffusers_path(path)].lora_magnitude_vector["x"].weight, m)
    assert diffusers_reading(list(open_lora(file).keys)).verdict == "loads"


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


# --- LoKr and DoRA -------------------------------------------------------------------------------

ADAPTERS = {
    "lokr": LoRASettings(adapter_type="lokr", rank=4, alpha=6.0),  # tiny: attention factors full, MLP w2 split
    "lokr_decompose_both": LoRASettings(adapter_type="lokr", rank=2, alpha=3.0, lokr_decompose_both=True),
    "lokr_full_matrix": LoRASettings(adapter_type="lokr", rank=4, alpha=4.0, lokr_full_matrix=True),
    "lokr_factor_4": LoRASettings(adapter_type="lokr", rank=2, alpha=5.0, lokr_factor=4),
    "dora": LoRASettings(adapter_type="dora", rank=4, alpha=6.0),
}


@pytest.fixture(params=list(ADAPTERS))
def adapter(request):
    """(name, tiny DiT with that adapter, every trained tensor moved away from its init as training would)."""
    torch.manual_seed(0)
    dit = build_dit(TINY, device="cpu").requires_grad_(False)
    apply_lora(dit, ADAPTERS[request.param])
    init_lora_weights(dit, 7)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return request.param, dit


def trained_weight(layer) -> torch.Tensor:
    """W' of a trained PEFT layer, computed by PEFT itself (merge, read, unmerge)."""
    layer.merge(adapter_names=["default"])
    w = layer.get_base_layer().weight.detach().clone()
    layer.unmerge()
    return w


def comfyui_weight(f: dict, x: str, w0: torch.Tensor) -> torch.Tensor:
    """W' as ComfyUI computes it from the file's tensors, re-derived from ComfyUI's source at strength 1.

    comfy/weight_adapter/lokr.py: w1 = lokr_w1 or w1_a@w1_b (dim = w1_b.shape[0]); w2 likewise (dim =
    w2_b.shape[0], taking precedence); alpha = alpha/dim when a factor is split, else 1.0; W + alpha·kron(w1, w2).
    lora.py: alpha/lora_down.shape[0], lora_diff = up@down; base.py weight_decompose (dora_scale with
    out rows): (W + alpha·diff) · dora_scale / (‖W‖_row + eps), the norm of the base weight.
    """
    def get(part):
        return f[f"{x}.{part}"].float() if f"{x}.{part}" in f else None

    if get("lokr_w1") is not None or get("lokr_w1_a") is not None:
        dim = None
        w1 = get("lokr_w1")
        if w1 is None:
            dim, w1 = get("lokr_w1_b").shape[0], get("lokr_w1_a") @ get("lokr_w1_b")
        w2 = get("lokr_w2")
        if w2 is None:
            dim, w2 = get("lokr_w2_b").shape[0], get("lokr_w2_a") @ get("lokr_w2_b")
        alpha = float(get("alpha")) / dim if dim is not None else 1.0
        return w0 + alpha * torch.kron(w1, w2).reshape(w0.shape)
    down, up = get("lora_down.weight"), get("lora_up.weight")
    alpha = float(get("alpha")) / down.shape[0]
    weight_calc = w0 + alpha * (up @ down)
    dora_scale = get("dora_scale")
    if dora_scale is None:
        return weight_calc
    assert dora_scale.shape == (w0.shape[0], 1)
    norm = w0.reshape(w0.shape[0], -1).norm(dim=1, keepdim=True) + torch.finfo(w0.dtype).eps
    return weight_calc * (dora_scale / norm)


def test_adapter_exports_read_back_bitwise(tmp_path, adapter):
    kind, dit = adapter
    weights = extract_lora(dit)
    write_peft_folder(tmp_path / "peft", weights)
    back = read_lora(tmp_path / "peft")
    assert type(back) is type(weights) and back.adapter_type == weights.adapter_type == ADAPTERS[kind].adapter_type
    assert list(back.modules) == list(weights.modules)
    for path, parts in weights.modules.items():
        got = back.modules[path]
        pairs = zip(parts.values(), got.values()) if isinstance(parts, dict) else zip(parts, got)
        assert all(torch.equal(a, b) for a, b in pairs), path
        assert back.alpha[path] == weights.alpha[path] and back.rank(path) == weights.rank(path)
    if weights.adapter_type == "dora":
        assert all(torch.equal(back.magnitude[p], weights.magnitude[p]) for p in weights.modules)
    write_comfyui_file(tmp_path / "comfy.safetensors", weights, dtype=torch.float32)
    comfy = read_lora(tmp_path / "comfy.safetensors")
    layers = lora_layers(dit)
    for path in weights.modules:  # what ComfyUI's file holds, read by housevox, is the trained adapter
        w0 = layers[to_diffusers_path(path)].get_base_layer().weight
        torch.testing.assert_close(comfy.merged(path, w0), weights.merged(path, w0), rtol=0, atol=1e-6)


def test_peft_loads_the_adapter_folder_with_original_names(tmp_path, adapter):
    kind, dit = adapter
    weights = extract_lora(dit)
    write_peft_folder(tmp_path / "adapter", weights)
    model = PeftModel.from_pretrained(original_names_tree(weights, base=dit), tmp_path / "adapter")
    loaded = dict(model.named_modules())
    trained = lora_layers(dit)
    for path in weights.modules:
        theirs, ours = loaded[f"base_model.model.{path}"], trained[to_diffusers_path(path)]
        assert type(theirs) is type(ours), path
        if weights.adapter_type == "dora":
            torch.testing.assert_close(trained_weight(theirs), trained_weight(ours), rtol=0, atol=1e-5)
        else:
            torch.testing.assert_close(theirs.get_delta_weight("default"), ours.get_delta_weight("default"),
                                       rtol=0, atol=1e-5)


def test_comfyui_file_applies_the_trained_update_by_comfyuis_formulas(tmp_path, adapter):
    kind, dit = adapter
    weights = extract_lora(dit)
    write_comfyui_file(tmp_path / "comfy.safetensors", weights, dtype=torch.float32)
    f = load_file(tmp_path / "comfy.safetensors")
    with safe_open(tmp_path / "comfy.safetensors", framework="pt") as fh:
        assert CONVENTION_KEY in fh.metadata()
    for diffusers_path, layer in lora_layers(dit).items():
        x = f"base_model.model.{to_original_path(diffusers_path)}"
        assert f"{x}.alpha" in f and f[f"{x}.alpha"].dtype == torch.float32
        w0 = layer.get_base_layer().weight.detach()
        got = comfyui_weight(f, x, w0)
        torch.testing.assert_close(got, trained_weight(layer), rtol=0, atol=1e-5)
        # the naive export (dora_scale = PEFT's magnitude) would be off: the check can fail
        if kind == "dora":
            naive = dict(f, **{f"{x}.dora_scale": weights.magnitude[to_original_path(diffusers_path)].view(-1, 1)})
            assert (comfyui_weight(naive, x, w0) - trained_weight(layer)).abs().max() > 1e-3


def test_lokr_with_full_factors_folds_alpha_where_comfyui_ignores_it(tmp_path):
    dit = build_dit(TINY, device="cpu").requires_grad_(False)
    apply_lora(dit, LoRASettings(adapter_type="lokr", rank=64, alpha=16.0))  # every factor full on the tiny model
    init_lora_weights(dit, 3)
    for layer in lora_layers(dit).values():
        nn.init.normal_(layer.lokr_w1["default"])
    weights = extract_lora(dit)
    assert all(weights.is_full(p) for p in weights.modules)
    write_comfyui_file(tmp_path / "c.safetensors", weights, dtype=torch.float32)
    f = load_file(tmp_path / "c.safetensors")
    p = "layers.0.self_attn.q_proj"
    x = f"base_model.model.{p}"
    assert torch.equal(f[f"{x}.lokr_w1"], weights.modules[p]["lokr_w1"] * 0.25) and float(f[f"{x}.alpha"]) == 64.0
    back = read_lora(tmp_path / "c.safetensors")
    assert back.alpha[p] / back.rank(p) == 1.0
    fresh = build_dit(TINY, device="cpu")
    load_lora_into(fresh, back)  # PEFT rebuilds the same all-full split from the ComfyUI file
    torch.testing.assert_close(lora_layers(fresh)[to_diffusers_path(p)].get_delta_weight("default"),
                               lora_layers(dit)[to_diffusers_path(p)].get_delta_weight("default"), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["lokr", "lokr_decompose_both", "lokr_factor_4"])
def test_acestep_lokr_file_is_what_its_lycoris_loader_builds(tmp_path, kind):
    """ACE-Step's handler (lifecycle.py) reads `lokr_config` from the header and builds LyCORIS LoKr with it;
    LyCORIS splits like PEFT (PEFT copied its factorization) and scales like ComfyUI."""
    torch.manual_seed(0)
    dit = build_dit(TINY, device="cpu").requires_grad_(False)
    apply_lora(dit, ADAPTERS[kind])
    init_lora_weights(dit, 7)
    with torch.no_grad():
        for p in dit.parameters():
            if p.requires_grad:
                p.add_(0.3)
    weights = extract_lora(dit)
    file = write_acestep_lokr(tmp_path, weights)
    assert file.name == "lokr_weights.safetensors"
    with safe_open(file, framework="pt") as fh:
        header = fh.metadata()
    config = json.loads(header["lokr_config"])
    settings = ADAPTERS[kind]
    assert header["algo"] == "lokr" and header["format"] == "lycoris"
    assert (config["linear_dim"], config["linear_alpha"], config["factor"], config["decompose_both"]) == \
        (settings.rank, settings.alpha, settings.lokr_factor, settings.lokr_decompose_both)
    f = load_file(file)
    assert all(k.startswith("lycoris_layers_") for k in f)
    for diffusers_path, layer in lora_layers(dit).items():
        x = "lycoris_" + to_original_path(diffusers_path).replace(".", "_")
        w0 = layer.get_base_layer().weight.detach()
        torch.testing.assert_close(comfyui_weight(f, x, w0), trained_weight(layer), rtol=0, atol=1e-5)
    assert open_lora(tmp_path).format == "acestep-lokr"
    back = read_lora(tmp_path)
    for p in weights.modules:
        torch.testing.assert_close(back.delta(p), weights.delta(p), rtol=0, atol=1e-6)


def test_lokr_and_dora_refuse_layouts_that_cannot_hold_them(tmp_path, adapter):
    kind, dit = adapter
    weights = extract_lora(dit)
    with pytest.raises(HousevoxError, match="diffusers layout holds LoRA only"):
        write_diffusers_file(tmp_path / "d.safetensors", weights)
    if weights.adapter_type == "dora":
        with pytest.raises(HousevoxError, match="LoKr only"):
            write_acestep_lokr(tmp_path, weights)
        write_peft_folder(tmp_path / "peft", weights)
        with pytest.raises(HousevoxError, match="needs the base weights"):
            write_comfyui_file(tmp_path / "c.safetensors", read_lora(tmp_path / "peft"))


def test_dora_comfyui_file_loads_into_a_model_as_the_trained_dora(tmp_path):
    torch.manual_seed(0)
    dit = build_dit(TINY, device="cpu").requires_grad_(False)
    apply_lora(dit, ADAPTERS["dora"])
    with torch.no_grad():
        for p in dit.parameters():
            if p.requires_grad:
                p.add_(0.2)
    write_comfyui_file(tmp_path / "c.safetensors", extract_lora(dit), dtype=torch.float32)
    fresh = build_dit(TINY, device="cpu")
    fresh.load_state_dict({k.replace(".base_layer", ""): v for k, v in dit.state_dict().items()}, strict=False)
    load_lora_into(fresh, read_lora(tmp_path / "c.safetensors"))  # magnitude recovered from the base weights
    for name, layer in lora_layers(dit).items():
        torch.testing.assert_close(trained_weight(lora_layers(fresh)[name]), trained_weight(layer), rtol=0, atol=1e-5)


def test_mixed_adapter_types_in_one_file_are_refused(tmp_path):
    tensors = {"base_model.model.layers.0.mlp.up_proj.lokr_w1": torch.zeros(4, 4),
               "base_model.model.layers.0.mlp.up_proj.lokr_w2": torch.zeros(4, 4),
               "base_model.model.layers.0.mlp.down_proj.lora_down.weight": torch.zeros(2, 8),
               "base_model.model.layers.0.mlp.down_proj.lora_up.weight": torch.zeros(8, 2)}
    save_file(tensors, tmp_path / "mixed.safetensors")
    with pytest.raises(HousevoxError, match="mixed.safetensors: mixes adapter types"):
        read_lora(tmp_path / "mixed.safetensors")


def test_demo_dora_in_comfyui_matches_peft_within_what_bf16_factors_explain(tmp_path):
    """The demo config as DoRA (r 16, alpha 16, its seven targets, both attentions) after a 'training' that moved
    the factors (ΔW up to a few % of the base entries) and the magnitudes: ComfyUI's formula on the bf16 file the
    fit writes lands on PEFT's own merge as closely as bf16 factors alone allow, because dora_scale, which
    multiplies the whole base row, is kept in fp32. A bf16 dora_scale would land several times further off."""
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["model"]
    torch.manual_seed(0)
    dit = build_dit(TINY, device="cpu").requires_grad_(False)
    apply_lora(dit, LoRASettings(adapter_type="dora", rank=demo["rank"], alpha=float(demo["alpha"]),
                                 target_modules_str=demo["target_modules_str"], attention_type=demo["attention_type"]))
    with torch.no_grad():
        for layer in lora_layers(dit).values():
            w0 = layer.get_base_layer().weight
            nn.init.normal_(layer.lora_B["default"].weight, std=1.5 * w0.abs().mean().item() / demo["rank"] ** 0.5)
            layer.lora_magnitude_vector["default"].weight.mul_(1 + 0.02 * torch.randn(w0.shape[0]))
    weights = extract_lora(dit)
    write_comfyui_file(tmp_path / "demo.safetensors", weights, dtype=torch.bfloat16)  # as LoRAExport writes it
    write_comfyui_file(tmp_path / "fp32.safetensors", weights, dtype=torch.float32)
    f, exact = load_file(tmp_path / "demo.safetensors"), load_file(tmp_path / "fp32.safetensors")
    assert {t.dtype for k, t in f.items() if k.endswith(("lora_up.weight", "lora_down.weight"))} == {torch.bfloat16}
    assert {t.dtype for k, t in f.items() if k.endswith((".dora_scale", ".alpha"))} == {torch.float32}
    write_peft_folder(tmp_path / "peft", weights, dtype=torch.bfloat16)
    peft_file = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert {t.dtype for k, t in peft_file.items() if k.endswith("lora_magnitude_vector")} == {torch.float32}

    worst, change = {"file": 0.0, "bf16 factors alone": 0.0, "bf16 dora_scale": 0.0}, 0.0
    for diffusers_path, layer in lora_layers(dit).items():
        x = f"base_model.model.{to_original_path(diffusers_path)}"
        w0, peft = layer.get_base_layer().weight.detach(), trained_weight(layer)
        change = max(change, (peft - w0).abs().max().item())
        factors_only = dict(exact, **{f"{x}.lora_{s}.weight": exact[f"{x}.lora_{s}.weight"].bfloat16() for s in ("up", "down")})
        bf16_scale = dict(f, **{f"{x}.dora_scale": f[f"{x}.dora_scale"].bfloat16()})
        for name, tensors in (("file", f), ("bf16 factors alone", factors_only), ("bf16 dora_scale", bf16_scale)):
            worst[name] = max(worst[name], (comfyui_weight(tensors, x, w0) - peft).abs().max().item())
    print(f"learned change {change:.3g}; ComfyUI vs PEFT: " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))
    assert worst["file"] <= worst["bf16 factors alone"] * (1 + 1e-3) + 1e-7, worst
    assert worst["bf16 dora_scale"] > 3 * worst["bf16 factors alone"], worst
