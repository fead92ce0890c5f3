"""Warnings about an adapter run's settings, before any GPU time is spent.

The seed's V1 run trained at alpha 6 with rank 128 (update scale 0.047) and blamed
the file size; its targets named modules ACE-Step does not have. Both are visible
from the config alone, as are a few schedule mistakes and LoKr/DoRA settings that
PEFT or the loaders handle badly.
"""


import torch

from housevox.lora.targets import ADAPTER_NAMES, ORIGINAL_TO_DIFFUSERS, LoRASettings, TargetPlan, lokr_full_modules
from housevox.train.schedule import restart_steps

_WEAK_OR_STRONG = 4.0  # alpha/r this far from 1 (either way) is almost always a typo
# DiT forward passes per trained 30 s segment: forward + backward of the frozen base (activation gradients only,
# DESIGN §7: 3.68 + 3.86 TFLOP on XL) ≈ 2 forwards. An eval take of 30 s is `steps` CFG-batched forwards of 2.
TRAIN_FORWARDS_PER_SEGMENT = 2.0
XL_FORWARD_TFLOP = 3.68  # one XL DiT forward of a 30 s segment (T 750, L 769), FlopCounterMode


COMPILE_COST = (
    "compile true: the first steps of every fit process (a resume too) compile one DiT block with torch.compile "
    "(regional: the graph is shared by all blocks), a one-time cost before the speed-up, paid again when a new "
    "condition length or batch size first reaches it, until dynamo marks them dynamic; measured 4-6 minutes for the "
    "first step (tiny model, and one XL-width block) on a loaded 2-core CPU (benchmarks/RESULTS.md), not yet "
    "measured on a GPU. It pays off only on long runs"
)


def eval_cost(eval_every_n_epochs: int, eval_takes: int, inference_steps: int, max_epochs: int,
              total_steps: int, segments_per_step: int) -> str:
    """What fit-time evals cost in DiT forwards, against the training run's own (renders only; VAE and embeddings aside)."""
    exports = max_epochs // eval_every_n_epochs
    renders = (exports + 1) * eval_takes  # + the base's takes, once
    forwards = renders * inference_steps * 2
    ratio = forwards / max(total_steps * segments_per_step * TRAIN_FORWARDS_PER_SEGMENT, 1)
    return (f"eval_every_n_epochs {eval_every_n_epochs} costs GPU time: {exports} scored exports render "
            f"{renders} takes of 30 s ({eval_takes} per export + the base's once) x {inference_steps} steps x 2 (CFG) = "
            f"{forwards:,} DiT forwards, {ratio:.0%} of the training run's compute; on XL about "
            f"{forwards * XL_FORWARD_TFLOP / 1000:,.0f} PFLOP (FLOP estimate, not measured). Set 0 and run "
            "python -m housevox.eval after training to pay it only for the epochs you want")


def size_mb(params: int, dtype: torch.dtype) -> float:
    """LoRA file size in MB (10^6 bytes), headers aside."""
    return params * torch.empty((), dtype=dtype).element_size() / 1e6


def lint_run(
    settings: LoRASettings,
    *,
    cfg_ratio: float,
    model_version: str,
    warmup_steps: int,
    total_steps: int | None,
    num_cycles: int,
    cycle_steps: int | None,
    plan: TargetPlan | None,
    save_dtype: torch.dtype = torch.bfloat16,
    scheduler_type: str = "cosine_restarts",
    eval_every_n_epochs: int = 0,
    eval_takes: int = 0,
    inference_steps: int = 50,
    max_epochs: int | None = None,
    segments_per_step: int = 1,
    quantize_base: str = "none",
    compile: bool = False,
) -> list[str]:
    """Human-readable warnings; an empty list means nothing looks wrong."""
    warnings = adapter_warnings(settings, plan, quantize_base)
    r, alpha = settings.rank, settings.alpha
    ratio = settings.scale
    if not settings.lokr_full_matrix and (ratio <= 1 / _WEAK_OR_STRONG or ratio >= _WEAK_OR_STRONG):
        factor, direction = (1 / ratio, "weaker") if ratio < 1 else (ratio, "stronger")
        warnings.append(
            f"alpha {alpha:g} with rank {r}: scale alpha/r = {alpha:g}/{r} = {ratio:.3f}, so every LoRA update is "
            f"~{factor:.0f}x {direction} than with alpha = rank ({r}). alpha changes only this strength, never the "
            f"file size or capacity; set alpha: {r} for scale 1.0 (the seed's V1 vs V2)"
        )
    unmatched = plan.unmatched_names if plan else [n for n in settings.target_names if n not in ORIGINAL_TO_DIFFUSERS]
    if unmatched:
        warnings.append(
            f"target names {', '.join(unmatched)} match no module in ACE-Step v1.5 and will be ignored "
            f"(known: {' '.join(ORIGINAL_TO_DIFFUSERS)})"
        )
    if plan is not None and not plan.module_paths:
        warnings.append(f"target_modules_str {settings.target_modules_str!r} adapts nothing: training would fail")
    if cfg_ratio == 0 and model_version != "turbo":
        warnings.append(
            f"cfg_ratio 0 on a {model_version} model: the LoRA never trains the null condition, so CFG at inference "
            "(3.5-7) has nothing to contrast the LoRA's style against; base models are usually trained with 0.15"
        )
    if total_steps is not None:
        if warmup_steps >= total_steps:
            warnings.append(
                f"warmup_steps {warmup_steps} >= the run's {total_steps} optimizer steps: the learning rate never "
                "reaches its peak"
            )
        elif scheduler_type == "cosine_restarts":
            restarts = restart_steps(warmup_steps, total_steps, num_cycles, cycle_steps)
            if restarts and restarts[-1] >= 0.9 * total_steps:
                warnings.append(
                    f"the last cosine restart falls at step {restarts[-1]} of {total_steps} (final 10 %): the run "
                    "ends near peak learning rate instead of in a trough; use equal cycles (num_cycles, no cycle_steps) "
                    "or a cycle_steps that divides the post-warmup steps"
                )
    if eval_every_n_epochs > 0 and max_epochs and total_steps:
        warnings.append(eval_cost(eval_every_n_epochs, eval_takes, inference_steps, max_epochs, total_steps,
                                  segments_per_step))
    if compile:
        warnings.append(COMPILE_COST)
    if save_dtype == torch.float16:
        warnings.append("save dtype float16: small LoRA B values underflow and large ones overflow; use bf16 or fp32")
    return warnings


