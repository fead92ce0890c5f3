"""`python -m housevox.eval RUN_DIR`: did the LoRA learn the style? FAD and CLAP scores for every exported epoch.

For each epoch, a fixed set of takes (training captions and lyrics plus a few held-out
ones, fixed seeds, LoRA scale 1.0) is rendered, and once the same takes with the base
alone. Renders, training segments and held-out segments are embedded (CLAP, or the
checkpoint's VAE with --embedding vae) and compared: FAD to the training set (the LoRA
should lower it), FAD to the held-out tracks (style, not memorised tracks) and the CLAP
score of prompt vs render (the LoRA must keep following prompts). Results go to
RUN_DIR/eval.json and the run's TensorBoard (eval/*); `housevox.card --epoch best-eval`
publishes the best epoch.
"""

import argparse
import inspect
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from housevox.acestep import load_dit, model_dtype, open_checkpoint
from housevox.data import SegmentCacheDataModule, read_index
from housevox.data.datamodule import split_entries
from housevox.errors import HousevoxError, UsageError, run_cli
from housevox.eval.embed import DEFAULT_CLAP, load_embedding
from housevox.eval.evaluator import Evaluator
from housevox.eval.prompts import DEFAULT_SEED, DEFAULT_TAKES, distinct_prompts, plan_takes, read_prompts
from housevox.eval.render import DEFAULT_GUIDANCE_SCALE, DEFAULT_DURATION_S, Renderer, RenderSettings
from housevox.eval.results import eval_table_markdown
from housevox.lora import load_lora_into, read_lora
from housevox.report import Run, SavePoint, load_run, run_config
from housevox.sample import lora_defaults, pick_device

log = logging.getLogger("housevox")


def select_epochs(run: Run, value: str) -> list[SavePoint]:
    if not run.saves:
        raise HousevoxError(f"{run.folder}: no LoRA exported yet (lora/epoch_NNN/ is empty or missing)")
    if value == "all":
        return run.saves
    by_epoch = {s.epoch: s for s in run.saves}
    try:
        wanted = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--epochs must be all or comma-separated epoch numbers, not {value!r}") from None
    missing = [e for e in wanted if e not in by_epoch]
    if missing or not wanted:
        raise HousevoxError(f"{run.folder}: no LoRA for epoch {missing[0] if missing else value!r} "
                            f"(exported: {', '.join(str(s.epoch) for s in run.saves)})")
    return [by_epoch[e] for e in dict.fromkeys(wanted)]


def split_rows(run: Run, data: dict) -> tuple[Path, list[dict], list[dict]]:
    """(segments folder, training rows, held-out rows): the run's own split of its cache index."""
    if not data.get("segments_dir"):
        raise HousevoxError(f"{run.folder / 'config.yaml'}: no data.segments_dir (not a housevox fit run?)")
    segments = Path(data["segments_dir"])
    cache = Path(data.get("cache_dir") or segments / "cache")
    val_fraction = data.get("val_fraction",
                            inspect.signature(SegmentCacheDataModule).parameters["val_fraction"].default)
    train, held_out = split_entries(read_index(cache), data.get("val_tracks"), val_fraction, cache)
    return segments, train, held_out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m housevox.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="run folder: lightning_logs/<run_name>")
    p.add_argument("--epochs", default="all", help="all (default) or exported epochs, e.g. 5,10,15")
    p.add_argument("--prompts", type=Path,
                   help="JSONL of prompts (caption, lyrics, bpm, key, timesignature, language) instead of the run's captions")
    p.add_argument("--takes", type=int, default=DEFAULT_TAKES, help=f"takes per model (default {DEFAULT_TAKES})")
    p.add_argument("--embedding", choices=("clap", "vae"), default="clap",
                   help="clap (LAION CLAP from the local Hugging Face cache) or vae (the checkpoint's VAE, no download)")
    p.add_argument("--clap-model", default=DEFAULT_CLAP, help=f"CLAP model folder, or hub id[@revision] fetched on first use (default {DEFAULT_CLAP})")
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S,
                   help=f"seconds per take (default {DEFAULT_DURATION_S:g}, the segment length)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the LoRA header's num_inference_steps)")
    p.add_argument("--shift", type=float, help="timestep shift (default: the LoRA header's shift)")
    p.add_argument("--guidance-scale", "--cfg", dest="guidance_scale", type=float, default=DEFAULT_GUIDANCE_SCALE,
                   help=f"APG guidance scale, as ACE-Step renders (default {DEFAULT_GUIDANCE_SCALE:g})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the first take; take i uses seed + i")
    p.add_argument("--checkpoint-dir", help="base checkpoint folder or model name (default: the run config's "
                                            "model.checkpoint_dir)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.takes < 2:
        raise UsageError(f"--takes {args.takes}: FAD needs at least 2 takes")
    if not 0 < args.duration <= 600:
        raise UsageError(f"--duration {args.duration:g}: must be > 0 and <= 600 seconds")
    run = load_run(args.run_dir)
    saves = select_epochs(run, args.epochs)
    cfg = run_config(run)
    checkpoint_dir = args.checkpoint_dir or (cfg.get("model") or {}).get("checkpoint_dir")
    if not checkpoint_dir:
        raise UsageError(f"{run.folder}: no model.checkpoint_dir in config.yaml; pass --checkpoint-dir")
    segments, train_rows, held_rows = split_rows(run, cfg.get("data") or {})
    lora_defaults(args, saves[0].lora.metadata, str(saves[0].comfyui_file))
    if args.prompts:
        train_prompts, held_prompts = read_prompts(args.prompts), []
    else:
        train_prompts, held_prompts = distinct_prompts(train_rows, "train"), distinct_prompts(held_rows, "held_out")
    takes = plan_takes(train_prompts, held_prompts, args.takes, args.seed)

    device = pick_device(args.device)
    ckpt = open_checkpoint(checkpoint_dir)
    clap = load_embedding("clap", None, args.clap_model, device) if args.embedding == "clap" else None  # before any model
    renderer = Renderer.from_checkpoint(ckpt, device)
    embedding = clap or load_embedding("vae", renderer.vae)
    settings = RenderSettings.of(duration_s=args.duration, steps=args.steps, guidance_scale=args.guidance_scale,
                                 shift=args.shift)
    evaluator = Evaluator(embedding, takes, settings, segments, train_rows, held_rows)
    dit = load_dit(ckpt, dtype=model_dtype(device), device=device)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run.folder), filename_suffix=".eval")
    try:
        for save in saves:
            load_lora_into(dit, read_lora(save.comfyui_file), source=str(save.comfyui_file))
            row = evaluator.score_epoch(dit, renderer, embedding, run.folder, save.epoch, save.global_step,
                                        save.comfyui_file.name, writer)
            log.info("eval: epoch %d: FAD to training set %.4g (base %.4g)", save.epoch, row["fad_train"],
                     evaluator.doc["base"]["fad_train"])
    finally:
        writer.close()
    print(eval_table_markdown(evaluator.doc))
    print(f"\neval: {run.folder / 'eval.json'} (best epoch {evaluator.doc['best_epoch']}; "
          f"cells are LoRA (base); embedding {args.embedding}), TensorBoard tags eval/{args.embedding}/*")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
