"""The adapter file layouts housevox writes and reads, around one in-memory form per adapter type.

- PEFT folder (ACE-Step's `PeftModel.from_pretrained`, ComfyUI): `adapter_config.json` +
  `adapter_model.safetensors`, keys `base_model.model.<original path>.` + `lora_{A,B}.weight`
  (DoRA adds `lora_magnitude_vector`) or `lokr_w1`, `lokr_w2`, `lokr_w{1,2}_{a,b}` (LoKr).
- ComfyUI single file: same paths, `lora_down` (= A) / `lora_up` (= B) and a scalar `.alpha`
  per module (ComfyUI scales by alpha/r, and by 1.0 when alpha is missing); DoRA adds
  `dora_scale` [out, 1] in ComfyUI's convention (fp32 in every file, as the magnitude: SCALE_DTYPE);
  LoKr keeps PEFT's factor names plus `.alpha`.
- ACE-Step LoKr file (its handler's LyCORIS loader): `lokr_weights.safetensors`, keys
  `lycoris_<path with _>.lokr_*` / `.alpha`, the LyCORIS settings in the `lokr_config` header.
- diffusers file (`AceStepPipeline.load_lora_weights`, LoRA only): keys `transformer.<diffusers path>.lora_{A,B}.weight`,
  alpha in the header's `lora_adapter_metadata` JSON (without it diffusers assumes alpha = r).

PEFT files also carry `lora_adapter_metadata`: diffusers 0.42 converts ACE-Step PEFT keys
itself but would otherwise load them at alpha = r. Files for loaders whose arithmetic differs
from PEFT's (LoKr with both factors full, DoRA's norm) record the convention they were written
for under `housevox_convention`.
"""

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoKrConfig, LoraConfig, PeftConfig
from peft.tuners.lokr import LoKrLayer
from peft.tuners.lokr.layer import factorization
from peft.utils.integrations import dequantize_module_weight
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from housevox.atomic import save_safetensors, write_json
from housevox.errors import HousevoxError
from housevox.lora.apps import diffusers_reading
from housevox.lora.targets import (
    ADAPTER,
    ADAPTER_NAMES,
    LOKR_PARTS,
    inject,
    lokr_shapes,
    lora_layers,
    module_sort_key,
    to_diffusers_path,
    to_original_path,
)

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
ACESTEP_LOKR_WEIGHTS = "lokr_weights.safetensors"  # ACE-Step's LOKR_WEIGHTS_FILENAME
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
ADAPTER_TYPE_KEY = "housevox_adapter_type"
CONVENTION_KEY = "housevox_convention"
LOKR_CONVENTION = ("lokr scale alpha/rank of the split factor, 1 when both factors are full (ComfyUI lokr.py, LyCORIS): "
                   "such modules carry PEFT's alpha/r folded into lokr_w1 and alpha = r")
# Per-row scales (DoRA's magnitude and dora_scale) multiply a whole base row, so their rounding moves every weight
# of it, not just the learned change: bf16's 0.4 % would cost more than the whole bf16 rounding of the factors.
# Every file keeps them (and `.alpha`) in fp32, whatever dtype its factors are written in.
SCALE_DTYPE = torch.float32

DORA_CONVENTION = ("dora_scale = m*(|W0|+eps)/|W0+dW| per output row, for a loader that divides by the base weight's "
                   "norm |W0| (ComfyUI weight_decompose); PEFT's m divides by |W0+dW| (Comfy-Org/ComfyUI#15458 would too)")
_RESERVED_HEADER_KEYS = ("format", DIFFUSERS_METADATA_KEY, ADAPTER_TYPE_KEY, CONVENTION_KEY, "algo", "lokr_config")
_PARTS = "lora_A|lora_B|lora_down|lora_up|alpha|dora_scale|lora_magnitude_vector|" + "|".join(LOKR_PARTS)
_KEY = re.compile(
    r"(?:base_model\.model\.|transformer\.)?(?P<module>layers\.\d+\.[\w.]+?)"
    rf"\.(?P<part>{_PARTS})(?:\.default)?(?:\.weight)?"
)
_LYCORIS_KEY = re.compile(
    r"lycoris_layers_(?P<layer>\d+)_(?P<block>self_attn|cross_attn|mlp)_(?P<name>[a-z]+_proj)"
    rf"\.(?P<part>{_PARTS})"
)
_PART = {"lora_A": "A", "lora_down": "A", "lora_B": "B", "lora_up": "B", "lora_magnitude_vector": "magnitude"}


