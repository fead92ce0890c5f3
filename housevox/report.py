"""Read a housevox run folder into plain lists and draw its figures (the notebook and `housevox.card` share these).

Steps: Lightning logs a value at the 0-based index of the optimizer step it follows, and
epoch-end values at the epoch's last step. Everything here counts optimizer steps done
(event step + 1), the `global_step` a LoRA header records, so save points, the loss
table and the curves line up.
"""

import io
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure

from housevox.atomic import write_bytes
from housevox.errors import HousevoxError
from housevox.lora import LoRAFile, open_lora, read_lora
from housevox.lora.formats import ACESTEP_LOKR_WEIGHTS
from housevox.lora.targets import module_kind, module_sort_key

KINDS = ("self", "cross", "mlp")
STEP_TAGS = ("train/loss_step", "train/loss_smooth", "train/lr", "train/grad_norm")
_LORA_FOLDER = re.compile(r"epoch_(\d+)")


@dataclass
class Series:
    steps: list[int]
    values: list[float]


@dataclass
class SavePoint:
    """One `lora/epoch_NNN/` export: its folder, ComfyUI file and header."""

    epoch: int
    global_step: int
    folder: Path
    comfyui_file: Path
    lora: LoRAFile


@dataclass
class EpochRow:
    epoch: int
    global_step: int
    train_loss: float | None
    val_loss: float | None
    save: SavePoint | None = None


@dataclass
class Run:
    folder: Path
    scalars: dict[str, Series]
    epochs: list[EpochRow]
    saves: list[SavePoint] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.folder.name

    def best(self, exported_only: bool = False) -> EpochRow | None:
        """Epoch with the lowest val/loss (among those with a LoRA file if `exported_only`)."""
        rows = [r for r in self.epochs if r.val_loss is not None and (r.save or not exported_only)]
        return min(rows, key=lambda r: r.val_loss) if rows else None


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*"))


def read_scalars(folder: Path) -> dict[str, list]:
    """Raw scalar events per tag, oldest write first; a resumed run's re-logged steps come later and win."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its "No path found after …" info line is not ours
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: sorted(acc.Scalars(tag), key=lambda e: e.wall_time) for tag in acc.Tags()["scalars"]}


def _last_per_step(events: list) -> Series:
    by_step = {e.step + 1: e.value for e in events}
    steps = sorted(by_step)
    return Series(steps, [by_step[s] for s in steps])


def _epoch_of(event, epoch_events: list) -> int:
    """1-based epoch of an epoch-end event: Lightning's `epoch` scalar logged with it (same step, nearest time)."""
    same = [e for e in epoch_events if e.step == event.step]
    if not same:
        raise HousevoxError(f"event at step {event.step} has no 'epoch' scalar next to it")
    return int(min(same, key=lambda e: abs(e.wall_time - event.wall_time)).value) + 1


def save_points(folder: Path) -> list[SavePoint]:
    """Finished LoRA exports (the single file is written last, so a folder without one is still being written)."""
    points = []
    for sub in sorted((folder / "lora").glob("epoch_*")):
        m = _LORA_FOLDER.fullmatch(sub.name)
        files = sorted(f for f in sub.glob("*.safetensors") if f.name != ACESTEP_LOKR_WEIGHTS)
        if not m or not files:
            continue
        lf = open_lora(files[0])
        if not lf.metadata.get("global_step", "").isdigit():
            raise HousevoxError(f"{files[0]}: no global_step in the header (not exported by housevox?)")
        points.append(SavePoint(int(m.group(1)), int(lf.metadata["global_step"]), sub, files[0], lf))
    return points


def load_run(folder: str | Path) -> Run:
    """Everything the report and the card need from one run folder; a folder without event files is refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HousevoxError(f"{folder}: no such run folder (expected lightning_logs/<run_name>/)")
    if not event_files(folder):
        raise HousevoxError(f"{folder}: no TensorBoard event files (events.out.tfevents.*): not a housevox run folder")
    raw = read_scalars(folder)
    scalars = {tag: _last_per_step(raw[tag]) for tag in STEP_TAGS if tag in raw}
    per_epoch: dict[int, dict] = defaultdict(dict)
    for tag in ("train/loss_epoch", "val/loss"):
        for e in raw.get(tag, []):
            per_epoch[_epoch_of(e, raw["epoch"])].update({tag: e.value, "step": e.step + 1})
    saves = save_points(folder)
    by_epoch = {s.epoch: s for s in saves}
    epochs = [EpochRow(ep, v["step"], v.get("train/loss_epoch"), v.get("val/loss"), by_epoch.get(ep))
              for ep, v in sorted(per_epoch.items())]
    return Run(folder, scalars, epochs, saves)


def run_config(run: Run) -> dict:
    """The run's saved LightningCLI config (`config.yaml`), {} when it has none."""
    path = run.folder / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HousevoxError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def module_norms(lora: str | Path) -> dict[str, float]:
    """‖ΔW‖_F = (alpha/r)·‖B·A‖_F per ORIGINAL module path: how far training moved each adapted Linear."""
    weights = read_lora(lora)
    return {p: float(weights.delta(p).norm()) for p in sorted(weights.modules, key=module_sort_key)}


