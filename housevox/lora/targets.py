"""Which DiT Linears get adapters (LoRA, LoKr or DoRA), and putting PEFT adapters on them.

Users name targets the way ACE-Step does (`q_proj ... down_proj`); housevox runs
diffusers' network, whose attention Linears are `to_q/to_k/to_v/to_out.0`. PEFT
silently ignores names that match nothing (the seed's `w1 w2 c_proj`), so we
resolve names to exact module paths ourselves and report what did not match.
"""

import functools
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field

import torch
from peft import LoKrConfig, LoraConfig, PeftConfig, inject_adapter_in_model
from peft.tuners.lokr import LoKrLayer
from peft.tuners.lokr import Linear as LoKrLinear
from peft.tuners.lora import LoraLayer
from torch import nn

from housevox.errors import HousevoxError
from housevox.seeding import derived_generator, derived_seed

log = logging.getLogger("housevox")

ADAPTER = "default"
ADAPTER_TYPES = ("lora", "lokr", "dora")
ADAPTER_NAMES = {"lora": "LoRA", "lokr": "LoKr", "dora": "DoRA"}
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
_ADAPTER_PARAM = re.compile(r"\.(lora_|lokr_)")  # PEFT's parameter names: lora_A/B, lora_magnitude_vector, lokr_w*
ORIGINAL_TO_DIFFUSERS = {
    "q_proj": "to_q",
    "k_proj": "to_k",
    "v_proj": "to_v",
    "o_proj": "to_out.0",
    "gate_proj": "gate_proj",
    "up_proj": "up_proj",
    "down_proj": "down_proj",
}
DIFFUSERS_TO_ORIGINAL = {v: k for k, v in ORIGINAL_TO_DIFFUSERS.items()}
ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_NAMES = ("gate_proj", "up_proj", "down_proj")
BLOCK_KIND = {"self_attn": "self", "cross_attn": "cross", "mlp": "mlp"}
_BLOCK_NAMES = {"self_attn": ATTENTION_NAMES, "cross_attn": ATTENTION_NAMES, "mlp": MLP_NAMES}
_ATTENTION_BLOCKS = {"both": ("self_attn", "cross_attn"), "self": ("self_attn",), "cross": ("cross_attn",)}
_PATH = re.compile(r"layers\.(\d+)\.(self_attn|cross_attn|mlp)\.(.+)")
_NAME_ORDER = {n: i for i, n in enumerate(ATTENTION_NAMES + MLP_NAMES)}
_BLOCK_ORDER = {b: i for i, b in enumerate(BLOCK_KIND)}


def _split(path: str) -> tuple[int, str, str]:
    """(layer, block, ORIGINAL name) of an adaptable module path in either naming, else HousevoxError."""
    m = _PATH.fullmatch(path)
    name = m and DIFFUSERS_TO_ORIGINAL.get(m.group(3), m.group(3))
    if not m or name not in _BLOCK_NAMES[m.group(2)]:
        raise HousevoxError(f"{path!r} is not an adaptable ACE-Step v1.5 DiT module (layers.N.self_attn|cross_attn|mlp.*)")
    return int(m.group(1)), m.group(2), name


def to_original_path(diffusers_module_path: str) -> str:
    """`layers.3.self_attn.to_out.0` → `layers.3.self_attn.o_proj` (ACE-Step / PEFT-file naming)."""
    layer, block, name = _split(diffusers_module_path)
    return f"layers.{layer}.{block}.{name}"


def to_diffusers_path(original_path: str) -> str:
    """`layers.3.self_attn.o_proj` → `layers.3.self_attn.to_out.0` (the module in housevox's DiT)."""
    layer, block, name = _split(original_path)
    return f"layers.{layer}.{block}.{ORIGINAL_TO_DIFFUSERS[name]}"


def module_kind(path: str) -> str:
    """`self`, `cross` or `mlp` for a module path in either naming."""
    return BLOCK_KIND[_split(path)[1]]


def module_sort_key(path: str) -> tuple[int, int, int]:
    """Order by layer, then block (self, cross, mlp), then q k v o gate up down."""
    layer, block, name = _split(path)
    return layer, _BLOCK_ORDER[block], _NAME_ORDER[name]


