"""Predicted GPU memory and step time of a LoRA run, from one real training step on fake tensors.

The step is production's: `HouseVoxLoRA` built from the checkpoint's config on the meta device
(no weights), its loss, backward, gradient clipping and optimizer, run twice under
FakeTensorMode while `LiveBytes` counts every live storage; the second step (optimizer state
present, grads of the first step alive until `zero_grad`, as Lightning orders it) gives the
peak. FLOPs of the same step come from FlopCounterMode. Modelled, not traced (and labelled so):

- int8/NF4 frozen weights: the trace holds the bf16 base; bitsandbytes' layout replaces it
  (int8: 1 B per weight + an fp32 scale per row; NF4 blocksize 64 with double-quantised absmax:
  0.5 B per weight + 1 B per 64 weights + 4 B per 64·256), plus one weight dequantised to bf16
  during each quantised matmul. int8's own saved input copies are not modelled (with
  checkpointing they live for one block only).
- bitsandbytes' AdamW8bit: its state buffers are allocated by bitsandbytes' own `init_state`
  under fake tensors; its update kernel runs in place and is not run.
- The CUDA context and cuBLAS workspace: a stated allowance, outside torch's allocator counters.

A preview/eval render mid-training (`render_peak`) keeps the step's resident state but not its gradients, loads
the encoders and the fp32 VAE (sizes from the checkpoint's files where it has them), and traces one no-grad DiT
forward at the CFG batch and one VAE tile decode the same way.
"""

import contextlib
import functools
import json
import logging
import math
import weakref
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from housevox.acestep import flow
from housevox.errors import HousevoxError
from housevox.train.optim import OPTIMIZERS
from housevox.train.quantize import QUANTIZE_MODES
from housevox.train.synthetic import CONDITION_TOKENS, SEGMENT_FRAMES, SyntheticBaseLoRA, synthetic_sample, with_depth

FROZEN, LORA, GRADS, OPTIMIZER, ACTIVATIONS = ("frozen weights", "LoRA parameters", "gradients", "optimizer state",
                                               "activations and temporaries")
CATEGORIES = (FROZEN, LORA, GRADS, OPTIMIZER, ACTIVATIONS)
CUDA_BLOCK = 512  # the CUDA caching allocator rounds every allocation up to this
CUDA_CONTEXT_GIB = 0.50  # allowance: CUDA context + kernels (not in torch's counters)
CUDA_WORKSPACE_GIB = 0.0625  # allowance: cuBLAS/cuBLASLt workspaces
EXTRAPOLATE_FROM = (2, 4)  # block counts traced for a deeper base (even: sliding/full pairs)
# Host time per eager op (Python + dispatcher + launch), measured on this project's 2-core VM (eager linear/mul/add
# on tiny tensors: 11.3 us per op, benchmarks/RESULTS.md); a CUDA launch adds a few us, not measured (no GPU).
HOST_SECONDS_PER_OP = 11.3e-6
UTILISATION = 0.40  # of the dense bf16 peak; the seed's own 3090 run reached ~38 % (benchmarks/RESULTS.md)
# Cards: (memory GiB, dense bf16 tensor TFLOP/s with fp32 accumulate), from NVIDIA's data sheets/whitepapers.
GPUS = {"rtx3090": (24.0, 35.6), "rtx4090": (24.0, 165.2), "l4": (22.5, 121.0), "a100-40gb": (40.0, 312.0),
        "a100-80gb": (80.0, 312.0), "h100": (79.6, 989.0), "h200": (139.8, 989.0)}
GPU_NAME_PATTERNS = (("3090", "rtx3090"), ("4090", "rtx4090"), ("L4", "l4"), ("A100", "a100-80gb"),
                     ("H100", "h100"), ("H200", "h200"))


aten = torch.ops.aten


def _grouped(q: torch.Tensor, kv: torch.Tensor) -> tuple[int, ...]:
    """`kv`'s shape with the query's head count: grouped-query attention costs as many FLOPs per query head."""
    return (kv.shape[0], q.shape[1], *kv.shape[2:])