def adapter_warnings(settings: LoRASettings, plan: TargetPlan | None, quantize_base: str) -> list[str]:
    """What is known to go wrong with a LoKr or DoRA setting (PEFT 0.18, ComfyUI's loaders)."""
    warnings = []
    if settings.adapter_type == "lokr" and quantize_base == "nf4":
        warnings.append("adapter_type lokr on an nf4 base: PEFT's LoKr reshapes its update to the packed 4-bit weight "
                        "and fails at the first step; use quantize_base int8 or none")
    if settings.adapter_type == "dora" and quantize_base != "none":
        warnings.append(f"adapter_type dora on a {quantize_base} base: PEFT dequantises every adapted weight at each "
                        "step for DoRA's norm, which takes back much of the memory and time quantize_base saves, and "
                        "the exported dora_scale is computed from the dequantised (not the original) base weights")
    full = lokr_full_modules(settings, plan) if settings.adapter_type == "lokr" and plan else []
    if full and not settings.lokr_full_matrix and settings.scale != 1:
        warnings.append(
            f"LoKr rank {settings.rank}: {len(full)} of {len(plan.module_paths)} modules keep both Kronecker factors "
            f"full (PEFT does when r >= half a factor's size), where ComfyUI and LyCORIS ignore alpha and apply scale 1 "
            f"while PEFT applies alpha/r = {settings.scale:.3f}; housevox folds alpha/r into lokr_w1 in its ComfyUI and "
            "ACE-Step files, other tools' exports of such a LoKr load at the wrong strength. rank does not change "
            "those modules' size: set alpha = rank, or lokr_full_matrix"
        )
    return warnings


def lint_notes(
    settings: LoRASettings, *, plan: TargetPlan | None, total_steps: int | None, save_dtype: torch.dtype = torch.bfloat16
) -> list[str]:
    """Informational lines: the update scale, the adapted modules and the file size that follows."""
    scale = "1 (lokr_full_matrix)" if settings.lokr_full_matrix else \
        f"alpha/r = {settings.alpha:g}/{settings.rank} = {settings.scale:.3f}"
    notes = [f"adapter: {ADAPTER_NAMES[settings.adapter_type]}, scale {scale}"]
    if plan is not None and plan.module_paths:
        c = plan.counts
        sizes_of = {"lora": "r*(in+out)", "dora": "r*(in+out) + out (magnitude)",
                    "lokr": "the Kronecker factors' sizes (housevox.lora inspect breaks them down)"}
        notes.append(
            f"{len(plan.module_paths)} modules adapted (self {c['self']} / cross {c['cross']} / mlp {c['mlp']}), "
            f"{plan.lora_params:,} adapter parameters = sum of {sizes_of[settings.adapter_type]}"
        )
        sizes = ", ".join(f"{size_mb(plan.lora_params, d):.1f} MB in {str(d).removeprefix('torch.')}"
                          for d in dict.fromkeys((save_dtype, torch.bfloat16, torch.float32)))
        notes.append(f"expected LoRA file size: {sizes}; alpha never changes it (only rank, targets and dtype do)")
    notes.append(f"total optimizer steps: {total_steps if total_steps is not None else 'unknown (no segments manifest)'}")
    return notes
