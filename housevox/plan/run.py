"""One run's plan from its fit config: the model it adapts, its optimizer steps, the lint and the predicted memory."""

import json
import math
from pathlib import Path

import torch

from housevox.acestep import hub
from housevox.errors import HousevoxError, UsageError
from housevox.lora.targets import LoRASettings, resolve_targets
from housevox.plan.lint import lint_notes, lint_run
from housevox.plan.memory import GPUS, RunShape, memory_lint, render_shapes

_LORA_FIELDS = ("rank", "alpha", "dropout", "target_modules_str", "attention_type", "bias", "adapter_type",
                "lokr_factor", "lokr_decompose_both", "lokr_full_matrix", "lokr_rank_dropout")


def run_settings(config) -> dict:
    """fit's parsed config (its `fit` namespace) flattened: data, then trainer, then model fields, by name."""
    return {**config.data.as_dict(), **config.trainer.as_dict(), **config.model.as_dict()}


def base_model(checkpoint_dir: str | None, preset: str | None = None):
    """The run's model config and its DiT on the meta device (`preset`, else config.json, else XL), and a note."""
    from housevox.acestep.config import AceStepConfig
    from housevox.acestep.modules import build_dit
    from housevox.acestep.presets import PRESETS

    config_file = Path(checkpoint_dir) / "config.json" if checkpoint_dir else None
    if not preset and checkpoint_dir and not Path(checkpoint_dir).exists() and hub.parse_model_name(checkpoint_dir):
        config_file = hub.config_file(checkpoint_dir) or config_file  # a model name: its config.json, not its weights
    if preset:
        cfg = AceStepConfig.from_upstream(PRESETS[preset], f"--preset {preset}")
        note = f"model: ACE-Step v1.5 {preset} base (--preset {preset})"
    elif config_file and config_file.is_file():
        try:
            cfg = AceStepConfig.from_upstream(json.loads(config_file.read_text()), str(config_file))
        except ValueError as exc:
            raise UsageError(f"{config_file}: not valid JSON ({exc})") from None
        note = f"model: {cfg.variant} from {config_file}"
    else:
        cfg = AceStepConfig.from_upstream(PRESETS["xl"])
        where = f"model.checkpoint_dir {checkpoint_dir} has no config.json" if checkpoint_dir else "no model.checkpoint_dir"
        note = f"model: {where}; assuming ACE-Step v1.5 XL base"
    return cfg, build_dit(cfg, device="meta"), cfg.model_version if not cfg.is_turbo else "turbo", note


def micro_batch_size(run: dict) -> int:
    """data.batch_size; `auto` keeps the effective batch of 1 × accumulate (fit picks b dividing it), so plan it as 1."""
    return 1 if run.get("batch_size") == "auto" else int(run.get("batch_size") or 1)


def total_optimizer_steps(run: dict) -> int | None:
    """Optimizer steps of the run from the segments manifest, or None when it cannot be known yet."""
    segments_dir, epochs = run.get("segments_dir"), run.get("max_epochs")
    manifest = Path(segments_dir) / "manifest.jsonl" if segments_dir else None
    if manifest is None or not manifest.is_file() or not epochs:
        return None
    with open(manifest) as fh:
        segments = sum(1 for line in fh if line.strip())
    batches = math.ceil(segments / micro_batch_size(run))
    return math.ceil(batches / int(run.get("accumulate_grad_batches") or 1)) * int(epochs)


def lint_config(run: dict, source: str, *, preset: str | None = None, save_dtype: torch.dtype = torch.bfloat16,
                gpu_memory: float | None = None, gpu: str | None = None) -> tuple[list[str], list[str]]:
    """(notes, warnings) of a run before it starts: adapters, schedule, eval cost, predicted memory and step time.

    `gpu_memory` (GiB, else the `gpu` card's size) is the budget the prediction is checked against.
    """
    try:
        run = {**run, "batch_size": micro_batch_size(run)}
        settings = LoRASettings(**{k: run[k] for k in _LORA_FIELDS if k in run})
        shape = RunShape.from_settings(run)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{source}: bad value ({exc})") from None
    except HousevoxError as exc:
        raise UsageError(f"{source}: {exc}") from None
    cfg, dit, model_version, model_note = base_model(run.get("checkpoint_dir"), preset)
    plan = resolve_targets(dit, settings)
    total = total_optimizer_steps(run)
    warnings = lint_run(
        settings, cfg_ratio=float(run["cfg_ratio"]), model_version=model_version, warmup_steps=int(run["warmup_steps"]),
        total_steps=total, num_cycles=int(run["num_cycles"]), cycle_steps=run["cycle_steps"], plan=plan,
        save_dtype=save_dtype, scheduler_type=run["scheduler_type"], eval_every_n_epochs=int(run["eval_every_n_epochs"]),
        eval_takes=int(run["eval_takes"]), inference_steps=int(run["num_inference_steps"]),
        max_epochs=run["max_epochs"], segments_per_step=int(run["batch_size"]) * int(run["accumulate_grad_batches"]),
        quantize_base=run["quantize_base"], compile=bool(run.get("compile")),
    )
    budget = gpu_memory if gpu_memory is not None else (GPUS[gpu][0] if gpu else None)
    memory_notes, memory_warnings = memory_lint(cfg.raw, shape, budget, gpu, renders=render_shapes(run),
                                                  checkpoint_dir=run.get("checkpoint_dir"))
    notes = [model_note, *lint_notes(settings, plan=plan, total_steps=total, save_dtype=save_dtype), *memory_notes]
    return notes, warnings + memory_warnings