def _cpu_attention_flops(q, k, v, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(q.shape, _grouped(q, k), _grouped(q, v))


def _cpu_attention_backward_flops(grad_out, q, k, v, *args, out_val=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out.shape, q.shape, _grouped(q, k), _grouped(q, v))


# The fake trace runs the CPU attention kernels; they count as the CUDA kernels a GPU run would use.
_FLOP_FORMULAS = {**flop_registry,
                  aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
                  aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops}


class LiveBytes(TorchDispatchMode):
    """Bytes of every live tensor storage by category, the breakdown when the total peaked, and FLOPs.

    Storages are tagged when an op creates them (as `phase`) or when `tag` is called; a weak
    reference untallies them when they are freed. Works the same on real and fake tensors.
    FLOPs use torch.utils.flop_counter's formulas; FlopCounterMode itself is not used because its
    module hooks keep checkpoint-recomputed activations alive through the backward.
    """

    def __init__(self, round_to: int = 1):
        super().__init__()
        self.round_to = round_to
        self.phase = ACTIVATIONS
        self.flops = 0
        self.ops = 0  # aten ops dispatched, views aside: what the host must issue one by one in eager mode
        self.current = dict.fromkeys(CATEGORIES, 0)
        self.peak = dict(self.current)
        self._live: dict[int, list] = {}  # id(storage) -> [weakref, category, bytes]

    def _bytes(self, storage) -> int:
        return math.ceil(storage.nbytes() / self.round_to) * self.round_to

    def _freed(self, key: int, _ref) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.current[entry[1]] -= entry[2]

    def tag(self, tensor: torch.Tensor, category: str) -> None:
        """Count `tensor`'s storage under `category` (moving it there if it is already counted)."""
        storage = tensor.untyped_storage()
        entry = self._live.get(id(storage))
        if entry is None:
            key = id(storage)
            entry = self._live[key] = [weakref.ref(storage, lambda ref, key=key: self._freed(key, ref)), category,
                                       self._bytes(storage)]
            self.current[category] += entry[2]
        elif entry[1] != category:
            self.current[entry[1]] -= entry[2]
            self.current[category] += entry[2]
            entry[1] = category
        self._note_peak()

    def _note_peak(self) -> None:
        if sum(self.current.values()) > sum(self.peak.values()):
            self.peak = dict(self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += not func.is_view  # views launch no kernel
        formula = _FLOP_FORMULAS.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **(kwargs or {}), out_val=out)
        tree_map_only(torch.Tensor, self._tag_new, out)
        self._note_peak()
        return out

    def _tag_new(self, tensor: torch.Tensor) -> None:
        if not tensor.is_meta and id(tensor.untyped_storage()) not in self._live:  # meta tensors hold no memory
            self.tag(tensor, self.phase)


@dataclass(frozen=True)
class RunShape:
    """What a run's memory depends on: the module's settings and the batch."""

    rank: int = 128
    target_modules_str: str = "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj"
    attention_type: str = "both"
    gradient_checkpointing: bool = True
    quantize_base: str = "none"
    optimizer_type: str = "adamw8bit"
    min_8bit_size: int = 4096
    batch_size: int = 1
    frames: int = SEGMENT_FRAMES
    cond_len: int = CONDITION_TOKENS

    @classmethod
    def from_settings(cls, settings: dict, **overrides) -> "RunShape":
        """The shape of a run from its config fields (HouseVoxLoRA's names; missing ones take its defaults)."""
        known = {f: settings[f] for f in cls.__dataclass_fields__ if settings.get(f) is not None}
        shape = cls(**{**known, **overrides})
        if shape.quantize_base not in QUANTIZE_MODES:
            raise HousevoxError(f"quantize_base: {shape.quantize_base!r} is not one of {', '.join(QUANTIZE_MODES)}")
        if shape.optimizer_type not in OPTIMIZERS:
            raise HousevoxError(f"optimizer_type: unknown optimizer {shape.optimizer_type!r} (choose from {', '.join(OPTIMIZERS)})")
        return replace(shape, rank=int(shape.rank), batch_size=int(shape.batch_size),
                       gradient_checkpointing=bool(shape.gradient_checkpointing))

    def describe(self) -> str:
        return (f"r {self.rank}, {self.attention_type} attention, checkpointing {'on' if self.gradient_checkpointing else 'off'}, "
                f"quantize_base {self.quantize_base}, {self.optimizer_type}, batch {self.batch_size}, "
                f"T {self.frames}, L {self.cond_len}")


@dataclass(frozen=True)
class Prediction:
    """Peak bytes by category (traced, with the modelled parts applied), FLOPs of one micro-batch."""

    shape: RunShape
    peak: dict
    flops: float
    modelled: tuple[str, ...]
    ops: float = 0.0  # aten ops of one micro-batch (CPU dispatch of the traced step)
    load_bytes: int = 0  # peak while loading the base: frozen weights (+ one bf16 Linear being quantised)

    @property
    def allocated(self) -> int:
        """What torch.cuda.max_memory_allocated would report."""
        return sum(self.peak.values())

    @property
    def on_card_gib(self) -> float:
        """Allocated peak plus the context/workspace allowance: what the card must hold."""
        return self.allocated / 2**30 + CUDA_CONTEXT_GIB + CUDA_WORKSPACE_GIB

    def step_seconds(self, tflops: float, utilisation: float = UTILISATION) -> float:
        """Seconds per micro-batch (forward + backward + recompute) at `utilisation` of a `tflops` peak."""
        return self.flops / (tflops * 1e12 * utilisation)

    @property
    def host_seconds(self) -> float:
        """Seconds the host needs to issue the micro-batch's ops one by one (eager PyTorch)."""
        return self.ops * HOST_SECONDS_PER_OP


def _fake_materialise(module: nn.Module, mode: FakeTensorMode, device: str) -> None:
    """Replace every meta parameter and buffer by a fake tensor of the same shape and dtype on `device`."""
    made: dict[int, torch.Tensor] = {}
    with mode:
        for sub in module.modules():
            for store in (sub._parameters, sub._buffers):
                for name, t in store.items():
                    if t is None:
                        continue
                    if id(t) not in made:
                        fake = torch.empty(t.shape, dtype=t.dtype, device=device)
                        made[id(t)] = nn.Parameter(fake, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else fake
                    store[name] = made[id(t)]


def _optimizer_step(optimizer, traced: bool) -> None:
    """The optimizer step; under fake tensors bitsandbytes only allocates its state (its kernel works in place)."""
    if traced and hasattr(optimizer, "init_state"):
        for gindex, group in enumerate(optimizer.param_groups):
            for pindex, p in enumerate(group["params"]):
                if p.grad is not None and not optimizer.state[p]:
                    optimizer.init_state(group, p, gindex, pindex)
        return
    optimizer.step()


def measure_steps(module: SyntheticBaseLoRA, shape: RunShape, tracker: LiveBytes, fake: FakeTensorMode | None = None,
                  steps: int = 2) -> float:
    """Run `steps` optimizer steps of `module` under `tracker` (inside `fake` when given); FLOPs of the last.

    Lightning's order per optimizer step (batch size `shape.batch_size`, no accumulation): forward,
    zero_grad (set to None), backward, gradient clipping, optimizer step.
    """
    cfg = module.config
    sample = synthetic_sample(cfg, shape.frames, shape.cond_len)
    gen = torch.Generator().manual_seed(0)
    batch = {k: v.expand(shape.batch_size, *v.shape).contiguous() for k, v in sample.items()}
    noise = torch.randn(batch["target_latents"].shape, generator=gen)
    t = flow.sample_timesteps(shape.batch_size, cfg.timestep_mu, cfg.timestep_sigma, gen)
    optimizer = module.configure_optimizers()  # outside the fake mode: bitsandbytes builds real lookup tables
    if fake is not None:
        batch, noise, t = ({k: fake.from_tensor(v) for k, v in batch.items()}, fake.from_tensor(noise), fake.from_tensor(t))
    for name, p in module.named_parameters():
        tracker.tag(p, LORA if p.requires_grad else FROZEN)
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda p: tracker.tag(p.grad, GRADS))
    for b in module.buffers():
        tracker.tag(b, FROZEN)
    with fake if fake is not None else contextlib.nullcontext(), tracker:
        for k, v in (*batch.items(), ("noise", noise), ("t", t)):
            tracker.tag(v, ACTIVATIONS)
        for _ in range(steps):
            tracker.flops = tracker.ops = 0
            loss = module.flow_loss(batch, t, noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            del loss
            module.configure_gradient_clipping(optimizer)
            tracker.phase = OPTIMIZER
            _optimizer_step(optimizer, traced=fake is not None)
            for state in optimizer.state.values():
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        tracker.tag(value, OPTIMIZER)
            tracker.phase = ACTIVATIONS
    return float(tracker.flops)


def measure_load(checkpoint_dir, mode: str, while_loading: bool = True) -> tuple[int, int, nn.Module]:
    """(peak, final) live bytes of loading the DiT in bf16 for `quantize_base: mode`, and the DiT, measured on real
    tensors by LiveBytes: as housevox loads it (each block Linear quantised as its weight arrives) or, with
    `while_loading` False, the whole bf16 DiT first. Read tensors are made outside the dispatcher: tagged on arrival."""
    from housevox.acestep import load_dit
    from housevox.train.quantize import QuantiseOnArrival, quantize_frozen_base

    tracker = LiveBytes()
    quantise = QuantiseOnArrival(mode) if while_loading else None

    def arrived(dit: nn.Module, name: str) -> None:
        owner, _, leaf = name.rpartition(".")
        tracker.tag(getattr(dit.get_submodule(owner), leaf), FROZEN)
        if quantise is not None:
            quantise(dit, name)

    with tracker:
        dit = load_dit(checkpoint_dir, dtype=torch.bfloat16, as_loaded=arrived)
        quantize_frozen_base(dit, mode)
    return sum(tracker.peak.values()), sum(tracker.current.values()), dit


def module_for(base: dict, shape: RunShape, weights: str, base_dtype: torch.dtype | None) -> SyntheticBaseLoRA:
    """The production module of this run shape on a synthetic base (quantisation is modelled, not built)."""
    module = SyntheticBaseLoRA(base, weights=weights, base_dtype=base_dtype, rank=shape.rank, alpha=float(shape.rank),
                               target_modules_str=shape.target_modules_str, attention_type=shape.attention_type,
                               gradient_checkpointing=shape.gradient_checkpointing, optimizer_type=shape.optimizer_type,
                               min_8bit_size=shape.min_8bit_size, quantize_base="none", seed=0)
    module.configure_model()
    return module


def quantised_bytes(out_features: int, in_features: int, mode: str) -> int:
    """bitsandbytes' storage for one frozen Linear weight (see the module docstring for the layouts)."""
    n = out_features * in_features
    if mode == "int8":
        return n + 4 * out_features
    blocks = math.ceil(n / 64)
    return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / 256) + 4 * 256 + 4  # + nested code and offset


def _quantisable(dit: nn.Module) -> list[nn.Linear]:
    """The Linears `quantize_frozen_base` replaces: plain Linears in the blocks (PEFT's base layers, not LoRA A/B)."""
    return [m for name, m in dit.layers.named_modules() if type(m) is nn.Linear and ".lora_" not in name]


def _fake_module(base: dict, shape: RunShape, dtype: torch.dtype) -> tuple[SyntheticBaseLoRA, FakeTensorMode]:
    """The run's module with fake weights, and their FakeTensorMode."""
    housevox_log = logging.getLogger("housevox")
    level = housevox_log.level
    housevox_log.setLevel(logging.ERROR)  # the lint already reports the targets; the trace's module must not repeat it
    try:
        module = module_for(base, shape, "meta", dtype)
    finally:
        housevox_log.setLevel(level)
    fake = FakeTensorMode()
    _fake_materialise(module, fake, "cpu")
    return module, fake


def _trace(base: dict, shape: RunShape, dtype: torch.dtype, round_to: int
           ) -> tuple[dict, float, int, list[tuple[int, int]]]:
    """Peak, FLOPs, op count and the quantisable Linears' (out, in) of one fake-tensor trace (cached: suggestions reuse it)."""
    return _cached_trace(json.dumps(base, sort_keys=True), shape, dtype, round_to)


@functools.lru_cache(maxsize=16)
def _cached_trace(base_json: str, shape: RunShape, dtype: torch.dtype, round_to: int):
    module, fake = _fake_module(json.loads(base_json), shape, dtype)
    tracker = LiveBytes(round_to=round_to)
    flops = measure_steps(module, shape, tracker, fake)
    return dict(tracker.peak), flops, tracker.ops, [(m.out_features, m.in_features) for m in _quantisable(module.dit)]


def predict(base: dict, shape: RunShape, dtype: torch.dtype = torch.bfloat16, round_to: int = CUDA_BLOCK) -> Prediction:
    """Predicted peak of one CUDA training step of `shape` on the base `base` (upstream config dict).

    A base deeper than EXTRAPOLATE_FROM[-1] blocks is traced at EXTRAPOLATE_FROM depths and
    extended linearly: its blocks are identical in shape, so every category (and the FLOPs) grows
    by the same amount per block (tests check this against a full trace).
    """
    traced = replace(shape, quantize_base="none")
    layers = int(base["num_hidden_layers"])
    if layers > EXTRAPOLATE_FROM[-1]:
        (low, low_flops, low_ops, _), (high, high_flops, high_ops, linears) = (_trace(with_depth(base, n), traced, dtype, round_to)
                                                            for n in EXTRAPOLATE_FROM)
        per_block = (layers - EXTRAPOLATE_FROM[0]) / (EXTRAPOLATE_FROM[1] - EXTRAPOLATE_FROM[0])
        peak = {k: round(low[k] + (high[k] - low[k]) * per_block) for k in CATEGORIES}
        flops = low_flops + (high_flops - low_flops) * per_block
        ops = low_ops + (high_ops - low_ops) * per_block
        blocks_traced = EXTRAPOLATE_FROM[-1]
    else:
        cached, flops, ops, linears = _trace(base, traced, dtype, round_to)
        peak = dict(cached)
        blocks_traced = layers
    modelled = []
    if layers > EXTRAPOLATE_FROM[-1]:
        modelled.append(f"{layers} blocks extended linearly from traces at {' and '.join(map(str, EXTRAPOLATE_FROM))}")
    if shape.optimizer_type == "adamw8bit":
        modelled.append("AdamW8bit state: allocated by bitsandbytes' init_state; its in-place update kernel is not run")
    if shape.quantize_base != "none":
        scale = layers / blocks_traced
        element = torch.empty((), dtype=dtype).element_size()
        full = round(scale * sum(o * i * element for o, i in linears))
        quant = round(scale * sum(quantised_bytes(o, i, shape.quantize_base) for o, i in linears))
        transient = max(o * i * 2 for o, i in linears)
        peak[FROZEN] += quant - full
        peak[ACTIVATIONS] += transient
        modelled.append(f"{shape.quantize_base} frozen weights from bitsandbytes' layout ({quant / 2**30:.2f} GiB "
                        f"for {full / 2**30:.2f} GiB bf16) + one weight dequantised during its matmul "
                        f"({transient / 2**20:.0f} MiB)")
    # Loading holds the frozen weights and, quantising, one block Linear in bf16 as it arrives (quantise-while-loading;
    # benchmarks/quantised_load_peak.py measures it on the CPU).
    load = peak[FROZEN] + (transient if shape.quantize_base != "none" else 0)
    return Prediction(shape, peak, flops, tuple(modelled), ops, load)


# Qwen3-Embedding-0.6B from its published config (vocab 151669, width 1024, 28 layers, MLP 3072, 16/8 heads of 128),
# used when no checkpoint folder holds the text encoder's files.
TEXT_ENCODER_PARAMS = 595_776_512
PREVIEW_TAKES, PREVIEW_FRAMES = 1, 250  # train/preview.py: one 10 s take
RENDER_BATCH = 4  # Renderer.render_batch's default sampler batch (eval renders eval_takes in batches of it)


@dataclass(frozen=True)
class RenderPrediction:
    """Peak of a preview / fit-time eval render mid-training (borrowed_renderer: gradients freed first)."""

    takes: int
    frames: int
    resident: int  # frozen base + LoRA + optimizer state, as at the training peak
    encoders: int  # condition encoder + text encoder, in the model dtype
    vae: int  # the VAE's fp32 weights
    sampler: int  # activations of one no-grad DiT forward at batch 2 x takes (CFG)
    decode: int  # activations of one VAE tile decode
    sources: tuple[str, ...]

    @property
    def allocated(self) -> int:
        """Everything the renderer loads stays for the whole render; sampling and decoding follow one another."""
        return self.resident + self.encoders + self.vae + max(self.sampler, self.decode)

    @property
    def on_card_gib(self) -> float:
        return self.allocated / 2**30 + CUDA_CONTEXT_GIB + CUDA_WORKSPACE_GIB


@functools.lru_cache(maxsize=16)
def _sampler_trace(base_json: str, shape: RunShape, batch: int, frames: int, dtype: torch.dtype, round_to: int) -> int:
    """Live activation bytes of one no-grad, eval-mode forward of the run's DiT (adapters on) at `batch` x `frames`."""
    module, fake = _fake_module(json.loads(base_json), shape, dtype)
    module.dit.eval()
    sample = synthetic_sample(module.config, frames, shape.cond_len)
    x = {k: fake.from_tensor(v.expand(batch, *v.shape).contiguous().to(dtype if v.is_floating_point() else v.dtype))
         for k, v in sample.items()}
    t = fake.from_tensor(torch.full((batch,), 0.5, dtype=dtype))
    tracker = LiveBytes(round_to=round_to)
    for tensor in (*module.parameters(), *module.buffers()):
        tracker.tag(tensor, FROZEN)  # weights are not the forward's: their views must not count as activations
    with fake, torch.no_grad(), tracker:
        for v in (*x.values(), t):
            tracker.tag(v, ACTIVATIONS)
        module.dit(x["target_latents"], t, t, x["encoder_hidden_states"], x["context_latents"])
    return tracker.peak[ACTIVATIONS]


@functools.lru_cache(maxsize=4)
def _decode_trace(vae_json: str, frames: int, round_to: int) -> tuple[int, int]:
    """(fp32 weight bytes, live activation bytes of one fp32 decode of `frames` latent frames) of the Oobleck VAE."""
    import warnings

    from diffusers import AutoencoderOobleck

    dims = json.loads(vae_json)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", FutureWarning)
        vae = AutoencoderOobleck(**dims)
    weights = sum(p.numel() * 4 for p in vae.parameters())
    fake = FakeTensorMode()
    _fake_materialise(vae, fake, "cpu")
    tracker = LiveBytes(round_to=round_to)
    for tensor in (*vae.parameters(), *vae.buffers()):
        tracker.tag(tensor, FROZEN)
    with fake, torch.no_grad():
        latents = torch.empty(1, dims["decoder_input_channels"], frames)
        with tracker:
            tracker.tag(latents, ACTIVATIONS)
            vae.decode(latents)
    return weights, tracker.peak[ACTIVATIONS]


def _tensor_bytes(files, dtype: torch.dtype) -> int:
    """Bytes of every tensor in these safetensors files once loaded in `dtype` (read from their headers)."""
    from safetensors import safe_open

    element, total = torch.empty((), dtype=dtype).element_size(), 0
    for path in files:
        with safe_open(str(path), "pt") as fh:
            total += sum(math.prod(fh.get_slice(key).get_shape()) for key in fh.keys()) * element
    return total


def _render_parts(base: dict, checkpoint_dir, dtype: torch.dtype) -> tuple[int, dict, tuple[str, ...]]:
    """(encoder bytes, VAE dims, sources): from the checkpoint folder's files where it has them, else the configs."""
    from pathlib import Path

    from housevox.acestep.config import AceStepConfig
    from housevox.acestep.presets import REAL_VAE
    from housevox.acestep.modules import build_condition_encoder

    element = torch.empty((), dtype=dtype).element_size()
    condition = sum(p.numel() for p in build_condition_encoder(AceStepConfig.from_upstream(base)).parameters()) * element
    text_dir = vae_dir = None
    if checkpoint_dir and Path(checkpoint_dir).is_dir():
        from housevox.acestep.checkpoint import locate_checkpoint

        try:
            found = locate_checkpoint(checkpoint_dir)
            text_dir, vae_dir = found.text_encoder_dir, found.vae_dir
        except HousevoxError:
            pass
    text_files = sorted(Path(text_dir).glob("*.safetensors")) if text_dir else []
    if text_files:
        text, text_source = _tensor_bytes(text_files, dtype), f"text encoder from {text_dir}'s tensors"
    else:
        text, text_source = TEXT_ENCODER_PARAMS * element, "text encoder from Qwen3-Embedding-0.6B's published config"
    vae_config = Path(vae_dir) / "config.json" if vae_dir else None
    if vae_config is not None and vae_config.is_file():
        raw = json.loads(vae_config.read_text())
        vae_dims = {k: raw[k] for k in REAL_VAE if k in raw}
        vae_source = f"VAE from {vae_config}"
    else:
        vae_dims, vae_source = dict(REAL_VAE), "VAE from ACE-Step's Oobleck config"
    return condition + text, vae_dims, ("condition encoder from the model config", text_source, vae_source)


def render_peak(base: dict, p: Prediction, takes: int, frames: int, checkpoint_dir=None,
                dtype: torch.dtype = torch.bfloat16, round_to: int = CUDA_BLOCK) -> RenderPrediction:
    """Predicted peak of rendering `takes` takes of `frames` latent frames from the run `p` mid-training.

    Resident: the training peak's frozen weights, LoRA parameters and optimizer state (gradients are
    freed by borrowed_renderer). Loaded for the render: the encoders (model dtype) and the fp32 VAE.
    Traced on fake tensors: the DiT's no-grad forward at batch 2 x takes (CFG) and one VAE decode of
    a tile (decode_tiled's widest). A deeper base is extended linearly from two depths, as `predict`.
    """
    from housevox.generate import DECODE_OVERLAP_FRAMES, DECODE_TILE_FRAMES

    traced = replace(p.shape, quantize_base="none", batch_size=1)
    layers = int(base["num_hidden_layers"])
    if layers > EXTRAPOLATE_FROM[-1]:
        low, high = (_sampler_trace(json.dumps(with_depth(base, n), sort_keys=True), traced, 2 * takes, frames, dtype,
                                    round_to) for n in EXTRAPOLATE_FROM)
        sampler = round(low + (high - low) * (layers - EXTRAPOLATE_FROM[0]) / (EXTRAPOLATE_FROM[1] - EXTRAPOLATE_FROM[0]))
    else:
        sampler = _sampler_trace(json.dumps(base, sort_keys=True), traced, 2 * takes, frames, dtype, round_to)
    encoders, vae_dims, sources = _render_parts(base, checkpoint_dir, dtype)
    tile = min(frames, DECODE_TILE_FRAMES + 2 * DECODE_OVERLAP_FRAMES)
    vae, decode = _decode_trace(json.dumps(vae_dims, sort_keys=True), tile, round_to)
    resident = p.peak[FROZEN] + p.peak[LORA] + p.peak[OPTIMIZER]
    return RenderPrediction(takes, frames, resident, encoders, vae, sampler, decode, sources)


def describe_render(label: str, r: RenderPrediction, configured: bool) -> str:
    """The lint's line for one render."""
    return (f"render peak ({label}: {r.takes} take(s) x {r.frames / 25:g} s{'' if configured else ', not configured'}): "
            f"{_gib(r.allocated)} allocated = resident weights and optimizer state {_gib(r.resident)} + encoders "
            f"{_gib(r.encoders)} + VAE {_gib(r.vae)} + max(sampler forward {_gib(r.sampler)}, VAE tile decode "
            f"{_gib(r.decode)}) = {r.on_card_gib:.2f} GiB on the card ({'; '.join(r.sources)})")


def ddp_rank_extra(p: Prediction, bucket_view: bool = True) -> int:
    """Bytes one DDP rank holds beyond the single-process peak `p`: the reducer's gradient buckets.

    The buckets are one flat copy of every trainable parameter's gradient, allocated at the first
    backward and kept for the run. With gradient_as_bucket_view (fit's `strategy: ddp`) the gradients
    are views of them, so what remains is the part of the gradients a single process has freed at its
    peak (zero_grad sets them to None); without it the buckets are a second copy beside the gradients.
    """
    buckets = p.peak[LORA]  # the gradients have their parameters' dtype and size
    return max(buckets - p.peak[GRADS], 0) if bucket_view else buckets


def on_card_gib(p: Prediction, ranks: int = 1) -> float:
    """What the card must hold: `p.on_card_gib`, plus the DDP extras when the run has more than one rank."""
    return p.on_card_gib + (ddp_rank_extra(p) / 2**30 if ranks > 1 else 0.0)


def card_for(device_name: str) -> str | None:
    """The GPUS key of a CUDA device name, when known."""
    return next((key for pattern, key in GPU_NAME_PATTERNS if pattern in device_name), None)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def describe(p: Prediction, gpu: str | None = None, ranks: int = 1) -> list[str]:
    """Lines for the lint: the breakdown, the allowance, the total (per DDP rank too) and the predicted step time."""
    lines = [f"predicted peak GPU memory ({p.shape.describe()}): {_gib(p.allocated)} allocated = "
             + " + ".join(f"{name} {_gib(b)}" for name, b in p.peak.items()),
             f"  + CUDA context/workspace allowance {CUDA_CONTEXT_GIB + CUDA_WORKSPACE_GIB:.2f} GiB "
             f"= {p.on_card_gib:.2f} GiB on the card"]
    if p.load_bytes:
        lines.append(f"  while loading the base: {_gib(p.load_bytes)} (frozen weights"
                     + (", each block Linear quantised as it arrives: + one in bf16)" if p.shape.quantize_base != "none"
                        else ")") + ", below the training peak")
    if ranks > 1:
        lines.append(f"  per DDP rank ({ranks} ranks): + {_gib(ddp_rank_extra(p))} of DDP's gradient buckets "
                     f"({_gib(p.peak[LORA])}, kept for the run; with gradient_as_bucket_view the gradients are their "
                     f"views, not a second copy) = {on_card_gib(p, ranks):.2f} GiB on each card; NCCL's own "
                     f"communication buffers are outside torch's allocator and not counted")
    lines += [f"  modelled, not traced: {m}" for m in p.modelled]
    cards = [gpu] if gpu else ["rtx3090", "h100"]
    times = ", ".join(f"{p.step_seconds(GPUS[c][1]):.3f} s on {c}" for c in cards)
    work = "forward + backward" + (" + recompute" if p.shape.gradient_checkpointing else "")
    lines.append(f"predicted step time per micro-batch: {p.flops / 1e12:.2f} TFLOP ({work}) -> {times} "
                 f"(at {UTILISATION:.0%} of the dense bf16 peak)")
    if p.ops:
        bounds = ", ".join(f"{max(p.step_seconds(GPUS[c][1]), p.host_seconds):.3f}-"
                           f"{p.step_seconds(GPUS[c][1]) + p.host_seconds:.3f} s on {c}" for c in cards)
        lines.append(f"  host term: {p.ops:,.0f} eager ops x {HOST_SECONDS_PER_OP * 1e6:.1f} us (measured per op on a "
                     f"2-core VM) = {p.host_seconds:.3f} s; step time between max(GPU, host) and GPU + host: {bounds}")
    return lines


def cheaper_fits(base: dict, shape: RunShape, budget_gib: float, dtype: torch.dtype = torch.bfloat16, ranks: int = 1
                 ) -> list[tuple[str, Prediction]]:
    """Changes in order of cost, each predicted, until one fits `budget_gib`; then combined ones if none alone does."""
    options = []
    if not shape.gradient_checkpointing:
        options.append(("gradient_checkpointing: true", replace(shape, gradient_checkpointing=True)))
    if shape.batch_size > 1:
        options.append((f"batch_size: {max(1, shape.batch_size // 2)} (raise accumulate_grad_batches to keep the "
                        "effective batch)", replace(shape, batch_size=max(1, shape.batch_size // 2))))
    for mode in ("int8", "nf4"):
        if shape.quantize_base in ("none", "int8") and mode != shape.quantize_base:
            options.append((f"quantize_base: {mode}", replace(shape, quantize_base=mode)))
    if shape.rank > 8:
        options.append((f"rank: {shape.rank // 2} (alpha too, to keep the scale)", replace(shape, rank=shape.rank // 2)))
    tried = []
    for label, option in options:
        p = predict(base, option, dtype)
        tried.append((label, p))
        if on_card_gib(p, ranks) <= budget_gib:
            return tried
    combined = replace(shape, gradient_checkpointing=True, batch_size=1, quantize_base="nf4")
    while True:
        p = predict(base, combined, dtype)
        label = f"gradient_checkpointing, batch_size 1, quantize_base nf4, rank {combined.rank}"
        tried.append((label, p))
        if on_card_gib(p, ranks) <= budget_gib or combined.rank <= 8:
            return tried
        combined = replace(combined, rank=combined.rank // 2)


def render_shapes(settings: dict) -> list[tuple[str, int, int, bool]]:
    """(label, takes, frames, configured) of the renders a fit may run mid-training: the preview and the eval."""
    eval_takes = int(settings.get("eval_takes") or 8)
    return [("preview", PREVIEW_TAKES, PREVIEW_FRAMES, int(settings.get("sample_every_n_epochs") or 0) > 0),
            ("eval", min(eval_takes, RENDER_BATCH), SEGMENT_FRAMES, int(settings.get("eval_every_n_epochs") or 0) > 0)]


def memory_lint(base: dict, shape: RunShape, budget_gib: float | None = None, gpu: str | None = None, ranks: int = 1,
                renders: list[tuple[str, int, int, bool]] = (), checkpoint_dir=None) -> tuple[list[str], list[str]]:
    """(notes, warnings) for the lint: the prediction (per rank of a `ranks`-process DDP run), the render peaks, and
    when a peak exceeds `budget_gib` the cheapest change that fits (training) or the render that does not fit."""
    p = predict(base, shape)
    notes, warnings = describe(p, gpu, ranks), []
    for label, takes, frames, configured in renders:
        r = render_peak(base, p, takes, frames, checkpoint_dir)
        notes.append(describe_render(label, r, configured))
        if configured and budget_gib is not None and r.on_card_gib > budget_gib:
            warnings.append(f"{label} render: predicted {r.on_card_gib:.2f} GiB on the card exceeds its {budget_gib:g} "
                            f"GiB (resident training state + encoders + VAE + sampler); turn it off "
                            f"({label if label == 'eval' else 'sample'}_every_n_epochs: 0) or shorten/fewer takes")
    if budget_gib is not None and on_card_gib(p, ranks) > budget_gib:
        tried = cheaper_fits(base, shape, budget_gib, ranks=ranks)
        fits = [label for label, q in tried if on_card_gib(q, ranks) <= budget_gib]
        peaks = "; ".join(f"{label}: {on_card_gib(q, ranks):.2f} GiB" for label, q in tried)
        verdict = f"cheapest change that fits: {fits[0]}" if fits else "no change tried fits"
        warnings.append(f"predicted {on_card_gib(p, ranks):.2f} GiB on the card exceeds its {budget_gib:g} GiB: {verdict} "
                        f"(predicted peaks: {peaks})")
    return notes, warnings


def auto_batch_size(base: dict, shape: RunShape, budget_gib: float, effective: int, ranks: int = 1) -> tuple[int, str]:
    """(b, why): the largest micro-batch b dividing `effective` (b × effective/b keeps the step's samples) whose
    predicted on-card peak (allocated + the CUDA allowance, the lint's margin) fits `budget_gib`; else 1."""
    larger = []
    for b in sorted((d for d in range(1, effective + 1) if effective % d == 0), reverse=True):
        p = predict(base, replace(shape, batch_size=b))
        if on_card_gib(p, ranks) <= budget_gib or b == 1:
            break
        larger.append(f"batch {b} {on_card_gib(p, ranks):.2f} GiB")
    need = on_card_gib(p, ranks)
    verdict = "fits" if need <= budget_gib else "does not fit either (see the lint)"
    return b, (f"batch_size auto: {b} x accumulate_grad_batches {effective // b} (effective batch {effective} kept): "
               f"predicted {need:.2f} GiB on the card at L {shape.cond_len} {verdict} in its {budget_gib:.1f} GiB"
               + (f"; larger does not ({', '.join(larger)})" if larger else ""))
