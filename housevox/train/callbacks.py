"""Callbacks: lr schedule, loss logging, heavy logging, non-finite guard, checkpoints, LoRA export."""

import logging
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

import housevox
from housevox.atomic import write_json
from housevox.lora import extract_lora, write_acestep_lokr, write_comfyui_file, write_peft_folder
from housevox.train.eta import StepClock, clock
from housevox.train.schedule import lr_factor

log = logging.getLogger("housevox")


def run_dir(trainer: L.Trainer) -> Path:
    """The one folder of this run: logs, checkpoints and LoRA files live under it."""
    return Path(trainer.logger.log_dir if trainer.logger else trainer.default_root_dir)


def tensorboard_writer(trainer: L.Trainer):
    """The run's TensorBoard SummaryWriter (housevox.fit's logger), or None when the trainer logs elsewhere."""
    logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    return logger.experiment if logger is not None else None


def _epoch_complete(trainer: L.Trainer) -> bool:
    """False when the epoch was cut short (the non-finite guard stopped it): then no epoch checkpoint or LoRA
    may claim it, and last.ckpt must stay the guard's, from which a resume finishes the epoch."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed >= trainer.num_training_batches


def _stepped(pl_module) -> bool:
    """True right after an optimizer step (Lightning has already advanced global_step)."""
    stepped = pl_module.global_step != getattr(pl_module, "_housevox_seen_step", None)
    pl_module._housevox_seen_step = pl_module.global_step
    return stepped and pl_module.global_step > 0


class CosineRestartSchedule(L.Callback):
    """Sets the lr before every optimizer step from the global step alone, so resume needs no scheduler state.

    The total step count is fixed at the first fit and kept in checkpoints, so a resumed
    run follows the same curve even if the data or epochs changed.
    """

    def __init__(self):
        self.total_steps = None

    def on_train_start(self, trainer, pl_module) -> None:
        # Not on_fit_start: estimating the steps builds the train loader, which must wait for the run seed.
        if self.total_steps is None:
            self.total_steps = int(trainer.estimated_stepping_batches)

    def lr_at(self, pl_module, step: int) -> float:
        hp = pl_module.hparams
        if hp.scheduler_type == "constant":
            return hp.learning_rate * min(1.0, (step + 1) / max(hp.warmup_steps, 1))
        return hp.learning_rate * lr_factor(step, hp.warmup_steps, self.total_steps, hp.num_cycles, hp.cycle_steps)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        lr = self.lr_at(pl_module, trainer.global_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        pl_module.last_lr = lr

    def state_dict(self) -> dict:
        return {"total_steps": self.total_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.total_steps = state_dict.get("total_steps")


class LossLogger(L.Callback):
    """Step loss (mean over the step's samples, whatever the split), a smoothed loss, lr and grad norm.

    Losses are summed on the device and only read when logged, so the step has no host sync.
    """

    def __init__(self, smoothing: float = 0.9):
        self.smoothing = smoothing
        self._sum = None
        self._count = 0
        self._smooth = None

    def on_train_start(self, trainer, pl_module) -> None:
        # A resumed run's first micro-batch is no step of its own (with accumulation it only starts one).
        pl_module._housevox_seen_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        losses = outputs.get("sample_losses") if isinstance(outputs, dict) else None
        if losses is not None:
            self._sum = losses.sum() if self._sum is None else self._sum + losses.sum()
            self._count += losses.numel()
        if not _stepped(pl_module) or self._sum is None:
            return
        step_loss = self._sum / self._count
        self._sum, self._count = None, 0
        self._smooth = step_loss if self._smooth is None else self.smoothing * self._smooth + (1 - self.smoothing) * step_loss
        if pl_module.global_step % pl_module.hparams.log_every == 0:
            metrics = {"train/loss_step": step_loss, "train/loss_smooth": self._smooth,
                       "train/lr": getattr(pl_module, "last_lr", 0.0)}
            if getattr(pl_module, "last_grad_norm", None) is not None:
                metrics["train/grad_norm"] = pl_module.last_grad_norm
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)


# The adapter factor that starts at zero (LoRA's B, LoKr's w1 side): its norm shows how far training moved.
_ZERO_INIT_FACTOR = re.compile(r"\.(lora_B|lokr_w1|lokr_w1_a)\.")
_ADAPTER_PART = re.compile(r"\.(lora_|lokr_)")


class HeavyLogger(L.Callback):
    """Per-block grad norms and zero-initialised-factor norms (LoRA B, LoKr w1) as TensorBoard histograms."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        every = pl_module.hparams.log_heavy_every
        writer = tensorboard_writer(trainer) if every and (trainer.global_step + 1) % every == 0 else None
        if writer is None:
            return
        grads, b_norms = {}, {}
        for name, p in pl_module.named_parameters():
            if not p.requires_grad:
                continue
            block = _ADAPTER_PART.split(name, maxsplit=1)[0]
            if p.grad is not None:
                grads[block] = grads.get(block, 0.0) + p.grad.float().pow(2).sum()
            if _ZERO_INIT_FACTOR.search(name):
                b_norms[block] = p.detach().float().norm()
        step = trainer.global_step + 1
        if grads:
            writer.add_histogram("heavy/grad_norm_per_module", torch.stack(list(grads.values())).sqrt(), step)
        if b_norms:
            writer.add_histogram("heavy/lora_B_norm_per_module", torch.stack(list(b_norms.values())), step)


class NonFiniteLossGuard(L.Callback):
    """Skips an optimizer step whose gradients are NaN/Inf; stops, resumably, after too many in a row."""

    def __init__(self):
        self.in_a_row = 0
        self.skipped = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.trainable_parameters() if p.grad is not None]
        if not grads:
            self.in_a_row = 0
            return
        norm = torch.nn.utils.get_total_norm(grads)  # non-finite iff a gradient is; clipping reuses it
        pl_module.step_grad_norm = norm
        if bool(torch.isfinite(norm)):  # the step's one host sync
            self.in_a_row = 0
            return
        pl_module.step_grad_norm = None
        for p in pl_module.trainable_parameters():
            p.grad = None  # both optimizers skip parameters without a gradient: the step is a no-op
        self.in_a_row += 1
        self.skipped += 1
        log.warning("non-finite loss/gradients at step %d: step skipped (%d in a row)", trainer.global_step, self.in_a_row)
        limit = pl_module.hparams.max_nonfinite_steps
        if self.in_a_row >= limit:
            path = run_dir(trainer) / "checkpoints" / "last.ckpt"
            trainer.save_checkpoint(path, weights_only=False)
            log.error("stopping: %d non-finite steps in a row (lower learning_rate or check the data); "
                      "resume later with --ckpt_path last (%s)", limit, path)
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)