@dataclass
class LoRAWeights:
    """A LoRA or DoRA as housevox holds it: per ORIGINAL module path, A [r, in], B [out, r] and alpha.

    DoRA adds a per-row magnitude in one or both conventions: PEFT's `magnitude` m
    (W' = m·(W0+ΔW)/‖W0+ΔW‖) and ComfyUI's `dora_scale` d (W' = d·(W0+ΔW)/‖W0‖). Turning
    one into the other needs the base weight W0, so a reader keeps the one its file holds.
    """

    modules: dict[str, tuple[Tensor, Tensor]]
    alpha: dict[str, float]
    metadata: dict[str, str] = field(default_factory=dict)
    magnitude: dict[str, Tensor] = field(default_factory=dict)
    dora_scale: dict[str, Tensor] = field(default_factory=dict)

    @property
    def adapter_type(self) -> str:
        return "dora" if self.magnitude or self.dora_scale else "lora"

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.modules.values()))[0].dtype

    def rank(self, path: str) -> int:
        return self.modules[path][0].shape[0]

    def delta(self, path: str, scale: float = 1.0) -> Tensor:
        """The low-rank update scale·(alpha/r)·B·A in fp32, what every loader adds to W (DoRA: before rescaling)."""
        a, b = self.modules[path]
        return scale * (self.alpha[path] / self.rank(path)) * (b.float() @ a.float())

    def merged(self, path: str, w0: Tensor) -> Tensor:
        """The adapted weight W' in fp32, given the base weight W0."""
        w = w0.float() + self.delta(path)
        if path in self.magnitude:
            return self.magnitude[path].float().view(-1, 1) * w / w.norm(dim=1, keepdim=True)
        if path in self.dora_scale:
            return self.dora_scale[path].float().view(-1, 1) * w / (w0.float().norm(dim=1, keepdim=True) + _EPS)
        return w

    def with_dora_conventions(self, base_weight: Callable[[str], Tensor]) -> "LoRAWeights":
        """Both DoRA conventions filled in from the base weights W0 (`base_weight(ORIGINAL path)`)."""
        magnitude, dora_scale = dict(self.magnitude), dict(self.dora_scale)
        for path in sorted(set(self.magnitude) ^ set(self.dora_scale)):
            w0 = base_weight(path).float()
            ratio = (w0.norm(dim=1) + _EPS) / (w0 + self.delta(path)).norm(dim=1)
            if path in magnitude:
                dora_scale[path] = (magnitude[path].float() * ratio).view(-1, 1)
            else:
                magnitude[path] = dora_scale[path].float().view(-1) / ratio
        return LoRAWeights(self.modules, self.alpha, self.metadata, magnitude, dora_scale)

    def to(self, dtype: torch.dtype) -> "LoRAWeights":
        """The factors in `dtype`; DoRA's per-row scales stay fp32 (see SCALE_DTYPE)."""
        mods = {p: (a.to(dtype), b.to(dtype)) for p, (a, b) in self.modules.items()}
        return LoRAWeights(mods, dict(self.alpha), dict(self.metadata),
                           {p: t.to(SCALE_DTYPE) for p, t in self.magnitude.items()},
                           {p: t.to(SCALE_DTYPE) for p, t in self.dora_scale.items()})


# ComfyUI's weight_decompose adds finfo(fp32).eps to ‖W0‖ (it patches in fp32).
_EPS = torch.finfo(torch.float32).eps


@dataclass
class LoKrWeights:
    """A LoKr as PEFT trains it: per ORIGINAL path, the Kronecker factors by PEFT name, alpha and PEFT's r.

    ΔW = (alpha/r)·(w1 ⊗ w2), each factor full (`lokr_w1`) or low-rank (`lokr_w1_a @ lokr_w1_b`).
    r is kept apart because a module with both factors full does not show it in any shape.
    """

    modules: dict[str, dict[str, Tensor]]
    alpha: dict[str, float]
    ranks: dict[str, int]
    metadata: dict[str, str] = field(default_factory=dict)

    adapter_type = "lokr"

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(next(iter(self.modules.values())).values())).dtype

    def rank(self, path: str) -> int:
        return self.ranks[path]

    def factor(self, path: str, side: str) -> Tensor:
        """`w1` or `w2` in fp32, multiplied out when it is low-rank."""
        parts = self.modules[path]
        full = parts.get(f"lokr_{side}")
        return full.float() if full is not None else parts[f"lokr_{side}_a"].float() @ parts[f"lokr_{side}_b"].float()

    def is_full(self, path: str) -> bool:
        return {"lokr_w1", "lokr_w2"} <= set(self.modules[path])

    def delta(self, path: str, scale: float = 1.0) -> Tensor:
        return scale * (self.alpha[path] / self.rank(path)) * torch.kron(self.factor(path, "w1"), self.factor(path, "w2"))

    def merged(self, path: str, w0: Tensor) -> Tensor:
        return w0.float() + self.delta(path)

    def to(self, dtype: torch.dtype) -> "LoKrWeights":
        mods = {p: {k: t.to(dtype) for k, t in parts.items()} for p, parts in self.modules.items()}
        return LoKrWeights(mods, dict(self.alpha), dict(self.ranks), dict(self.metadata))