@dataclass
class LoRASettings:
    """The seed's adapter fields, validated so a typo fails before any model is loaded.

    LoKr (`adapter_type: lokr`) uses rank/alpha as PEFT's LoKrConfig r/alpha; its own knobs are
    the Kronecker split (`lokr_factor`, -1 = near the square root), whether the small factor is
    low-rank too (`lokr_decompose_both`), both factors full (`lokr_full_matrix`: LyCORIS's
    full_matrix, scale 1, rank and alpha unused) and rank dropout (off by default).
    """

    rank: int = 128
    alpha: float = 128.0
    dropout: float = 0.0
    target_modules_str: str = "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj"
    attention_type: str = "both"  # both|self|cross
    bias: str = "none"
    adapter_type: str = "lora"  # lora|lokr|dora
    lokr_factor: int = -1
    lokr_decompose_both: bool = False
    lokr_full_matrix: bool = False
    lokr_rank_dropout: float = 0.0

    def __post_init__(self):
        if self.adapter_type not in ADAPTER_TYPES:
            raise HousevoxError(f"adapter_type: must be one of {', '.join(ADAPTER_TYPES)}; got {self.adapter_type!r}")
        lokr_options = {"lokr_factor": self.lokr_factor != -1, "lokr_decompose_both": self.lokr_decompose_both,
                        "lokr_full_matrix": self.lokr_full_matrix, "lokr_rank_dropout": self.lokr_rank_dropout != 0}
        if self.adapter_type != "lokr" and any(lokr_options.values()):
            raise HousevoxError(f"{next(k for k, v in lokr_options.items() if v)}: only for adapter_type lokr, "
                                f"not {self.adapter_type}")
        if self.adapter_type == "lokr":
            self._check_lokr()
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise HousevoxError(f"rank: must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise HousevoxError(f"alpha: must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise HousevoxError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        if self.attention_type not in _ATTENTION_BLOCKS:
            raise HousevoxError(f"attention_type: must be one of both, self, cross; got {self.attention_type!r}")
        if self.bias != "none":
            # The adapted Linears have no bias, and no LoRA file format here carries trained biases.
            raise HousevoxError(f"bias: only 'none' is supported for ACE-Step LoRA, got {self.bias!r}")
        if not self.target_names:
            raise HousevoxError("target_modules_str: empty, name at least one module (e.g. q_proj)")

    def _check_lokr(self):
        if not (self.lokr_factor == -1 or (isinstance(self.lokr_factor, int) and self.lokr_factor > 0)):
            raise HousevoxError(f"lokr_factor: -1 (automatic) or a positive integer, got {self.lokr_factor!r}")
        if not 0.0 <= self.lokr_rank_dropout < 1.0:
            raise HousevoxError(f"lokr_rank_dropout: must be in [0, 1), got {self.lokr_rank_dropout!r}")
        if self.lokr_full_matrix and self.lokr_decompose_both:
            raise HousevoxError("lokr_full_matrix: excludes lokr_decompose_both (full factors vs low-rank ones)")
        if self.dropout:
            raise HousevoxError("dropout: PEFT's LoKr has no input dropout; set dropout 0 (lokr_rank_dropout exists)")

    @property
    def target_names(self) -> list[str]:
        return list(dict.fromkeys(self.target_modules_str.split()))

    @property
    def peft_rank(self) -> int:
        """PEFT's r: for a full-matrix LoKr one large enough that PEFT keeps every factor full."""
        return _FULL_MATRIX_RANK if self.lokr_full_matrix else self.rank

    @property
    def scale(self) -> float:
        return 1.0 if self.lokr_full_matrix else self.alpha / self.rank

    def peft_config(self, target_modules: list[str]) -> PeftConfig:
        """The PEFT config of these settings on exact module paths."""
        if self.adapter_type == "lokr":
            r = self.peft_rank
            return LoKrConfig(r=r, alpha=r * self.scale, rank_dropout=self.lokr_rank_dropout,
                              decompose_both=self.lokr_decompose_both, decompose_factor=self.lokr_factor,
                              target_modules=target_modules)
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, bias=self.bias,
                          target_modules=target_modules, use_dora=self.adapter_type == "dora")


# PEFT keeps a LoKr factor full when r >= max(its dims)/2; every ACE-Step Linear is far below this.
_FULL_MATRIX_RANK = 1 << 16


@functools.lru_cache(maxsize=256)
def lokr_shapes(in_features: int, out_features: int, r: int, factor: int, decompose_both: bool) -> dict[str, tuple[int, ...]]:
    """The LoKr factors PEFT creates on one Linear (LyCORIS splits the same way: PEFT copied its rules)."""
    config = LoKrConfig(r=r, alpha=r, decompose_factor=factor, decompose_both=decompose_both)
    layer = LoKrLinear(nn.Linear(in_features, out_features, bias=False, device="meta"), ADAPTER, config=config, r=r, alpha=r)
    return {part: tuple(getattr(layer, part)[ADAPTER].shape) for part in LOKR_PARTS if ADAPTER in getattr(layer, part)}


