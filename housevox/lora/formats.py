"""The three LoRA file layouts housevox writes and reads, around one in-memory form.

- PEFT folder (ACE-Step's `PeftModel.from_pretrained`, ComfyUI): `adapter_config.json` +
  `adapter_model.safetensors`, keys `base_model.model.<original path>.lora_{A,B}.weight`.
- ComfyUI single file: same paths, `lora_down` (= A) / `lora_up` (= B) and a scalar `.alpha`
  per module (ComfyUI scales by alpha/r, and by 1.0 when alpha is missing).
- diffusers file (`AceStepPipeline.load_lora_weights`): keys `transformer.<diffusers path>.lora_{A,B}.weight`,
  alpha in the header's `lora_adapter_metadata` JSON (without it diffusers assumes alpha = r).

PEFT files also carry `lora_adapter_metadata`: diffusers 0.42 converts ACE-Step PEFT keys
itself but would otherwise load them at alpha = r.
"""

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from housevox.atomic import save_safetensors, write_json
from housevox.errors import HousevoxError
from housevox.lora.targets import (
    ADAPTER,
    inject,
    lora_layers,
    module_sort_key,
    to_diffusers_path,
    to_original_path,
)

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
_RESERVED_HEADER_KEYS = ("format", DIFFUSERS_METADATA_KEY)
_KEY = re.compile(
    r"(?:base_model\.model\.|transformer\.)?(?P<module>layers\.\d+\.[\w.]+?)"
    r"\.(?:(?P<part>lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight|(?P<alpha>alpha))"
)
_PART = {"lora_A": 0, "lora_down": 0, "lora_B": 1, "lora_up": 1}


@dataclass
class LoRAWeights:
    """A LoRA as housevox holds it: per ORIGINAL module path, A [r, in], B [out, r] and alpha."""

    modules: dict[str, tuple[Tensor, Tensor]]
    alpha: dict[str, float]
    metadata: dict[str, str] = field(default_factory=dict)

    def rank(self, path: str) -> int:
        return self.modules[path][0].shape[0]

    def delta(self, path: str, scale: float = 1.0) -> Tensor:
        """The weight update scale·(alpha/r)·B·A in fp32, what every loader adds to W."""
        a, b = self.modules[path]
        return scale * (self.alpha[path] / self.rank(path)) * (b.float() @ a.float())

    def to(self, dtype: torch.dtype) -> "LoRAWeights":
        mods = {p: (a.to(dtype), b.to(dtype)) for p, (a, b) in self.modules.items()}
        return LoRAWeights(mods, dict(self.alpha), dict(self.metadata))


def _ordered(weights: LoRAWeights) -> list[str]:
    return sorted(weights.modules, key=module_sort_key)


def extract_lora(dit: nn.Module) -> LoRAWeights:
    """Copy the adapter out of a PEFT-injected DiT (onto the CPU, so training can go on)."""
    layers = lora_layers(dit)
    if not layers:
        raise HousevoxError("the model has no LoRA adapters to export")
    modules, alpha = {}, {}
    for name, layer in layers.items():
        path = to_original_path(name)
        modules[path] = tuple(
            m[ADAPTER].weight.detach().to("cpu", copy=True) for m in (layer.lora_A, layer.lora_B)
        )
        alpha[path] = float(layer.lora_alpha[ADAPTER])
    return LoRAWeights(modules, alpha)


def _most_common(values: dict[str, float]) -> float:
    return Counter(values.values()).most_common(1)[0][0]


def _peft_fields(weights: LoRAWeights, name: Callable[[str], str]) -> dict:
    """LoraConfig fields reproducing every module's rank and alpha, module paths named by `name`."""
    paths = _ordered(weights)
    ranks = {p: weights.rank(p) for p in paths}
    r, lora_alpha = _most_common(ranks), _most_common(weights.alpha)
    return {
        "r": r,
        "lora_alpha": lora_alpha,
        "rank_pattern": {name(p): v for p, v in ranks.items() if v != r},
        "alpha_pattern": {name(p): weights.alpha[p] for p in paths if weights.alpha[p] != lora_alpha},
        "target_modules": [name(p) for p in paths],
        "lora_dropout": 0.0,
        "bias": "none",
    }


def _header(weights: LoRAWeights) -> dict[str, str]:
    """Training metadata plus diffusers' alpha record (its keys carry the `transformer.` prefix)."""
    diffusers = {f"transformer.{k}": v for k, v in _peft_fields(weights, to_diffusers_path).items()}
    return {**weights.metadata, "format": "pt", DIFFUSERS_METADATA_KEY: json.dumps(diffusers, sort_keys=True)}


def _factor_tensors(weights: LoRAWeights, prefix: str, name: Callable[[str], str], parts: tuple[str, str],
                    dtype: torch.dtype) -> dict[str, Tensor]:
    out = {}
    for p in _ordered(weights):
        for part, t in zip(parts, weights.modules[p]):
            out[f"{prefix}{name(p)}.{part}.weight"] = t.to(dtype)
    return out