AdapterWeights = LoRAWeights | LoKrWeights


def _ordered(weights: AdapterWeights) -> list[str]:
    return sorted(weights.modules, key=module_sort_key)


def _detached(t: Tensor) -> Tensor:
    return t.detach().to("cpu", copy=True)


def base_weight(layer: nn.Module) -> Tensor:
    """The frozen W0 under a PEFT layer in fp32 on the CPU (dequantised when the base is int8/nf4)."""
    return dequantize_module_weight(layer.get_base_layer()).detach().float().cpu()


def extract_lora(dit: nn.Module) -> AdapterWeights:
    """Copy the adapter out of a PEFT-injected DiT (onto the CPU, so training can go on).

    DoRA gets both magnitude conventions here, where the base weights are at hand.
    """
    layers = {to_original_path(n): layer for n, layer in lora_layers(dit).items()}
    if not layers:
        raise HousevoxError("the model has no LoRA adapters to export")
    if all(isinstance(layer, LoKrLayer) for layer in layers.values()):
        return LoKrWeights(
            {p: {part: _detached(getattr(layer, part)[ADAPTER]) for part in LOKR_PARTS if ADAPTER in getattr(layer, part)}
             for p, layer in layers.items()},
            {p: float(layer.alpha[ADAPTER]) for p, layer in layers.items()},
            {p: int(layer.r[ADAPTER]) for p, layer in layers.items()},
        )
    weights = LoRAWeights(
        {p: (_detached(layer.lora_A[ADAPTER].weight), _detached(layer.lora_B[ADAPTER].weight)) for p, layer in layers.items()},
        {p: float(layer.lora_alpha[ADAPTER]) for p, layer in layers.items()},
        magnitude={p: _detached(layer.lora_magnitude_vector[ADAPTER].weight) for p, layer in layers.items()
                   if ADAPTER in layer.lora_magnitude_vector},
    )
    return weights.with_dora_conventions(lambda p: base_weight(layers[p])) if weights.magnitude else weights


def _most_common(values: dict[str, float]) -> float:
    return Counter(values.values()).most_common(1)[0][0]


def _patterns(weights: AdapterWeights, name: Callable[[str], str], r_key: str, alpha_key: str) -> dict:
    """PEFT's r/alpha plus the rank/alpha patterns that reproduce every module's own values."""
    paths = _ordered(weights)
    ranks = {p: weights.rank(p) for p in paths}
    r, alpha = _most_common(ranks), _most_common(weights.alpha)
    return {
        r_key: r,
        alpha_key: alpha,
        "rank_pattern": {name(p): v for p, v in ranks.items() if v != r},
        "alpha_pattern": {name(p): weights.alpha[p] for p in paths if weights.alpha[p] != alpha},
        "target_modules": [name(p) for p in paths],
    }


def _peft_fields(weights: AdapterWeights, name: Callable[[str], str]) -> dict:
    """The PEFT config fields (LoraConfig or LoKrConfig) of `weights`, module paths named by `name`."""
    if isinstance(weights, LoKrWeights):
        return {**_patterns(weights, name, "r", "alpha"), "decompose_both": any("lokr_w1_a" in m for m in weights.modules.values()),
                "decompose_factor": decompose_factor(weights), "rank_dropout": 0.0, "module_dropout": 0.0}
    return {**_patterns(weights, name, "r", "lora_alpha"), "lora_dropout": 0.0, "bias": "none",
            "use_dora": weights.adapter_type == "dora"}


def peft_config(weights: AdapterWeights) -> PeftConfig:
    """The config that injects adapters of `weights`' shapes into housevox's DiT."""
    config = LoKrConfig if isinstance(weights, LoKrWeights) else LoraConfig
    return config(**_peft_fields(weights, to_diffusers_path))


def _factor_dims(parts: dict[str, Tensor], side: str) -> tuple[int, int]:
    if f"lokr_{side}" in parts:
        return tuple(parts[f"lokr_{side}"].shape)
    return parts[f"lokr_{side}_a"].shape[0], parts[f"lokr_{side}_b"].shape[1]


def in_out_features(weights: AdapterWeights, path: str) -> tuple[int, int]:
    """The adapted Linear's (in, out), read off the adapter's shapes."""
    if isinstance(weights, LoKrWeights):
        (o1, i1), (o2, i2) = (_factor_dims(weights.modules[path], s) for s in ("w1", "w2"))
        return i1 * i2, o1 * o2
    a, b = weights.modules[path]
    return a.shape[1], b.shape[0]


def decompose_factor(weights: LoKrWeights) -> int:
    """The PEFT/LyCORIS `decompose_factor` that splits every module's dims as its factors are (-1 = automatic)."""
    dims = {p: [_factor_dims(weights.modules[p], s) for s in ("w1", "w2")] for p in _ordered(weights)}
    candidates = [-1, *sorted({d for (w1, _) in dims.values() for d in w1})]
    for f in candidates:
        if all(factorization(o1 * o2, f) == (o1, o2) and factorization(i1 * i2, f) == (i1, i2)
               for (o1, i1), (o2, i2) in dims.values()):
            return f
    raise HousevoxError("LoKr factors split the modules' dimensions in a way no single decompose_factor gives "
                        "(PEFT and LyCORIS could not rebuild it)")