class RunCheckpoints(L.Callback):
    """`last.ckpt` every N optimizer steps, every M minutes and at each epoch end; `epoch_NNN.ckpt` every `save_every`,
    keeping K. Saves are written in the background (AtomicCheckpointIO), right after an optimizer step."""

    def __init__(self, keep: int = 3):
        self.keep = keep
        self._seen_step = self._saved_step = None
        self._last_save = time.monotonic()

    def _folder(self, trainer) -> Path:
        return run_dir(trainer) / "checkpoints"

    def on_fit_start(self, trainer, pl_module) -> None:
        """Delete temp files a killed write left in the run folder (`.<name>.<random>.tmp`, never read)."""
        if trainer.is_global_zero:
            for path in run_dir(trainer).rglob(".*.tmp"):
                path.unlink(missing_ok=True)

    def on_train_start(self, trainer, pl_module) -> None:
        # A resumed run restarts after an optimizer step: no save until the next one.
        self._seen_step = self._saved_step = trainer.global_step
        self._last_save = time.monotonic()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """The step about to change the saved tensors in place: a background save must have copied them by now."""
        fence = getattr(trainer.strategy.checkpoint_io, "wait_for_copy", None)
        if fence is not None:
            fence()

    def _time_due(self, trainer, pl_module) -> bool:
        minutes = pl_module.hparams.checkpoint_every_minutes
        if not minutes:
            return False
        due = time.monotonic() - self._last_save >= 60 * minutes
        # Every rank must join the save (a collective): rank zero's clock decides, once per optimizer step.
        return bool(trainer.strategy.broadcast(due, src=0)) if trainer.world_size > 1 else due

    def _save(self, trainer, path: Path) -> None:
        trainer.save_checkpoint(path, weights_only=False)
        self._saved_step = trainer.global_step
        self._last_save = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        stepped, self._seen_step = step != self._seen_step, step
        # Not after an epoch's last batch: Lightning resumes such a checkpoint in the next epoch, skipping this
        # epoch's validation, LoRA export and epoch checkpoint; on_train_epoch_end writes last.ckpt after them.
        if not stepped or not step or batch_idx + 1 >= trainer.num_training_batches or self._saved_step == step:
            return
        every = pl_module.hparams.checkpoint_every_n_steps
        if (every and step % every == 0) or self._time_due(trainer, pl_module):
            self._save(trainer, self._folder(trainer) / "last.ckpt")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not _epoch_complete(trainer):
            return
        folder = self._folder(trainer)
        epoch = trainer.current_epoch + 1
        if epoch % pl_module.hparams.save_every == 0:
            self._save(trainer, folder / f"epoch_{epoch:03d}.ckpt")
            if trainer.is_global_zero:  # the new file may still be on its way (written in the background)
                for old in sorted({*folder.glob("epoch_*.ckpt"), folder / f"epoch_{epoch:03d}.ckpt"})[: -self.keep]:
                    old.unlink(missing_ok=True)
        self._save(trainer, folder / "last.ckpt")