def adapter_shapes(settings: LoRASettings, in_features: int, out_features: int) -> dict[str, tuple[int, ...]]:
    """The trained tensors of one adapted Linear, as PEFT creates them (LoKr's split decided by PEFT itself)."""
    if settings.adapter_type == "lokr":
        return lokr_shapes(in_features, out_features, settings.peft_rank, settings.lokr_factor, settings.lokr_decompose_both)
    shapes = {"lora_A": (settings.rank, in_features), "lora_B": (out_features, settings.rank)}
    if settings.adapter_type == "dora":
        shapes["lora_magnitude_vector"] = (out_features,)
    return shapes


@dataclass
class TargetPlan:
    """The exact diffusers module paths to adapt, and what that costs."""

    module_paths: list[str]
    unmatched_names: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    lora_params: int = 0
    features: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (in, out)


def resolve_targets(dit: nn.Module, settings: LoRASettings) -> TargetPlan:
    """Expand the target names onto the DiT's `layers.N` blocks (works on the meta device)."""
    modules = dict(dit.named_modules())
    blocks = {"mlp": MLP_NAMES}
    for block in _ATTENTION_BLOCKS[settings.attention_type]:
        blocks[block] = ATTENTION_NAMES
    paths, hits = [], Counter()
    for layer_name, _ in dit.layers.named_children():
        for block, names in blocks.items():
            for name in (n for n in settings.target_names if n in names):
                path = f"layers.{layer_name}.{block}.{ORIGINAL_TO_DIFFUSERS[name]}"
                if isinstance(modules.get(path), nn.Linear):
                    paths.append(path)
                    hits[name] += 1
    paths.sort(key=module_sort_key)
    counts = Counter(module_kind(p) for p in paths)
    features = {p: (modules[p].in_features, modules[p].out_features) for p in paths}
    return TargetPlan(
        module_paths=paths,
        unmatched_names=[n for n in settings.target_names if not hits[n]],
        counts={k: counts[k] for k in ("self", "cross", "mlp")},
        lora_params=sum(math.prod(shape) for f in features.values() for shape in adapter_shapes(settings, *f).values()),
        features=features,
    )


def lokr_full_modules(settings: LoRASettings, plan: TargetPlan) -> list[str]:
    """The planned modules whose LoKr factors PEFT keeps both full (ComfyUI then ignores alpha)."""
    return [p for p, (n_in, n_out) in plan.features.items()
            if {"lokr_w1", "lokr_w2"} <= set(adapter_shapes(settings, n_in, n_out))]


def lora_layers(dit: nn.Module) -> dict[str, LoraLayer | LoKrLayer]:
    """PEFT LoRA/DoRA or LoKr layers holding housevox's adapter, by diffusers module path."""
    return {n: m for n, m in dit.named_modules() if isinstance(m, (LoraLayer, LoKrLayer)) and ADAPTER in m.r}


def inject(dit: nn.Module, config: PeftConfig) -> None:
    """Add PEFT adapters, keep them fp32 (a bf16 base still trains in fp32), freeze everything else."""
    inject_adapter_in_model(config, dit, adapter_name=ADAPTER)
    for name, param in dit.named_parameters():
        is_adapter = bool(_ADAPTER_PARAM.search(name))
        if is_adapter and param.dtype != torch.float32:
            param.data = param.data.float()
        param.requires_grad_(is_adapter)


def apply_lora(dit: nn.Module, settings: LoRASettings) -> TargetPlan:
    """Inject LoRA on the resolved targets; log what was adapted and what matched nothing."""
    plan = resolve_targets(dit, settings)
    if plan.unmatched_names:
        log.warning(
            "LoRA target names match no module in ACE-Step v1.5 and were ignored: %s", ", ".join(plan.unmatched_names)
        )
    if not plan.module_paths:
        raise HousevoxError(f"target_modules_str {settings.target_modules_str!r} matches no module of the DiT")
    inject(dit, settings.peft_config(plan.module_paths))
    _seed_dropout_per_sample(dit)
    trainable = sum(p.numel() for p in dit.parameters() if p.requires_grad)
    c = plan.counts
    log.info(
        "%s: %d modules adapted (self %d / cross %d / mlp %d), %s trainable parameters", ADAPTER_NAMES[settings.adapter_type],
        len(plan.module_paths), c["self"], c["cross"], c["mlp"], f"{trainable:,}",
    )
    return plan