def _header(weights: AdapterWeights, **extra: str) -> dict[str, str]:
    header = {**weights.metadata, "format": "pt", ADAPTER_TYPE_KEY: weights.adapter_type, **extra}
    if isinstance(weights, LoRAWeights):  # diffusers' alpha record (its keys carry the `transformer.` prefix)
        diffusers = {f"transformer.{k}": v for k, v in _peft_fields(weights, to_diffusers_path).items()}
        header[DIFFUSERS_METADATA_KEY] = json.dumps(diffusers, sort_keys=True)
    return header


def _missing_dora(weights: LoRAWeights, have: dict, what: str) -> None:
    missing = [p for p in weights.modules if p not in have]
    if missing:
        raise HousevoxError(f"DoRA {missing[0]}: no {what}; converting between PEFT's and ComfyUI's DoRA magnitude "
                            "needs the base weights (load it onto the model, or export it from training)")


def _lora_tensors(weights: LoRAWeights, key: Callable[[str, str], str], parts: tuple[str, str],
                  dtype: torch.dtype) -> dict[str, Tensor]:
    return {key(p, part): t.to(dtype) for p in _ordered(weights) for part, t in zip(parts, weights.modules[p])}


def _peft_key(path: str, part: str) -> str:
    """PEFT's (and ComfyUI's) key for a part of an ORIGINAL module path."""
    return f"base_model.model.{path}.{part}"


def write_peft_folder(dir: str | Path, weights: AdapterWeights, dtype: torch.dtype = torch.float32) -> Path:
    """ACE-Step's adapter folder; the config is written last, so its presence means the weights are complete."""
    dir = Path(dir)
    key = _peft_key
    common = {"task_type": "FEATURE_EXTRACTION",  # what ACE-Step's own trainer writes
              "base_model_name_or_path": weights.metadata.get("base_model"), "inference_mode": True,
              "modules_to_save": None}
    if isinstance(weights, LoKrWeights):
        tensors = {key(p, part): t.to(dtype) for p in _ordered(weights) for part, t in weights.modules[p].items()}
        config = {**_peft_fields(weights, str), **common, "peft_type": "LOKR", "init_weights": True,
                  "use_effective_conv2d": False}
    else:
        tensors = _lora_tensors(weights, lambda p, part: key(p, f"{part}.weight"), ("lora_A", "lora_B"), dtype)
        if weights.adapter_type == "dora":
            _missing_dora(weights, weights.magnitude, "PEFT lora_magnitude_vector")
            tensors.update({key(p, "lora_magnitude_vector"): weights.magnitude[p].to(SCALE_DTYPE) for p in weights.modules})
        config = {**_peft_fields(weights, str), **common, "peft_type": "LORA", "fan_in_fan_out": False,
                  "init_lora_weights": True, "use_rslora": False}
    save_safetensors(tensors, dir / PEFT_WEIGHTS, metadata=_header(weights))
    write_json(dir / PEFT_CONFIG, config)
    return dir


def _lokr_scale_one_tensors(weights: LoKrWeights, key: Callable[[str, str], str], dtype: torch.dtype) -> dict[str, Tensor]:
    """LoKr for loaders that scale by alpha/rank of a split factor and by 1 when both are full (ComfyUI, LyCORIS).

    A module with both factors full gets alpha/r folded into lokr_w1 and alpha = r, so every
    reader of this file applies the trained scale.
    """
    tensors = {}
    for p in _ordered(weights):
        parts, alpha = dict(weights.modules[p]), weights.alpha[p]
        if weights.is_full(p):
            parts["lokr_w1"] = parts["lokr_w1"].float() * (alpha / weights.rank(p))
            alpha = float(weights.rank(p))
        tensors.update({key(p, part): t.to(dtype) for part, t in parts.items()})
        tensors[key(p, "alpha")] = torch.tensor(alpha, dtype=torch.float32)
    return tensors