def export_file(trainer: L.Trainer, epoch: int) -> Path:
    """The ComfyUI single file of an epoch's export: `lora/epoch_NNN/<run>_epoch_NNN.safetensors`."""
    return export_path(trainer, f"epoch_{epoch:03d}")


def export_path(trainer: L.Trainer, name: str) -> Path:
    """`lora/<name>/<run>_<name>.safetensors`: epoch exports, and the step an interrupted run reached."""
    folder = run_dir(trainer)
    return folder / "lora" / name / f"{folder.name}_{name}.safetensors"


def write_export(trainer, pl_module, file: Path, metadata: dict[str, str]) -> None:
    """The adapter as it is now: PEFT folder (fp32) + ComfyUI file (bf16 factors), LoKr also ACE-Step's file."""
    if not trainer.is_global_zero:
        return
    weights = extract_lora(pl_module.dit)
    weights.metadata.update(metadata)
    write_peft_folder(file.parent / "adapter", weights, dtype=torch.float32)
    if weights.adapter_type == "lokr":
        write_acestep_lokr(file.parent, weights, dtype=torch.float32)
    # last: readers take a folder with the ComfyUI file as a finished export
    write_comfyui_file(file, weights, dtype=torch.bfloat16)
    log.info("LoRA written to %s", file.parent)


class LoRAExport(L.Callback):
    """Writes the adapter every `save_every` epochs and at the end: PEFT folder + ComfyUI single file,
    and for LoKr also ACE-Step's `lokr_weights.safetensors` (its handler's LyCORIS loader).

    Every rank reads the metrics (under DDP that is a collective), only rank zero writes.
    """

    def __init__(self):
        self.exported_epochs: list[int] = []

    def export(self, trainer, pl_module, epoch: int) -> None:
        write_export(trainer, pl_module, export_file(trainer, epoch), training_metadata(trainer, pl_module, epoch))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % pl_module.hparams.save_every == 0:
            self.export(trainer, pl_module, epoch)
            self.exported_epochs.append(epoch)

    def on_train_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch if trainer.current_epoch else 1
        if epoch not in self.exported_epochs and trainer.global_step > 0:
            self.export(trainer, pl_module, epoch)
            self.exported_epochs.append(epoch)

    def state_dict(self) -> dict:
        return {"exported_epochs": list(self.exported_epochs)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.exported_epochs = list(state_dict.get("exported_epochs", []))


def training_metadata(trainer, pl_module, epoch: int) -> dict[str, str]:
    """What a LoRA file should say about how it was made (safetensors header: strings only)."""
    hp = pl_module.hparams
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("train/loss_epoch", "val/loss")}
    datamodule = getattr(trainer, "datamodule", None)
    return {
        "housevox_version": housevox.__version__,
        "base_model": pl_module.base_name,
        **{f"base_model_source_{part}": source for part, source in pl_module.base_sources.items()},
        "base_model_variant": pl_module.config.variant,
        "base_model_hash": pl_module.base_fingerprint[:16],
        "adapter_type": hp.adapter_type, "rank": str(hp.rank), "alpha": str(hp.alpha),
        **({"lokr_factor": str(hp.lokr_factor), "lokr_decompose_both": str(hp.lokr_decompose_both),
            "lokr_full_matrix": str(hp.lokr_full_matrix), "lokr_rank_dropout": str(hp.lokr_rank_dropout)}
           if hp.adapter_type == "lokr" else {}),
        "target_modules": hp.target_modules_str, "attention_type": hp.attention_type,
        "epoch": str(epoch), "global_step": str(trainer.global_step),
        "train_loss": f"{metrics['train/loss_epoch']:.6f}" if "train/loss_epoch" in metrics else "",
        "val_loss": f"{metrics['val/loss']:.6f}" if "val/loss" in metrics else "",
        "shift": str(hp.shift), "num_inference_steps": str(hp.num_inference_steps),
        "cfg_ratio": str(hp.cfg_ratio), "seed": str(pl_module.run_seed),
        "dataset_hash": getattr(datamodule, "dataset_hash", lambda: "")() if datamodule else "",
    }


