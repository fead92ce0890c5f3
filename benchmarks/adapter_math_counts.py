"""Ops, dtype casts and fp32 matmuls of one production micro-batch on an XL-structured DiT: PEFT's fp32 adapter
math vs bf16 adapter math (`adapter_compute_dtype`), counted on fake tensors at real XL shapes on the CPU.

The module is production's `HouseVoxLoRA` (seed targets, r 128, bf16 base as on CUDA, checkpointing as given)
built on the meta device; one forward + backward of a 30 s segment runs under FakeTensorMode while a dispatch
mode counts every aten op, every `_to_copy` that changes dtype (and its bytes), and every mm/addmm/bmm with
fp32 operands (with their FLOPs). CPU dispatch: the op list is what eager PyTorch issues, not CUDA kernels.

    .venv/bin/python benchmarks/adapter_math_counts.py [--layers 32] [--checkpointing]
"""

import argparse
import logging
from collections import Counter

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from housevox.acestep import flow
from housevox.plan.memory import _fake_materialise
from housevox.train.synthetic import CONDITION_TOKENS, SEGMENT_FRAMES, SyntheticBaseLoRA, base_config, synthetic_sample

aten = torch.ops.aten
MATMULS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}
SEED_TARGETS = "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj"


class OpCounts(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()
        self.casts = self.cast_bytes = self.fp32_matmuls = self.fp32_matmul_flops = self.matmuls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops[func] += 1
        if func is aten._to_copy.default and "dtype" in kwargs and kwargs["dtype"] != args[0].dtype:
            self.casts += 1
            self.cast_bytes += args[0].numel() * args[0].element_size() + out.numel() * out.element_size()
        if func in MATMULS:
            self.matmuls += 1
            a, b = (args[1], args[2]) if func in (aten.addmm.default, aten.baddbmm.default) else (args[0], args[1])
            if a.dtype == torch.float32:
                self.fp32_matmuls += 1
                self.fp32_matmul_flops += 2 * a.numel() * b.shape[-1]
        return out


def count(layers: int, compute: str, checkpointing: bool) -> OpCounts:
    module = SyntheticBaseLoRA(base_config("xl", layers), weights="meta", base_dtype=torch.bfloat16, rank=128,
                               alpha=128.0, target_modules_str=SEED_TARGETS, gradient_checkpointing=checkpointing,
                               optimizer_type="adamw", adapter_compute_dtype=compute, seed=0)
    module.configure_model()
    fake = FakeTensorMode()
    _fake_materialise(module, fake, "cpu")
    cfg = module.config
    gen = torch.Generator().manual_seed(0)
    batch = {k: fake.from_tensor(v.unsqueeze(0).contiguous())
             for k, v in synthetic_sample(cfg, SEGMENT_FRAMES, CONDITION_TOKENS).items()}
    noise = fake.from_tensor(torch.randn(batch["target_latents"].shape, generator=gen))
    t = fake.from_tensor(flow.sample_timesteps(1, cfg.timestep_mu, cfg.timestep_sigma, gen))
    counts = OpCounts()
    with fake, counts:
        module.flow_loss(batch, t, noise).backward()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on (the seed config)")
    args = parser.parse_args()
    logging.getLogger("housevox").setLevel(logging.ERROR)
    print(f"XL-structured DiT, {args.layers} blocks, seed targets r 128, bf16 base, one 30 s segment "
          f"(T {SEGMENT_FRAMES}, L {CONDITION_TOKENS}), forward + backward, checkpointing "
          f"{'on' if args.checkpointing else 'off'}")
    print(f"{'adapter math':<14}{'aten ops':>10}{'dtype casts':>13}{'cast GiB':>10}{'matmuls':>9}{'fp32 matmuls':>14}"
          f"{'fp32 TFLOP':>12}")
    for compute in ("fp32", "bf16"):
        c = count(args.layers, compute, args.checkpointing)
        print(f"{compute:<14}{sum(c.ops.values()):>10,}{c.casts:>13,}{c.cast_bytes / 2**30:>10.2f}{c.matmuls:>9,}"
              f"{c.fp32_matmuls:>14,}{c.fp32_matmul_flops / 1e12:>12.3f}")


if __name__ == "__main__":
    main()