def norm_grid(norms: dict[str, float]) -> tuple[list[int], list[str], np.ndarray]:
    """Layers, module columns (`self_attn.q_proj`, ... in block order) and the [layer, column] ‖ΔW‖ matrix (NaN: not adapted)."""
    order = {}
    for p in norms:  # `norms` is in module order, so columns come out self, cross, mlp
        order.setdefault(".".join(p.split(".")[2:4]), None)
    layers, columns = sorted({int(p.split(".")[1]) for p in norms}), list(order)
    grid = np.full((len(layers), len(columns)), np.nan)
    for p, n in norms.items():
        grid[layers.index(int(p.split(".")[1])), columns.index(".".join(p.split(".")[2:4]))] = n
    return layers, columns, grid


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def loss_table_markdown(run: Run, chosen: int | None = None) -> str:
    """Per-epoch loss table; ★ marks the best val/loss, ← the epoch a card is about."""
    best = run.best()
    lines = ["| epoch | global step | train/loss_epoch | val/loss | LoRA file |", "|---:|---:|---:|---:|:---|"]
    for r in run.epochs:
        mark = (" ★ best val" if best and r.epoch == best.epoch else "") + (" ← this card" if r.epoch == chosen else "")
        lora = f"`{r.save.folder.name}/`" if r.save else ""
        lines.append(f"| {r.epoch}{mark} | {r.global_step} | {_loss(r.train_loss)} | {_loss(r.val_loss)} | {lora} |")
    return "\n".join(lines)


def plot_training(run: Run) -> Figure:
    """Losses over optimizer steps with the lr schedule underneath, LoRA save points and the best val epoch marked."""
    fig = Figure(figsize=(11, 6.5), layout="constrained")
    ax, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    for tag, style in (("train/loss_step", dict(alpha=0.35, lw=0.8, label="step loss")),
                       ("train/loss_smooth", dict(lw=1.6, label="smoothed loss"))):
        if tag in run.scalars:
            ax.plot(run.scalars[tag].steps, run.scalars[tag].values, **style)
    for attr, style in (("train_loss", dict(marker="o", label="epoch loss (train)")),
                        ("val_loss", dict(marker="s", label="validation loss"))):
        rows = [r for r in run.epochs if getattr(r, attr) is not None]
        ax.plot([r.global_step for r in rows], [getattr(r, attr) for r in rows], **style)
    for i, s in enumerate(run.saves):
        for a in (ax, ax_lr):
            a.axvline(s.global_step, color="0.6", ls=":", lw=1, label="LoRA saved" if a is ax and i == 0 else None)
        ax.annotate(f"ep {s.epoch}", (s.global_step, 1), xycoords=("data", "axes fraction"), fontsize=8,
                    ha="right", va="top", rotation=90, color="0.4")
    best = run.best()
    if best:
        ax.plot([best.global_step], [best.val_loss], marker="*", ms=16, color="gold", mec="k", ls="none",
                label=f"best val: epoch {best.epoch} ({best.val_loss:.4f})")
    ax.margins(x=0.03)
    ax.set_ylabel("loss")
    ax.set_title(f"run {run.name}")
    ax.legend(loc="upper right", fontsize=8)
    if "train/lr" in run.scalars:
        ax_lr.plot(run.scalars["train/lr"].steps, run.scalars["train/lr"].values, color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    return fig


def plot_module_norms(norms: dict[str, float], title: str = "") -> Figure:
    """Which layers learned most: ‖ΔW‖ per layer and module, and per layer the squared norms stacked by kind."""
    layers, columns, grid = norm_grid(norms)
    fig = Figure(figsize=(12, max(3.5, 0.22 * len(layers) + 1.5)), layout="constrained")
    heat, bars = fig.subplots(1, 2, width_ratios=(3, 2))
    im = heat.imshow(grid, aspect="auto", cmap="viridis")
    heat.set_xticks(range(len(columns)), [c.replace("_attn", "").replace("_proj", "") for c in columns],
                    rotation=60, fontsize=8)
    heat.set_yticks(range(len(layers)), [str(i) for i in layers], fontsize=7)
    heat.set_ylabel("layer")
    heat.set_title("‖ΔW‖_F = (alpha/r)·‖B·A‖_F per module")
    fig.colorbar(im, ax=heat)
    left = np.zeros(len(layers))
    for i, kind in enumerate(KINDS):
        energy = np.array([sum(n * n for p, n in norms.items() if int(p.split(".")[1]) == layer and module_kind(p) == kind)
                           for layer in layers])
        bars.barh(range(len(layers)), energy, left=left, color=f"C{i}", label=kind)
        left += energy
    bars.set_yticks(range(len(layers)), [str(i) for i in layers], fontsize=7)
    bars.invert_yaxis()
    bars.set_xlabel("‖ΔW‖² summed over the layer's modules")
    bars.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """PNG written atomically, so a reader never sees half a picture."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes(path, buf.getvalue())
    return Path(path)