class RunProfile(L.Callback):
    """The whole run's remaining time as it goes (progress bar and a line an epoch), and `run_profile.json`
    (device, peak memory, epoch and step times predicted vs measured, total time, base model) for the card."""

    def __init__(self):
        self.seconds_per_epoch: list[float] = []
        self.total_seconds = 0.0
        self.started = None
        self.total_steps = None
        self.predicted = (None, "")  # (seconds per optimizer step, where / why not): RunLint's prediction
        self.measured = (0.0, 0)  # (seconds, steps) timed by earlier invocations of this run
        self.clock = StepClock()
        self._seen_step = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_t0 = self._epoch_t0 = time.perf_counter()  # a mid-epoch resume gets no epoch-start hook
        self.started = self.started or datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._base_total = self.total_seconds
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_start(self, trainer, pl_module) -> None:
        self.total_steps = int(trainer.estimated_stepping_batches)
        self._warm_from = self._seen_step = trainer.global_step
        if trainer.is_global_zero:
            self._show_remaining_in(trainer.progress_bar_callback)

    def _show_remaining_in(self, bar) -> None:
        """The progress bar's postfix gets the whole run's remaining time, next to the epoch's own."""
        if bar is None:
            return
        metrics = bar.get_metrics

        def with_remaining(trainer, pl_module):
            left = self.clock.remaining(trainer.global_step, self.total_steps)
            return {**metrics(trainer, pl_module), **({"run_left": clock(left)} if left is not None else {})}

        bar.get_metrics = with_remaining

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self._seen_step:
            self._seen_step = trainer.global_step
            self.clock.tick(trainer.global_step, trainer.current_epoch, self._warm_from)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds_per_epoch.append(round(time.perf_counter() - self._epoch_t0, 3))
        self.total_seconds = round(self._base_total + time.perf_counter() - self._fit_t0, 3)
        if trainer.is_global_zero:
            self.write(trainer, pl_module)
            line = f"run: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}, step {trainer.global_step:,}/{self.total_steps:,}"
            if self.step_seconds():
                line += f"; {self.step_seconds():.3g} s a step measured"
                line += f" (predicted {self.predicted[0]:.3g})" if self.predicted[0] else ""
            left = self.clock.remaining(trainer.global_step, self.total_steps)
            log.info(line + (f"; about {clock(left)} left" if left is not None else ""))

    def step_seconds(self) -> float | None:
        """Mean measured seconds per optimizer step, over this run's invocations."""
        total, count = self.measured[0] + self.clock.step_sum, self.measured[1] + self.clock.step_count
        return total / count if count else None

    def write(self, trainer, pl_module) -> None:
        device = pl_module.device
        cuda = device.type == "cuda"
        measured = self.step_seconds()
        write_json(run_dir(trainer) / "run_profile.json", {
            "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else None,
            "seconds_per_epoch": self.seconds_per_epoch,
            "total_seconds": self.total_seconds,
            # per finished checkpoint file: seconds the training thread waited, seconds the background write took
            "checkpoint_blocked_seconds": [round(b, 6) for b, _ in getattr(trainer.strategy.checkpoint_io, "timings", [])],
            "checkpoint_write_seconds": [round(w, 6) for _, w in getattr(trainer.strategy.checkpoint_io, "timings", [])],
            "optimizer_steps": self.total_steps,
            "step_seconds": {"predicted": round(self.predicted[0], 4) if self.predicted[0] else None,
                             "predicted_basis": self.predicted[1],
                             "measured": round(measured, 4) if measured else None,
                             "measured_steps": self.measured[1] + self.clock.step_count},
            "started": self.started,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "base_model": {"checkpoint_dir": str(pl_module.hparams.checkpoint_dir), "name": pl_module.base_name,
                           "sources": pl_module.base_sources},
        })

    def state_dict(self) -> dict:
        return {"seconds_per_epoch": self.seconds_per_epoch, "total_seconds": self.total_seconds, "started": self.started,
                "measured_step": [self.measured[0] + self.clock.step_sum, self.measured[1] + self.clock.step_count]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.seconds_per_epoch = list(state_dict.get("seconds_per_epoch", []))
        self.total_seconds = state_dict.get("total_seconds", 0.0)
        self.started = state_dict.get("started")
        total, count = state_dict.get("measured_step", [0.0, 0])
        self.measured = (float(total), int(count))
