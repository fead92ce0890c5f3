"""`python -m housevox.lora inspect|lint|convert`: look at, check and convert LoRA files without a GPU."""

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from housevox.errors import HousevoxError, UsageError, run_cli

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_LORA_FIELDS = ("rank", "alpha", "dropout", "target_modules_str", "attention_type", "bias", "adapter_type",
                "lokr_factor", "lokr_decompose_both", "lokr_full_matrix", "lokr_rank_dropout")
_SEED_NAMES = {"epochs": "max_epochs", "gradient_accumulation": "accumulate_grad_batches"}
GPU_CHOICES = ("rtx3090", "rtx4090", "l4", "a100-40gb", "a100-80gb", "h100", "h200")  # housevox.train.memory.GPUS
DEFAULT_CFG_RATIO = 0.15  # assumed when a config does not say (the usual base-model value)


def _section(cfg: dict, name: str) -> dict:
    """A LightningCLI section; `class_path`/`init_args` form is unwrapped."""
    sec = cfg.get(name) or {}
    return {**sec, **(sec.get("init_args") or {})} if isinstance(sec, dict) else {}


def load_run_config(path: Path) -> dict:
    """Flatten a LightningCLI YAML or the seed's flat JSON into one dict of the fields lint needs."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise UsageError(f"{path}: not valid {kind} ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a mapping of settings at the top level")
    if any(k in raw for k in ("model", "trainer", "data")):
        return {**_section(raw, "data"), **_section(raw, "trainer"), **_section(raw, "model")}
    return {_SEED_NAMES.get(k, k): v for k, v in raw.items()}


def _build_model(checkpoint_dir, preset: str | None = None):
    """The run's model config and its DiT on the meta device (`preset`, else config.json, else XL) and a note."""
    from housevox.acestep.config import AceStepConfig
    from housevox.acestep.modules import build_dit
    from housevox.acestep.presets import PRESETS

    config_file = Path(checkpoint_dir) / "config.json" if checkpoint_dir else None
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
    """data.batch_size; `auto` keeps the effective batch of 1 × accumulate, so it counts as 1 here."""
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


def cmd_lint(args) -> int:
    from housevox.lora.lint import lint_notes, lint_run
    from housevox.lora.targets import LoRASettings, resolve_targets

    path = Path(args.config)
    run = load_run_config(path)
    try:
        settings = LoRASettings(**{k: run[k] for k in _LORA_FIELDS if k in run})
        numbers = dict(
            cfg_ratio=float(run.get("cfg_ratio", DEFAULT_CFG_RATIO)),
            warmup_steps=int(run.get("warmup_steps") or 0),
            num_cycles=int(run.get("num_cycles") or 4),
            cycle_steps=int(run["cycle_steps"]) if run.get("cycle_steps") else None,
            eval_every_n_epochs=int(run.get("eval_every_n_epochs") or 0),
            eval_takes=int(run.get("eval_takes") or 8),
            inference_steps=int(run.get("num_inference_steps") or 50),
            max_epochs=int(run["max_epochs"]) if run.get("max_epochs") else None,
            segments_per_step=micro_batch_size(run) * int(run.get("accumulate_grad_batches") or 1),
            compile=bool(run.get("compile")),
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{path}: bad value ({exc})") from None
    except HousevoxError as exc:
        raise UsageError(f"{path}: {exc}") from None
    cfg, dit, model_version, model_note = _build_model(run.get("checkpoint_dir"), args.preset)
    plan = resolve_targets(dit, settings)
    total = total_optimizer_steps(run)
    warnings = lint_run(
        settings, model_version=model_version, total_steps=total, plan=plan,
        save_dtype=DTYPES[args.lora_dtype], scheduler_type=run.get("scheduler_type", "cosine_restarts"),
        quantize_base=run.get("quantize_base", "none"), **numbers,
    )
    memory_notes, memory_warnings = _memory_lint(path, run, cfg, args)
    warnings += memory_warnings
    for line in [model_note, *lint_notes(settings, plan=plan, total_steps=total, save_dtype=DTYPES[args.lora_dtype]),
                 *memory_notes]:
        print(f"note: {line}")
    for line in warnings:
        print(f"warning: {line}")
    print(f"{path}: {len(warnings)} warning{'s' if len(warnings) != 1 else ''}")
    return 0


def _memory_lint(path: Path, run: dict, cfg, args) -> tuple[list[str], list[str]]:
    """Predicted GPU memory and step time of the run, checked against --gpu-memory or the --gpu card's size."""
    from housevox.train.memory import GPUS, RunShape, memory_lint

    try:
        shape = RunShape.from_settings(run)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{path}: bad value ({exc})") from None
    except HousevoxError as exc:
        raise UsageError(f"{path}: {exc}") from None
    budget = args.gpu_memory if args.gpu_memory is not None else (GPUS[args.gpu][0] if args.gpu else None)
    return memory_lint(cfg.raw, shape, budget, args.gpu)


def _positive_gib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GiB") from None
    if not 0 < value < 1e4:
        raise argparse.ArgumentTypeError(f"{text!r} GiB is not a card size")
    return value


def cmd_inspect(args) -> int:
    from housevox.lora.formats import open_lora
    from housevox.lora.inspect import describe

    print("\n".join(describe(open_lora(args.path))))
    return 0


def cmd_convert(args) -> int:
    from housevox.lora.formats import WRITERS, read_lora

    weights = read_lora(args.src)
    dtype = DTYPES[args.lora_dtype] if args.lora_dtype else weights.dtype
    out = WRITERS[args.to](args.out, weights.to(dtype), dtype=dtype)
    print(f"wrote {out} ({args.to}, {len(weights.modules)} modules, {str(dtype).removeprefix('torch.')})")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m housevox.lora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="format, adapter type, ranks, alphas, modules, parameters and the size arithmetic")
    p.add_argument("path", help="LoRA/LoKr/DoRA .safetensors file, PEFT adapter folder or ACE-Step LoKr folder")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("lint", help="warn about a run config before training (alpha/rank, targets, CFG, schedule)")
    p.add_argument("--config", required=True, help="LightningCLI YAML or the seed's flat JSON")
    p.add_argument("--lora-dtype", choices=DTYPES, default="bf16", help="dtype the LoRA files will be saved in")
    p.add_argument("--preset", choices=("xl", "2b"), help="model dims when no checkpoint (config.json) is at hand")
    p.add_argument("--gpu-memory", type=_positive_gib, metavar="GiB",
                   help="warn when the predicted peak exceeds this, naming the cheapest change that fits")
    p.add_argument("--gpu", choices=GPU_CHOICES, help="card for the step time (and the budget, without --gpu-memory)")
    p.set_defaults(func=cmd_lint)
    p = sub.add_parser("convert", help="rewrite an adapter in another layout, losslessly")
    p.add_argument("src", help="adapter file or folder (any layout)")
    p.add_argument("--to", required=True, choices=("peft", "comfyui", "diffusers", "acestep-lokr"),
                   help="diffusers: LoRA only; acestep-lokr: LoKr only; DoRA between peft and comfyui needs the "
                        "base weights, so export those from training")
    p.add_argument("--out", required=True, help="output folder (peft, acestep-lokr) or .safetensors file")
    p.add_argument("--lora-dtype", choices=DTYPES, default=None, help="default: keep the source dtype")
    p.set_defaults(func=cmd_convert)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
