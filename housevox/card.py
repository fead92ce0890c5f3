"""`python -m housevox.card RUN_DIR [--epoch best|best-eval|last|N]`: a release card written from the run itself.

The seed's release text was typed by hand, and its numbers (a 244 MB file, a loss table
copied from a console) drifted from the run. Here every number comes from the run folder:
the event files, the LoRA headers and file sizes, the segments' manifest and prep report,
`run_profile.json` when training recorded one, and `eval.json` when `housevox.eval` scored the epochs.
"""

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from housevox.atomic import write_text
from housevox.errors import HousevoxError, UsageError, run_cli
from housevox.demo_proof import PROOF_FILE, proof_table_markdown, read_proof
from housevox.eval.results import EVAL_FILE, eval_table_markdown, read_eval
from housevox.lora.targets import ADAPTER_NAMES
from housevox.report import Run, SavePoint, load_run, loss_table_markdown, plot_training, run_config, save_figure

CARD = "release_card.md"
LOSS_PNG = "release_card_loss.png"
PROFILE = "run_profile.json"
NOT_RECORDED = "not recorded"


def choose(run: Run, epoch: str) -> SavePoint:
    """The exported epoch the card is about: lowest val/loss among exported epochs, the last export, or epoch N."""
    if not run.saves:
        raise HousevoxError(f"{run.folder}: no LoRA exported yet (lora/epoch_NNN/ is empty or missing)")
    if epoch == "last":
        return run.saves[-1]
    if epoch == "best-eval":
        return _best_eval(run)
    if epoch == "best":
        best = run.best(exported_only=True)
        if best is None:
            raise HousevoxError(f"{run.folder}: no val/loss logged for an exported epoch; use --epoch last or N")
        return best.save
    if not epoch.isdigit():
        raise UsageError(f"--epoch must be best, best-eval, last or an epoch number, not {epoch!r}")
    for s in run.saves:
        if s.epoch == int(epoch):
            return s
    raise HousevoxError(f"{run.folder}: no LoRA for epoch {epoch} (exported: {', '.join(str(s.epoch) for s in run.saves)})")


def _best_eval(run: Run) -> SavePoint:
    doc = read_eval(run.folder)
    if doc is None or doc.get("best_epoch") is None:
        raise HousevoxError(f"{run.folder}: no scored epoch in eval.json; run python -m housevox.eval {run.folder} first")
    for s in run.saves:
        if s.epoch == doc["best_epoch"]:
            return s
    raise HousevoxError(f"{run.folder / EVAL_FILE}: best epoch {doc['best_epoch']} has no LoRA in lora/ any more")


def eval_section(run: Run, chosen: int) -> list[str]:
    doc = read_eval(run.folder)
    if doc is None:
        return [f"- {NOT_RECORDED} (no {EVAL_FILE}: `python -m housevox.eval {run.folder}` scores every exported epoch)"]
    emb, render = doc["embedding"], doc["settings"]["render"]
    origins = Counter(t["origin"].replace("_", " ") for t in doc["settings"]["takes"])
    prompts = ", ".join(f"{n} {origin}" for origin, n in sorted(origins.items()))
    return [
        f"From `{EVAL_FILE}`: {len(doc['settings']['takes'])} fixed takes per model ({prompts} prompts), "
        f"{render['duration_s']:g} s, {render['steps']} steps, {render['guidance'].upper()} {render['guidance_scale']:g}"
        f"{' + DCW' if render['dcw'] else ''}, LoRA scale {doc['settings']['lora_scale']:g}; "
        f"embedding {emb['kind']}{' ' + emb['model'] if emb.get('model') else ''}. "
        "Cells are LoRA (base alone); lower FAD is closer to the set, higher CLAP score follows the prompt better.",
        "", eval_table_markdown(doc, chosen=chosen), "",
        f"Best eval epoch: {doc['best_epoch']} ({doc['best_rule']}).",
        *([] if any(r["fad_train"] < doc["base"]["fad_train"] for r in doc["epochs"]) else
          ["", "No scored epoch brought the renders closer to the training set than the base alone."]),
    ]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HousevoxError(f"{path}: unreadable ({exc})") from None


