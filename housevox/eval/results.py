"""`eval.json` in the run folder: the eval's settings, the base's scores and one row per scored epoch.

One document per embedding and settings: a later eval with the same settings adds or
replaces epochs, one with other settings starts the document afresh. The best epoch is
the lowest FAD to the training set among epochs that still follow their prompts (CLAP
score at most CLAP_MARGIN below the base's); without a CLAP score, the lowest FAD.
"""

import hashlib
import json
from pathlib import Path

from housevox.atomic import write_json
from housevox.errors import HousevoxError

EVAL_FILE = "eval.json"
FORMAT_VERSION = 1
CLAP_MARGIN = 0.05
METRICS = ("fad_train", "fad_held_out", "clap_score")
BEST_RULE = (f"lowest fad_train among epochs with clap_score >= base clap_score - {CLAP_MARGIN} "
             "(lowest fad_train when the embedding has no CLAP score)")


def new_document(embedding: dict, settings: dict, reference: dict, base: dict) -> dict:
    key = hashlib.sha256(json.dumps([embedding, settings, reference], sort_keys=True).encode()).hexdigest()[:16]
    return {"format_version": FORMAT_VERSION, "embedding": embedding, "settings": settings, "settings_key": key,
            "reference": reference, "base": base, "epochs": [], "best_epoch": None, "best_rule": BEST_RULE}


def carry_over(doc: dict, old: dict | None) -> dict:
    """Keep the epochs an earlier eval with identical settings scored (a changed setting makes them incomparable)."""
    if old and old.get("settings_key") == doc["settings_key"]:
        for row in old.get("epochs", []):
            add_epoch(doc, row)
    return doc


def add_epoch(doc: dict, row: dict) -> None:
    """Add or replace the row of `row["epoch"]`, keep rows in epoch order, and recompute the best epoch."""
    doc["epochs"] = sorted([r for r in doc["epochs"] if r["epoch"] != row["epoch"]] + [row], key=lambda r: r["epoch"])
    doc["best_epoch"] = best_epoch(doc)


def epoch_row(epoch: int, global_step: int, lora_file: str, scores: dict, base: dict) -> dict:
    """Scores of one epoch, with each metric's difference to the base (negative FAD delta: closer to the set)."""
    deltas = {f"{m}_vs_base": scores[m] - base[m] for m in METRICS if scores.get(m) is not None and base.get(m) is not None}
    return {"epoch": epoch, "global_step": global_step, "lora_file": lora_file, **scores, **deltas}


def best_epoch(doc: dict) -> int | None:
    base_clap = doc["base"].get("clap_score")
    rows = [r for r in doc["epochs"]
            if base_clap is None or r.get("clap_score") is None or r["clap_score"] >= base_clap - CLAP_MARGIN]
    return min(rows, key=lambda r: (r["fad_train"], r["epoch"]))["epoch"] if rows else None


def read_eval(folder: str | Path) -> dict | None:
    """The run's eval.json, None when there is none; a damaged one is a HousevoxError naming it."""
    path = Path(folder) / EVAL_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HousevoxError(f"{path}: unreadable ({exc}); run python -m housevox.eval again") from None
    if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION or not isinstance(doc.get("epochs"), list):
        raise HousevoxError(f"{path}: not an eval.json of this housevox version; run python -m housevox.eval again")
    return doc


def write_eval(folder: str | Path, doc: dict) -> Path:
    path = Path(folder) / EVAL_FILE
    write_json(path, doc)
    return path


def log_scalars(writer, doc: dict, row: dict) -> None:
    """`eval/<embedding>/<metric>` for the epoch and `<metric>_base` beside it, at the epoch's last step (as val/loss)."""
    step = max(row["global_step"] - 1, 0)
    prefix = f"eval/{doc['embedding']['kind']}"
    for metric in METRICS:
        for tag, value in ((metric, row.get(metric)), (f"{metric}_base", doc["base"].get(metric))):
            if value is not None:
                writer.add_scalar(f"{prefix}/{tag}", value, step)
    writer.flush()


def _cell(lora, base) -> str:
    if lora is None:
        return "—"
    return f"{lora:.4g}" + (f" ({base:.4g})" if base is not None else "")


def eval_table_markdown(doc: dict, chosen: int | None = None) -> str:
    """Per scored epoch, LoRA (base) for each metric; ★ marks the best epoch, ← the epoch a card is about."""
    base = doc["base"]
    lines = ["| epoch | FAD to training set | FAD to held-out tracks | CLAP score |", "|---:|---:|---:|---:|"]
    for r in doc["epochs"]:
        mark = (" ★ best eval" if r["epoch"] == doc.get("best_epoch") else "") + (" ← this card" if r["epoch"] == chosen else "")
        lines.append(f"| {r['epoch']}{mark} | " + " | ".join(_cell(r.get(m), base.get(m)) for m in METRICS) + " |")
    return "\n".join(lines)