class SampleSeededDropout(nn.Module):
    """LoRA input dropout whose mask for each row comes from (that sample's seed, module path).

    A sample gets the same mask whichever batch, position or rank it lands in, so the dropout
    does not depend on the batch split. The seeds stay set until the next step, so gradient
    checkpointing's recomputation draws the same masks.
    """

    def __init__(self, p: float, path: str):
        super().__init__()
        self.p, self.path, self.seeds = p, path, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.seeds is None or len(self.seeds) != x.shape[0]:
            raise RuntimeError(f"{self.path}: LoRA dropout needs one sample seed per row (set_sample_seeds)")
        keep = torch.stack([
            torch.rand(x.shape[1:], device=x.device,
                       generator=torch.Generator(x.device).manual_seed(derived_seed(seed, self.path))) >= self.p
            for seed in self.seeds])
        return x * keep.to(x.dtype) / (1 - self.p)


def _seed_dropout_per_sample(dit: nn.Module) -> None:
    for path, layer in lora_layers(dit).items():
        dropouts = getattr(layer, "lora_dropout", None)  # LoKr has none
        dropout = dropouts[ADAPTER] if dropouts is not None and ADAPTER in dropouts else None
        if isinstance(dropout, nn.Dropout) and dropout.p > 0:
            layer.lora_dropout[ADAPTER] = SampleSeededDropout(dropout.p, path)


def set_sample_seeds(dit: nn.Module, seeds: list[int]) -> None:
    """The per-row seeds of the coming micro-batch, for every sample-seeded LoRA dropout."""
    for module in dit.modules():
        if isinstance(module, SampleSeededDropout):
            module.seeds = seeds


def _init_factor(param: torch.Tensor, random: bool, *seed_parts) -> None:
    """Kaiming-uniform drawn on the CPU in fp32 from (run seed, part, path), or zero."""
    fresh = torch.zeros(param.shape)
    if random:
        nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=derived_generator(*seed_parts))
    with torch.no_grad():
        param.copy_(fresh)


def init_lora_weights(dit: nn.Module, run_seed: int) -> None:
    """PEFT's init laws, every random factor drawn from (run seed, factor, module path) instead of the global RNG.

    LoRA/DoRA: A kaiming-uniform, B zero (DoRA's magnitude stays PEFT's ‖W‖, which is not random).
    LoKr: PEFT's `reset_adapter_parameters`: the w1 side zero (w1, or w1_a with w1_b random),
    the w2 side random. Drawn on the CPU in fp32, so the init is the same on every device and
    does not depend on which other modules are adapted or on what ran earlier in the process.
    """
    for path, layer in lora_layers(dit).items():
        if isinstance(layer, LoKrLayer):
            for part in LOKR_PARTS:
                if ADAPTER in getattr(layer, part):
                    _init_factor(getattr(layer, part)[ADAPTER], part not in ("lokr_w1", "lokr_w1_a"), run_seed, part, path)
        else:
            _init_factor(layer.lora_A[ADAPTER].weight, True, run_seed, "lora_A", path)
            _init_factor(layer.lora_B[ADAPTER].weight, False)


class _AutocastForward:
    """A PEFT layer's own forward run under autocast: its fp32 adapter weights enter each matmul as `dtype` copies."""

    def __init__(self, forward, dtype: torch.dtype):
        self.forward, self.dtype = forward, dtype

    def __call__(self, x, *args, **kwargs):
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.forward(x, *args, **kwargs)


def set_adapter_compute_dtype(dit: nn.Module, dtype: torch.dtype | None) -> None:
    """Run the adapters' matmuls in `dtype` (bf16 on a bf16 base) with fp32 master weights; None: PEFT's fp32 math.

    PEFT casts each adapted Linear's bf16 input up to its fp32 weights, so the adapter math of a
    bf16 base runs as fp32 matmuls with two casts of every activation. With a compute dtype,
    PEFT's input cast is off and the layer runs under autocast: the small fp32 weights are cast
    to bf16 per forward, the gradients still land on them in fp32, so the optimizer, checkpoints
    and exports see fp32 weights exactly as before.
    """
    for layer in lora_layers(dit).values():
        plain = layer.forward.forward if isinstance(layer.forward, _AutocastForward) else layer.forward
        layer.cast_input_dtype_enabled = dtype is None
        if dtype is None:
            layer.__dict__.pop("forward", None)
        else:
            layer.forward = _AutocastForward(plain, dtype)


def set_lora_scale(dit: nn.Module, scale: float) -> None:
    """Set every adapter's strength to scale·alpha/r (absolute, not cumulative); 0 gives the base output."""
    layers = lora_layers(dit)
    if not layers:
        raise HousevoxError("set_lora_scale: the model has no LoRA adapters")
    for layer in layers.values():
        layer.set_scale(ADAPTER, scale)