def segment_rows(segments: Path) -> list[dict]:
    lines = (segments / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def tag_counts(rows: list[dict]) -> Counter:
    """How many segments carry each comma-separated caption tag (a tag counts once per segment)."""
    counts = Counter()
    for row in rows:
        counts.update(list(dict.fromkeys(t.strip() for t in (row.get("caption") or "").split(",") if t.strip())))
    return counts


def _most_common(rows: list[dict], key: str):
    values = Counter(row[key] for row in rows if row.get(key))
    return values.most_common(1)[0][0] if values else None


def _mb(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.1f} MB ({size:,} bytes)"


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600} h {s % 3600 // 60} min {s % 60} s"


def _one(values) -> str:
    values = sorted(set(values))
    return ", ".join(f"{v:g}" for v in values)


def prompt_section(rows: list[dict] | None, note: str) -> tuple[list[str], str | None]:
    if not rows:
        return [f"Trigger words and prompt: {note}."], None
    caption = _most_common(rows, "caption")
    if caption is None:
        return ["Trigger words and prompt: the segments have no captions (trained on data.default_caption)."], None
    tags = tag_counts(rows)
    lines = ["Tags in the training captions (segments carrying each, of "
             f"{len(rows)}): " + ", ".join(f"{t} ({n})" for t, n in tags.most_common()), "",
             f"Recommended prompt (the most common training caption): `{caption}`"]
    extras = [f"{k}: {v}" for k in ("bpm", "key", "timesignature", "language") if (v := _most_common(rows, k))]
    if extras:
        lines += ["", f"Most common metas in the data: {', '.join(extras)}"]
    return lines, caption


def dataset_section(segments: Path | None, note: str) -> list[str]:
    if segments is None or not (segments / "report.json").is_file():
        return [f"- {note}"]
    rep = _read_json(segments / "report.json")
    c, fmt = rep["counts"], rep["format"]
    return [
        f"- tracks: {c['tracks_ok']} used of {c['tracks']} ({c['tracks_failed']} failed, {c['tracks_skipped']} skipped)",
        f"- segments: {c['segments']} of {rep['segment_s']:g} s with {rep['overlap_s']:g} s overlap, cut at zero crossings"
        f" ({c['segments_skipped']} skipped, {c['segments_capped']} gain-capped)",
        f"- loudness: target {rep['target_lufs']:g} LUFS, segments measured "
        f"{rep['lufs_out']['min']:g} .. {rep['lufs_out']['max']:g} LUFS",
        f"- format: {fmt['container']} {fmt['subtype']}, {fmt['sample_rate'] / 1000:g} kHz",
        f"- folder: `{segments}`",
    ]


def hardware_section(run: Run) -> list[str]:
    path = run.folder / PROFILE
    if not path.is_file():
        return [f"- {NOT_RECORDED} (no {PROFILE} in the run folder)"]
    p = _read_json(path)
    per_epoch = p.get("seconds_per_epoch") or []
    mem = p.get("peak_memory_gib")
    lines = [f"- device: {p.get('device') or NOT_RECORDED}",
             f"- peak memory: {f'{mem:.1f} GiB' if mem is not None else 'not measured (CPU run)'}"]
    if per_epoch:
        lines.append(f"- time per epoch: {sum(per_epoch) / len(per_epoch):.1f} s mean over {len(per_epoch)} epochs "
                     f"({min(per_epoch):.1f} .. {max(per_epoch):.1f} s)")
    else:
        lines.append(f"- time per epoch: {NOT_RECORDED}")
    total = p.get("total_seconds")
    lines.append(f"- total time: {_hms(total) if total is not None else NOT_RECORDED}")
    lines.append(f"- started {p.get('started') or NOT_RECORDED}, finished {p.get('finished') or NOT_RECORDED}")
    return lines


def lora_section(save: SavePoint) -> list[str]:
    lf, meta = save.lora, save.lora.metadata
    kinds = Counter(m.split(".")[2] for m in lf.shapes)
    files = sorted(p for p in save.folder.rglob("*") if p.is_file())
    return [
        f"- base model: {meta.get('base_model', '?')} ({meta.get('base_model_variant', '?')}, "
        f"weights hash {meta.get('base_model_hash', '?')})",
        f"- adapter: {ADAPTER_NAMES[lf.adapter_type]}",
        f"- rank: {_one(lf.ranks.values())}",
        f"- alpha: {_one(lf.alpha.values())}",
        f"- scale alpha/r: {_one(round(lf.scale(m), 4) for m in lf.shapes)}",
        f"- targets: `{meta.get('target_modules', '?')}` (attention: {meta.get('attention_type', '?')})",
        f"- modules: {len(lf.shapes)} (self_attn {kinds['self_attn']}, cross_attn {kinds['cross_attn']}, "
        f"mlp {kinds['mlp']}), {lf.params:,} parameters",
        f"- epoch: {meta.get('epoch', save.epoch)}",
        f"- global step: {save.global_step}",
        "- files (size on disk):",
        *[f"  - `{p.relative_to(save.folder.parent.parent)}`: {_mb(p)}" for p in files],
        f"- full breakdown: `python -m housevox.lora inspect {save.comfyui_file}`",
    ]


def training_section(cfg: dict, save: SavePoint) -> list[str]:
    model, trainer, data = cfg.get("model") or {}, cfg.get("trainer") or {}, cfg.get("data") or {}
    if not model:
        return [f"- {NOT_RECORDED} (no config.yaml in the run folder)"]
    return [
        f"- optimizer {model.get('optimizer_type')}, learning rate {model.get('learning_rate')}, "
        f"weight decay {model.get('weight_decay')}, warmup {model.get('warmup_steps')} steps, "
        f"schedule {model.get('scheduler_type')} ({model.get('num_cycles')} cycles)",
        f"- batch {data.get('batch_size')} x accumulation {trainer.get('accumulate_grad_batches')}, "
        f"max epochs {trainer.get('max_epochs')}, CFG dropout {model.get('cfg_ratio')}, "
        f"seed {save.lora.metadata.get('seed', model.get('seed'))}",
    ]


def resolve_segments(cfg: dict) -> tuple[Path | None, str]:
    """The run's segments folder (relative paths are read from the current directory, as fit did)."""
    value = (cfg.get("data") or {}).get("segments_dir")
    if not value:
        return None, f"{NOT_RECORDED} (no data.segments_dir in config.yaml)"
    path = Path(value)
    if not (path / "manifest.jsonl").is_file():
        return None, f"not available: no manifest.jsonl in {path} (relative paths are read from the current directory)"
    return path, ""


def render(run: Run, save: SavePoint, cfg: dict) -> str:
    meta = save.lora.metadata
    segments, note = resolve_segments(cfg)
    rows = segment_rows(segments) if segments else None
    prompt_lines, caption = prompt_section(rows, note)
    row = next((r for r in run.epochs if r.epoch == save.epoch), None)
    val = f"{row.val_loss:.4f}" if row and row.val_loss is not None else "not logged"
    best = run.best()
    ckpt = (cfg.get("model") or {}).get("checkpoint_dir") or "<checkpoint folder>"
    steps, shift = meta.get("num_inference_steps", "50"), meta.get("shift", "1.0")
    sample = (f"python -m housevox.sample --checkpoint-dir {ckpt} --lora {save.comfyui_file} "
              f"--prompt \"{caption or '<caption>'}\" --lora-scale 1.0 --guidance apg --guidance-scale 5 --out take.wav")
    lora = lora_section(save)
    data_desc = f"{len(rows)} segments (training and validation)" if rows else "its segments"
    parts = [
        f"# {run.name}: ACE-Step v1.5 {ADAPTER_NAMES[save.lora.adapter_type]} ({meta.get('base_model', 'base model')}, "
        f"rank {_one(save.lora.ranks.values())} / alpha {_one(save.lora.alpha.values())}), "
        f"epoch {save.epoch}",
        "",
        f"LoRA for {meta.get('base_model', 'the base model')} trained with housevox on {data_desc}. "
        f"This card describes the epoch {save.epoch} export (global step {save.global_step}, val/loss {val}) "
        f"of a {len(run.epochs)}-epoch run"
        + (f"; the lowest val/loss was at epoch {best.epoch} ({best.val_loss:.4f})." if best else "."),
        "",
        "## Trigger words and prompt", "", *prompt_lines, "",
        "## Recommended settings", "",
        "- LoRA weight: 0.8 - 1.0 (start at 1.0)",
        "- guidance: APG (ACE-Step's own default; `housevox.sample --guidance apg`), scale 3.5 - 7, "
        "DCW on, chunk mask auto",
        f"- inference steps: {steps}, shift: {shift} (from the LoRA header; `housevox.sample` uses them by default)",
        "", "```", sample, "```", "",
        "## LoRA", "", *lora, "",
        "## Dataset", "", *dataset_section(segments, note), "",
        "## Training", "", *training_section(cfg, save), "",
        "## Hardware profile (measured)", "", *hardware_section(run), "",
        "## Loss by epoch", "",
        "Epoch-end values from the TensorBoard event files; the global step is the optimizer steps done.", "",
        loss_table_markdown(run, chosen=save.epoch), "",
        f"![loss curve]({LOSS_PNG})", "",
        "## Objective evaluation", "", *eval_section(run, save.epoch), "",
        *proof_section(run),
    ]
    return "\n".join(parts)


def proof_section(run: Run) -> list[str]:
    """The demo's proof table (`python -m housevox.demo_proof`, run by make demo), when the run has one."""
    doc = read_proof(run.folder)
    if doc is None:
        return []
    s = doc["render"]
    return ["## Demo proof: it learned style B", "",
            f"From `{PROOF_FILE}`: FAD in the `{doc['embedding']['kind']}` embedding (sampler latents vs cache latents, "
            f"per 1/25 s frame) of {len(doc['takes'])} fixed takes, {s['steps']} steps, {s['duration_s']:g} s each.", "",
            proof_table_markdown(doc), ""]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m housevox.card", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="run folder: lightning_logs/<run_name>")
    p.add_argument("--epoch", default="best",
                   help="best (lowest val/loss among exported epochs, default), best-eval (the best epoch in "
                        "eval.json, see housevox.eval), last, or an epoch number")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run = load_run(args.run_dir)
    save = choose(run, args.epoch)
    text = render(run, save, run_config(run))
    fig = plot_training(run)
    save_figure(fig, run.folder / LOSS_PNG)
    write_text(run.folder / CARD, text)
    print(f"release card: {run.folder / CARD} (epoch {save.epoch}, {save.comfyui_file.name})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