def write_comfyui_file(path: str | Path, weights: AdapterWeights, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Single file with ComfyUI's key names for the adapter type and an fp32 `.alpha` scalar per module."""
    key = _peft_key
    if isinstance(weights, LoKrWeights):
        tensors = _lokr_scale_one_tensors(weights, key, dtype)
        convention = LOKR_CONVENTION
    else:
        tensors = _lora_tensors(weights, lambda p, part: key(p, f"{part}.weight"), ("lora_down", "lora_up"), dtype)
        tensors.update({key(p, "alpha"): torch.tensor(weights.alpha[p], dtype=torch.float32) for p in weights.modules})
        convention = "alpha/rank"
        if weights.adapter_type == "dora":
            _missing_dora(weights, weights.dora_scale, "ComfyUI dora_scale")
            tensors.update({key(p, "dora_scale"): weights.dora_scale[p].reshape(-1, 1).to(SCALE_DTYPE)
                            for p in weights.modules})
            convention = DORA_CONVENTION
    save_safetensors(tensors, path, metadata=_header(weights, **{CONVENTION_KEY: convention}))
    return Path(path)


def write_acestep_lokr(dir: str | Path, weights: LoKrWeights, dtype: torch.dtype = torch.float32) -> Path:
    """`lokr_weights.safetensors` as ACE-Step's trainer writes it and its handler loads it through LyCORIS.

    Keys `lycoris_<path with _>.lokr_*` and `.alpha`; the `lokr_config` header JSON is what the
    handler builds its LyCORIS network from (linear_dim = r, linear_alpha, factor, decompose_both).
    """
    if not isinstance(weights, LoKrWeights):
        raise HousevoxError(f"the ACE-Step LoKr file holds LoKr only, not {weights.adapter_type}")
    paths = _ordered(weights)
    split = [p for p in paths if not weights.is_full(p)] or paths  # full-full modules ignore linear_dim/alpha
    linear_dim = _most_common({p: weights.rank(p) for p in split})
    linear_alpha = _most_common({p: weights.alpha[p] for p in split})
    factor, decompose_both = decompose_factor(weights), any("lokr_w1_a" in m for m in weights.modules.values())
    for p in paths:
        built = lokr_shapes(*in_out_features(weights, p), linear_dim, factor, decompose_both)
        if (p in split and (weights.rank(p), weights.alpha[p]) != (linear_dim, linear_alpha)) or \
                built != {k: tuple(t.shape) for k, t in weights.modules[p].items()}:
            raise HousevoxError(f"{p}: ACE-Step's LoKr config has one linear_dim ({linear_dim}) and linear_alpha "
                                f"({linear_alpha:g}) for every module, which would not rebuild this module's factors")
    lokr_config = {
        "linear_dim": linear_dim, "linear_alpha": linear_alpha, "factor": factor, "decompose_both": decompose_both,
        "use_tucker": False, "use_scalar": False, "weight_decompose": False, "full_matrix": False,
        "bypass_mode": False, "rs_lora": False, "unbalanced_factorization": False,
        "target_modules": list(dict.fromkeys(p.rsplit(".", 1)[1] for p in paths)),
    }
    tensors = _lokr_scale_one_tensors(weights, lambda p, part: f"lycoris_{p.replace('.', '_')}.{part}", dtype)
    header = _header(weights, algo="lokr", lokr_config=json.dumps(lokr_config), **{CONVENTION_KEY: LOKR_CONVENTION})
    header["format"] = "lycoris"
    file = Path(dir) / ACESTEP_LOKR_WEIGHTS
    save_safetensors(tensors, file, metadata=header)
    return file


def write_diffusers_file(path: str | Path, weights: AdapterWeights, dtype: torch.dtype = torch.bfloat16) -> Path:
    """What `AceStepPipeline.save_lora_weights` writes: diffusers names under `transformer.`."""
    if weights.adapter_type != "lora":
        raise HousevoxError(f"the diffusers layout holds LoRA only; write this {weights.adapter_type} as a PEFT "
                            "folder or a ComfyUI file")
    tensors = _lora_tensors(weights, lambda p, part: f"transformer.{to_diffusers_path(p)}.{part}.weight",
                            ("lora_A", "lora_B"), dtype)
    reading = diffusers_reading(list(tensors))
    if reading.verdict != "loads" or reading.modules != len(weights.modules):
        raise HousevoxError(f"{path}: not written: {reading.line()}")
    save_safetensors(tensors, path, metadata=_header(weights))
    return Path(path)


WRITERS = {"peft": write_peft_folder, "comfyui": write_comfyui_file, "diffusers": write_diffusers_file,
           "acestep-lokr": write_acestep_lokr}


def _pattern_value(pattern: dict, path: str, default):
    """PEFT's rank/alpha_pattern lookup (`(.*\\.)?key$`), tried on both namings of `path`."""
    for key, value in pattern.items():
        if any(re.match(rf"(.*\.)?({key})$", p) for p in (path, to_diffusers_path(path))):
            return value
    return default


def _from_config(config: dict, field_name: str, paths: list[str], source: str, pattern: str) -> dict[str, float]:
    if field_name not in config:
        raise HousevoxError(f"{source}: no {field_name} in the adapter config")
    values = config.get(pattern) or {}
    return {p: float(_pattern_value(values, p, config[field_name])) for p in paths}


def find_peft_weights(path: Path) -> Path:
    """The safetensors file of a PEFT folder (ACE-Step's trainer nests it in `adapter/`) or ACE-Step's LoKr file."""
    for folder in (path, path / "adapter"):
        for name in (PEFT_WEIGHTS, ACESTEP_LOKR_WEIGHTS):
            if (folder / name).is_file():
                return folder / name
    if any((f / "adapter_model.bin").is_file() for f in (path, path / "adapter")):
        raise HousevoxError(f"{path}: adapter_model.bin (pickle) is not read; re-save the adapter as safetensors")
    raise HousevoxError(f"{path}: no {PEFT_WEIGHTS} (or {ACESTEP_LOKR_WEIGHTS}) in this folder or its adapter/ subfolder")


def parse_key(key: str, source: str) -> tuple[str, str]:
    """(ORIGINAL module path, part) of an adapter key in any layout; part is A, B, alpha, magnitude, dora_scale or lokr_*."""
    m = _KEY.fullmatch(key) or _LYCORIS_KEY.fullmatch(key)
    if m is None:
        raise HousevoxError(f"{source}: {key!r} is not an ACE-Step v1.5 DiT adapter key (foreign model or format?)")
    if key.startswith("lycoris_"):
        module = f"layers.{m.group('layer')}.{m.group('block')}.{m.group('name')}"
    else:
        module = m.group("module")
    try:
        module = to_original_path(module)
    except HousevoxError as exc:
        raise HousevoxError(f"{source}: key {key!r}: {exc}") from None
    part = m.group("part")
    return module, _PART.get(part, part)


def detect_format(keys: list[str]) -> str:
    if keys and all(k.startswith("lycoris_") for k in keys):
        return "acestep-lokr"
    if any(".lora_down." in k or k.endswith((".dora_scale", ".alpha")) for k in keys):
        return "comfyui"
    if keys and all(k.startswith("transformer.") for k in keys):
        return "diffusers"
    return "peft"


def _adapter_type(parts: dict[str, dict[str, tuple]], file: Path) -> str:
    kinds = set()
    for module, have in parts.items():
        lokr = any(p.startswith("lokr_") for p in have)
        if lokr and set(have) & {"A", "B", "magnitude", "dora_scale"}:
            raise HousevoxError(f"{file}: {module} carries keys of two adapter types (LoKr and LoRA)")
        kinds.add("lokr" if lokr else "dora" if {"magnitude", "dora_scale"} & set(have) else "lora")
    if len(kinds) > 1:
        raise HousevoxError(f"{file}: mixes adapter types ({', '.join(sorted(kinds))}); loaders keep only one per module")
    return kinds.pop()


def _check_module(file: Path, module: str, have: dict[str, tuple], kind: str) -> None:
    """Every factor a module needs is there and the shapes chain; errors name the file and module."""
    if kind == "lokr":
        for side in ("w1", "w2"):
            if f"lokr_{side}" not in have and not {f"lokr_{side}_a", f"lokr_{side}_b"} <= set(have):
                raise HousevoxError(f"{file}: {module} has no lokr_{side} (nor lokr_{side}_a/_b)")
            a, b = have.get(f"lokr_{side}_a"), have.get(f"lokr_{side}_b")
            if a and b and (len(a) != 2 or len(b) != 2 or a[1] != b[0]):
                raise HousevoxError(f"{file}: {module}: lokr_{side}_a {a} and lokr_{side}_b {b} do not chain")
        return
    a, b = have.get("A"), have.get("B")
    if a is None or b is None:
        raise HousevoxError(f"{file}: {module} has no {'lora_A' if a is None else 'lora_B'} tensor")
    if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
        raise HousevoxError(f"{file}: {module}: A {a} and B {b} do not form a LoRA pair")
    scale = have.get("dora_scale") or have.get("magnitude")
    if kind == "dora" and (scale is None or math.prod(scale) != b[0] or (len(scale) == 2 and scale[1] != 1)):
        raise HousevoxError(f"{file}: {module}: DoRA magnitude {scale} is not one value per output row ({b[0]}, or [{b[0]}, 1])")


@dataclass
class LoRAFile:
    """What the header of an adapter file says, read without loading any weight data."""

    file: Path
    format: str
    adapter_type: str
    header: dict[str, str]
    keys: dict[str, tuple[str, str]]  # key -> (ORIGINAL module path, part)
    shapes: dict[str, dict[str, tuple[int, ...]]]  # module -> part -> shape (no alpha)
    dtypes: dict[str, int]  # safetensors dtype name -> number of factor tensors
    values: dict[str, int]  # safetensors dtype name -> number of values stored in it (alpha scalars aside)
    alpha: dict[str, float]
    ranks: dict[str, int]
    alpha_source: str

    @property
    def metadata(self) -> dict[str, str]:
        return {k: v for k, v in self.header.items() if k not in _RESERVED_HEADER_KEYS}

    @property
    def params(self) -> int:
        """Trained values in the file (alpha scalars aside)."""
        return sum(math.prod(s) for parts in self.shapes.values() for s in parts.values())

    def scale(self, module: str) -> float:
        return self.alpha[module] / self.ranks[module]


def open_lora(path: str | Path) -> LoRAFile:
    """Parse an adapter's keys, shapes and alphas (layout detected from the keys); errors name the file and key."""
    path = Path(path)
    if not path.exists():
        raise HousevoxError(f"{path}: no such file or folder")
    file = find_peft_weights(path) if path.is_dir() else path
    parts: dict[str, dict[str, tuple]] = {}
    keys, dtypes, values, alphas = {}, Counter(), Counter(), {}
    try:
        with safe_open(file, framework="pt") as f:
            header = f.metadata() or {}
            for key in f.keys():
                module, part = keys[key] = parse_key(key, str(file))
                if part == "alpha":
                    alphas[module] = float(f.get_tensor(key))
                    continue
                sl = f.get_slice(key)
                parts.setdefault(module, {})[part] = tuple(sl.get_shape())
                dtypes[sl.get_dtype()] += 1
                values[sl.get_dtype()] += math.prod(sl.get_shape())
    except (SafetensorError, OSError) as exc:
        raise HousevoxError(f"{file}: not a readable safetensors file ({exc})") from None
    if not keys:
        raise HousevoxError(f"{file}: contains no tensors")
    for module in alphas.keys() - parts.keys():
        raise HousevoxError(f"{file}: {module} has an alpha but no factors")
    kind = _adapter_type(parts, file)
    shapes = {m: parts[m] for m in sorted(parts, key=module_sort_key)}
    for module, have in shapes.items():
        _check_module(file, module, have, kind)
    fmt = detect_format(list(keys))
    alpha, ranks, source = _read_alphas(file, fmt, kind, header, alphas, shapes)
    return LoRAFile(file, fmt, kind, header, keys, shapes, dict(dtypes), dict(values), alpha, ranks, source)


def read_lora(path: str | Path) -> AdapterWeights:
    """Read any layout into the canonical form of its adapter type, dtypes as stored."""
    lf = open_lora(path)
    tensors: dict[str, dict[str, Tensor]] = {m: {} for m in lf.shapes}
    with safe_open(lf.file, framework="pt") as f:
        for key, (module, part) in lf.keys.items():
            if part != "alpha":
                tensors[module][part] = f.get_tensor(key)
    if lf.adapter_type == "lokr":
        return LoKrWeights(tensors, lf.alpha, lf.ranks, lf.metadata)
    return LoRAWeights(
        {m: (t["A"], t["B"]) for m, t in tensors.items()}, lf.alpha, lf.metadata,
        magnitude={m: t["magnitude"].reshape(-1) for m, t in tensors.items() if "magnitude" in t},
        dora_scale={m: t["dora_scale"].reshape(-1, 1) for m, t in tensors.items() if "dora_scale" in t},
    )


def _split_rank(have: dict[str, tuple]) -> int | None:
    """The rank ComfyUI divides alpha by: w2's when w2 is split, else w1's; None when both factors are full."""
    for side in ("w2", "w1"):
        if f"lokr_{side}_b" in have:
            return have[f"lokr_{side}_b"][0]
    return None


def _full_lokr_rank(have: dict[str, tuple]) -> int:
    """A PEFT r that keeps both factors of this module full (r >= max(dims)/2 of each)."""
    return max(math.ceil(d / 2) for part in ("lokr_w1", "lokr_w2") for d in have[part])


def _read_alphas(file: Path, fmt: str, kind: str, header: dict, alphas: dict,
                 shapes: dict[str, dict[str, tuple]]) -> tuple[dict, dict, str]:
    """Alpha and rank per module and where alpha came from: `.alpha` tensors, adapter_config.json or a header."""
    if kind == "lokr":
        ranks = {m: _split_rank(have) for m, have in shapes.items()}
    else:
        ranks = {m: have["A"][0] for m, have in shapes.items()}
    if fmt in ("comfyui", "acestep-lokr"):
        # ComfyUI applies scale 1 when `.alpha` is missing, and always when both LoKr factors are full.
        missing = [m for m in shapes if m not in alphas]
        source = f"missing for {len(missing)} modules: scale 1 assumed, as ComfyUI does" if missing else ".alpha tensors"
        out_alpha, out_rank = {}, {}
        for m, r in ranks.items():
            if r is None:  # both LoKr factors full: scale 1, with an r at which PEFT keeps them full
                r = max(int(alphas.get(m, 0)), _full_lokr_rank(shapes[m]))
                out_alpha[m], out_rank[m] = float(r), r
            else:
                out_alpha[m], out_rank[m] = alphas.get(m, float(r)), r
        return out_alpha, out_rank, source
    config_file = file.parent / PEFT_CONFIG
    if fmt == "peft" and config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise HousevoxError(f"{config_file}: unreadable adapter config ({exc})") from None
        alpha_field = "alpha" if kind == "lokr" else "lora_alpha"
        alpha = _from_config(config, alpha_field, list(shapes), str(config_file), "alpha_pattern")
        if kind == "lokr":
            ranks = {m: int(r) for m, r in _from_config(config, "r", list(shapes), str(config_file), "rank_pattern").items()}
        return alpha, ranks, PEFT_CONFIG
    if kind == "lokr":
        raise HousevoxError(f"{file}: PEFT LoKr without {PEFT_CONFIG} next to it, so its r and alpha are unknown")
    if DIFFUSERS_METADATA_KEY in header:
        meta = json.loads(header[DIFFUSERS_METADATA_KEY])
        config = {k.removeprefix("transformer."): v for k, v in meta.items()}
        return (_from_config(config, "lora_alpha", list(shapes), f"{file} header", "alpha_pattern"), ranks,
                f"header {DIFFUSERS_METADATA_KEY}")
    if fmt == "diffusers":
        return {m: float(r) for m, r in ranks.items()}, ranks, "none stored: alpha = r assumed, as diffusers does"
    raise HousevoxError(f"{file}: PEFT LoRA without {PEFT_CONFIG} next to it, so its alpha is unknown")


def _fill_layer(layer: nn.Module, weights: AdapterWeights, path: str, source: str) -> None:
    """Copy one module's tensors into its PEFT layer; the layer's split must be the file's."""
    if isinstance(weights, LoKrWeights) != isinstance(layer, LoKrLayer):
        have = "lokr" if isinstance(layer, LoKrLayer) else "lora/dora"
        raise HousevoxError(f"{source}: is a {weights.adapter_type}, but the model's adapters are {have}")
    if layer.r[ADAPTER] != weights.rank(path):
        raise HousevoxError(f"{source}: {path} has rank {weights.rank(path)}, the model's adapter rank {layer.r[ADAPTER]}")
    if isinstance(weights, LoKrWeights):
        targets = {part: getattr(layer, part)[ADAPTER] for part in LOKR_PARTS if ADAPTER in getattr(layer, part)}
        wanted = weights.modules[path]
        if {k: tuple(v.shape) for k, v in targets.items()} != {k: tuple(v.shape) for k, v in wanted.items()}:
            raise HousevoxError(f"{source}: {path}: LoKr factors {sorted(wanted)} do not match the model's "
                                f"{sorted(targets)} (another lokr_factor or decompose_both?)")
        for part, t in wanted.items():
            targets[part].copy_(t)
        layer.alpha[ADAPTER] = weights.alpha[path]
    else:
        if (ADAPTER in layer.lora_magnitude_vector) != (weights.adapter_type == "dora"):
            raise HousevoxError(f"{source}: is a {weights.adapter_type}, the model's adapters are not")
        a, b = weights.modules[path]
        layer.lora_A[ADAPTER].weight.copy_(a)
        layer.lora_B[ADAPTER].weight.copy_(b)
        if weights.adapter_type == "dora":
            layer.lora_magnitude_vector[ADAPTER].weight.copy_(weights.magnitude[path].reshape(-1))
        layer.lora_alpha[ADAPTER] = weights.alpha[path]
    layer.set_scale(ADAPTER, 1.0)


def load_lora_into(dit: nn.Module, weights: AdapterWeights, source: str = "LoRA") -> None:
    """Put `weights` into the DiT: inject adapters if absent, else fill the existing ones (same modules)."""
    modules = dict(dit.named_modules())
    for path in weights.modules:
        target = modules.get(to_diffusers_path(path))
        base = getattr(target, "base_layer", target)
        if not isinstance(base, nn.Linear):
            n = len(getattr(dit, "layers", []))
            raise HousevoxError(f"{source}: {path} does not exist in this model ({n} layers)")
        n_in, n_out = in_out_features(weights, path)
        if (base.in_features, base.out_features) != (n_in, n_out):
            raise HousevoxError(
                f"{source}: {path} is a {n_in}→{n_out} {ADAPTER_NAMES[weights.adapter_type]} but the model's Linear is "
                f"{base.in_features}→{base.out_features} (an adapter for another model size?)"
            )
    layers = lora_layers(dit)
    if not layers:
        inject(dit, peft_config(weights))
        layers = lora_layers(dit)
    wanted = {to_diffusers_path(p) for p in weights.modules}
    if set(layers) != wanted:
        extra = sorted(set(layers) ^ wanted)[:3]
        raise HousevoxError(f"{source}: adapts other modules than the model's existing adapters (e.g. {', '.join(extra)})")
    if weights.adapter_type == "dora":
        weights = weights.with_dora_conventions(lambda p: base_weight(layers[to_diffusers_path(p)]))
    with torch.no_grad():
        for path in weights.modules:
            _fill_layer(layers[to_diffusers_path(path)], weights, path, source)