def write_peft_folder(dir: str | Path, weights: LoRAWeights, dtype: torch.dtype = torch.float32) -> Path:
    """ACE-Step's adapter folder; the config is written last, so its presence means the weights are complete."""
    dir = Path(dir)
    tensors = _factor_tensors(weights, "base_model.model.", str, ("lora_A", "lora_B"), dtype)
    save_safetensors(tensors, dir / PEFT_WEIGHTS, metadata=_header(weights))
    config = {
        **_peft_fields(weights, str),
        "peft_type": "LORA",
        "task_type": "FEATURE_EXTRACTION",  # what ACE-Step's own trainer writes
        "base_model_name_or_path": weights.metadata.get("base_model"),
        "inference_mode": True,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }
    write_json(dir / PEFT_CONFIG, config)
    return dir


def write_comfyui_file(path: str | Path, weights: LoRAWeights, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Single file with kohya-style names and an fp32 `.alpha` scalar per module."""
    tensors = _factor_tensors(weights, "base_model.model.", str, ("lora_down", "lora_up"), dtype)
    for p in weights.modules:
        tensors[f"base_model.model.{p}.alpha"] = torch.tensor(weights.alpha[p], dtype=torch.float32)
    save_safetensors(tensors, path, metadata={**weights.metadata, "format": "pt"})
    return Path(path)


def write_diffusers_file(path: str | Path, weights: LoRAWeights, dtype: torch.dtype = torch.bfloat16) -> Path:
    """What `AceStepPipeline.save_lora_weights` writes: diffusers names under `transformer.`."""
    tensors = _factor_tensors(weights, "transformer.", to_diffusers_path, ("lora_A", "lora_B"), dtype)
    save_safetensors(tensors, path, metadata=_header(weights))
    return Path(path)


def _pattern_value(pattern: dict, path: str, default):
    """PEFT's rank/alpha_pattern lookup (`(.*\\.)?key$`), tried on both namings of `path`."""
    for key, value in pattern.items():
        if any(re.match(rf"(.*\.)?({key})$", p) for p in (path, to_diffusers_path(path))):
            return value
    return default


def _alphas_from_config(config: dict, paths: list[str], source: str) -> dict[str, float]:
    if "lora_alpha" not in config:
        raise HousevoxError(f"{source}: no lora_alpha in the adapter config")
    pattern = config.get("alpha_pattern") or {}
    return {p: float(_pattern_value(pattern, p, config["lora_alpha"])) for p in paths}


def find_peft_weights(path: Path) -> Path:
    """The safetensors file of a PEFT folder (ACE-Step's trainer nests it in `adapter/`)."""
    for folder in (path, path / "adapter"):
        if (folder / PEFT_WEIGHTS).is_file():
            return folder / PEFT_WEIGHTS
    if any((f / "adapter_model.bin").is_file() for f in (path, path / "adapter")):
        raise HousevoxError(f"{path}: adapter_model.bin (pickle) is not read; re-save the adapter as safetensors")
    raise HousevoxError(f"{path}: no {PEFT_WEIGHTS} in this folder or its adapter/ subfolder")


def parse_key(key: str, source: str) -> tuple[str, str]:
    """(ORIGINAL module path, 'A' | 'B' | 'alpha') of a LoRA key in any of the three layouts."""
    m = _KEY.fullmatch(key)
    if m is None:
        raise HousevoxError(f"{source}: {key!r} is not an ACE-Step v1.5 DiT LoRA key (foreign model or format?)")
    try:
        module = to_original_path(m.group("module"))
    except HousevoxError as exc:
        raise HousevoxError(f"{source}: key {key!r}: {exc}") from None
    return module, "alpha" if m.group("alpha") else "AB"[_PART[m.group("part")]]


def detect_format(keys: list[str]) -> str:
    if any(".lora_down." in k for k in keys):
        return "comfyui"
    if keys and all(k.startswith("transformer.") for k in keys):
        return "diffusers"
    return "peft"


@dataclass
class LoRAFile:
    """What the header of a LoRA file says, read without loading any weight data."""

    file: Path
    format: str
    header: dict[str, str]
    keys: dict[str, tuple[str, str]]  # key -> (ORIGINAL module path, 'A' | 'B' | 'alpha')
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # module -> (A shape, B shape)
    dtypes: dict[str, int]  # safetensors dtype name -> number of factor tensors
    alpha: dict[str, float]
    alpha_source: str

    @property
    def metadata(self) -> dict[str, str]:
        return {k: v for k, v in self.header.items() if k not in _RESERVED_HEADER_KEYS}


def open_lora(path: str | Path) -> LoRAFile:
    """Parse a LoRA's keys, shapes and alphas (format detected from the keys); errors name the file and key."""
    path = Path(path)
    if not path.exists():
        raise HousevoxError(f"{path}: no such file or folder")
    file = find_peft_weights(path) if path.is_dir() else path
    parts: dict[str, dict[str, tuple]] = {}
    keys, dtypes, alphas = {}, Counter(), {}
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
    except (SafetensorError, OSError) as exc:
        raise HousevoxError(f"{file}: not a readable safetensors file ({exc})") from None
    if not keys:
        raise HousevoxError(f"{file}: contains no tensors")
    shapes = {}
    for module in sorted(set(parts) | set(alphas), key=module_sort_key):
        a, b = (parts.get(module, {}).get(x) for x in "AB")
        if a is None or b is None:
            raise HousevoxError(f"{file}: {module} has no {'lora_A' if a is None else 'lora_B'} tensor")
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise HousevoxError(f"{file}: {module}: A {a} and B {b} do not form a LoRA pair")
        shapes[module] = (a, b)
    fmt = detect_format(list(keys))
    alpha, source = _read_alphas(file, fmt, header, alphas, {m: s[0][0] for m, s in shapes.items()})
    return LoRAFile(file, fmt, header, keys, shapes, dict(dtypes), alpha, source)


def read_lora(path: str | Path) -> LoRAWeights:
    """Read any of the three layouts into the canonical form, dtypes as stored."""
    lf = open_lora(path)
    factors: dict[str, dict[str, Tensor]] = {}
    with safe_open(lf.file, framework="pt") as f:
        for key, (module, part) in lf.keys.items():
            if part != "alpha":
                factors.setdefault(module, {})[part] = f.get_tensor(key)
    modules = {m: (factors[m]["A"], factors[m]["B"]) for m in lf.shapes}
    return LoRAWeights(modules, lf.alpha, lf.metadata)


def _read_alphas(file: Path, fmt: str, header: dict, alphas: dict, ranks: dict[str, int]) -> tuple[dict, str]:
    """Alpha per module and where it came from: `.alpha` tensors, adapter_config.json or the diffusers header."""
    if fmt == "comfyui":
        # ComfyUI applies alpha = r (scale 1) when `.alpha` is missing; read it the same way.
        missing = [m for m in ranks if m not in alphas]
        source = f"missing for {len(missing)} modules: alpha = r assumed, as ComfyUI does" if missing else ".alpha tensors"
        return {m: alphas.get(m, float(r)) for m, r in ranks.items()}, source
    config_file = file.parent / PEFT_CONFIG
    if fmt == "peft" and config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise HousevoxError(f"{config_file}: unreadable adapter config ({exc})") from None
        return _alphas_from_config(config, list(ranks), str(config_file)), PEFT_CONFIG
    if DIFFUSERS_METADATA_KEY in header:
        meta = json.loads(header[DIFFUSERS_METADATA_KEY])
        config = {k.removeprefix("transformer."): v for k, v in meta.items()}
        return _alphas_from_config(config, list(ranks), f"{file} header"), f"header {DIFFUSERS_METADATA_KEY}"
    if fmt == "diffusers":
        return {m: float(r) for m, r in ranks.items()}, "none stored: alpha = r assumed, as diffusers does"
    raise HousevoxError(f"{file}: PEFT LoRA without {PEFT_CONFIG} next to it, so its alpha is unknown")


def load_lora_into(dit: nn.Module, weights: LoRAWeights, source: str = "LoRA") -> None:
    """Put `weights` into the DiT: inject adapters if absent, else fill the existing ones (same modules)."""
    modules = dict(dit.named_modules())
    for path, (a, b) in weights.modules.items():
        target = modules.get(to_diffusers_path(path))
        base = getattr(target, "base_layer", target)
        if not isinstance(base, nn.Linear):
            n = len(getattr(dit, "layers", []))
            raise HousevoxError(f"{source}: {path} does not exist in this model ({n} layers)")
        if (base.in_features, base.out_features) != (a.shape[1], b.shape[0]):
            raise HousevoxError(
                f"{source}: {path} is a {a.shape[1]}→{b.shape[0]} LoRA but the model's Linear is "
                f"{base.in_features}→{base.out_features} (a LoRA for another model size?)"
            )
    layers = lora_layers(dit)
    if not layers:
        inject(dit, LoraConfig(**_peft_fields(weights, to_diffusers_path)))
        layers = lora_layers(dit)
    wanted = {to_diffusers_path(p) for p in weights.modules}
    if set(layers) != wanted:
        extra = sorted(set(layers) ^ wanted)[:3]
        raise HousevoxError(f"{source}: adapts other modules than the model's existing adapters (e.g. {', '.join(extra)})")
    with torch.no_grad():
        for path, (a, b) in weights.modules.items():
            layer = layers[to_diffusers_path(path)]
            if layer.r[ADAPTER] != a.shape[0]:
                raise HousevoxError(f"{source}: {path} has rank {a.shape[0]}, the model's adapter rank {layer.r[ADAPTER]}")
            layer.lora_A[ADAPTER].weight.copy_(a)
            layer.lora_B[ADAPTER].weight.copy_(b)
            layer.lora_alpha[ADAPTER] = weights.alpha[path]
            layer.set_scale(ADAPTER, 1.0)
