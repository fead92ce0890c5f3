"""`python -m housevox.lora inspect|lint|convert`: look at, check and convert LoRA files without a GPU."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from housevox.errors import UsageError, run_cli

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GPU_CHOICES = ("rtx3090", "rtx4090", "l4", "a100-40gb", "a100-80gb", "h100", "h200")  # housevox.plan.memory.GPUS


def cmd_lint(args) -> int:
    """The plan of the run `python -m housevox.fit fit --config CONFIG [fit overrides]` would start."""
    from housevox.fit import fit_config
    from housevox.plan.run import lint_config, run_settings

    path = Path(args.config)
    # the seed's flat JSON goes through fit's --preset, as `housevox.fit fit --preset seed.json` runs it
    config_args = ["--preset" if path.suffix == ".json" else "--config", str(path)]
    try:
        run = run_settings(fit_config(config_args + args.fit_args))
    except UsageError as exc:
        raise UsageError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
    notes, warnings = lint_config(run, str(path), preset=args.preset, save_dtype=DTYPES[args.lora_dtype],
                                  gpu_memory=args.gpu_memory, gpu=args.gpu)
    for line in notes:
        print(f"note: {line}")
    for line in warnings:
        print(f"warning: {line}")
    print(f"{path}: {len(warnings)} warning{'s' if len(warnings) != 1 else ''}")
    return 0


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
    from housevox.lora.apps import diffusers_reading
    from housevox.lora.formats import WRITERS, open_lora, read_lora

    weights = read_lora(args.src)
    dtype = DTYPES[args.lora_dtype] if args.lora_dtype else weights.dtype
    out = WRITERS[args.to](args.out, weights.to(dtype), dtype=dtype)
    print(f"wrote {out} ({args.to}, {len(weights.modules)} modules, {str(dtype).removeprefix('torch.')})")
    if args.to == "peft":
        reading = diffusers_reading(list(open_lora(out).keys))
        if reading.verdict != "loads":
            print(f"note: {reading.line()}")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m housevox.lora", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="format, adapter type, ranks, alphas, modules, parameters and the size arithmetic")
    p.add_argument("path", help="LoRA/LoKr/DoRA .safetensors file, PEFT adapter folder or ACE-Step LoKr folder")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("lint", help="warn about a run config before training (alpha/rank, targets, CFG, schedule)",
                       epilog="Any other option is fit's (--model.quantize_base nf4, --trainer.max_epochs 40, ...): "
                              "the lint reads the run exactly as python -m housevox.fit fit would start it.")
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
    args, fit_args = parser.parse_known_args(argv)
    if fit_args and args.command != "lint":
        parser.error(f"unrecognized arguments: {' '.join(fit_args)}")
    args.fit_args = fit_args
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
