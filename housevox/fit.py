"""`python -m housevox.fit fit --config configs/house_vocal_beast_v2.yaml` — LoRA training via LightningCLI.

Each run lives in one fixed folder, `<trainer.default_root_dir>/lightning_logs/<run_name>/`
(logs, checkpoints, LoRA files), so `--ckpt_path last` finds the previous invocation's
`last.ckpt` instead of Lightning opening a fresh `version_N/` and starting from step 0.
`--preset seed.json` runs one of the seed's flat JSON configs unchanged.
"""

import logging
import shlex
import sys
import tempfile
import warnings
from pathlib import Path

import yaml
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy

from housevox.accelerator import check_can_train
from housevox.acestep import locate_checkpoint
from housevox.data import SegmentCacheDataModule
from housevox.demo import resolve_demo_value
from housevox.errors import HousevoxError, Stopped, UsageError, run_cli
from housevox.plan.auto_batch import AutoBatchSize
from housevox.plan.callback import CheckpointingAuto, RunLint
from housevox.train.callbacks import (
    CosineRestartSchedule,
    HeavyLogger,
    LoRAExport,
    LossLogger,
    NonFiniteLossGuard,
    RunCheckpoints,
    RunProfile,
    run_dir,
)
from housevox.train.checkpoint_io import AtomicCheckpointIO
from housevox.train.evaluate import ExportEval
from housevox.train.module import HouseVoxLoRA
from housevox.train.preview import AudioPreview
from housevox.train.seed_config import load_seed_json
from housevox.train.stopping import StopOnSignal

log = logging.getLogger("housevox")

TRAINER_DEFAULTS = {
    "max_epochs": 100,
    "accumulate_grad_batches": 4,
    "log_every_n_steps": 1,
    "num_sanity_val_steps": 0,
    "enable_checkpointing": False,  # RunCheckpoints writes last.ckpt / epoch_NNN.ckpt atomically
    "use_distributed_sampler": False,  # the batch sampler shards by rank itself
}


class HouseVoxCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_name", default="housevox", help="name of the run folder under lightning_logs/")
        parser.link_arguments("model.checkpoint_dir", "data.checkpoint_dir")

    def _cfg(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def run_folder(self) -> Path:
        cfg = self._cfg()
        return Path(cfg.trainer.default_root_dir or ".") / "lightning_logs" / cfg.run_name

    def before_instantiate_classes(self) -> None:
        cfg = self._cfg()
        root = cfg.trainer.default_root_dir
        cfg.model.checkpoint_dir = resolve_demo_value(cfg.model.checkpoint_dir, root)
        cfg.data.checkpoint_dir = cfg.model.checkpoint_dir
        cfg.data.segments_dir = resolve_demo_value(cfg.data.segments_dir, root)
        if self.subcommand == "fit" and cfg.get("ckpt_path") == "last":
            last = self.run_folder() / "checkpoints" / "last.ckpt"
            if not last.is_file():
                raise UsageError(f"--ckpt_path last: no {last} to resume from (run '{cfg.run_name}' has no checkpoint yet)")
            cfg.ckpt_path = str(last)
        if self.subcommand == "fit":
            refusal = check_can_train(cfg.trainer.accelerator, locate_checkpoint(cfg.model.checkpoint_dir).config.size_name)
            if refusal:
                raise HousevoxError(refusal)

    def instantiate_trainer(self, **kwargs):
        cfg = self._cfg()
        logger = TensorBoardLogger(save_dir=str(self.run_folder().parent.parent), name="lightning_logs",
                                   version=cfg.run_name, default_hp_metric=False)
        return super().instantiate_trainer(logger=logger, plugins=[AtomicCheckpointIO()],
                                           strategy=ddp_strategy(cfg.trainer.strategy), **kwargs)

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        folder = run_dir(self.trainer)
        loras = sorted((folder / "lora").glob("epoch_*"))
        print(f"\nTensorBoard logs: {folder}   (tensorboard --logdir {folder.parent})")
        print(f"Checkpoints:      {folder / 'checkpoints'}")
        if loras:
            print(f"LoRA:             {loras[-1]}  (PEFT folder adapter/ + ComfyUI .safetensors; LoKr also lokr_weights.safetensors for ACE-Step)")


def ddp_strategy(strategy):
    """`strategy: ddp` with gradient_as_bucket_view: DDP's all-reduce buckets become the gradients' own storage
    instead of a second fp32 copy of them (1.19 GiB per rank for the XL seed's LoRA); anything else as given."""
    if strategy == "ddp":
        return DDPStrategy(gradient_as_bucket_view=True)
    return strategy


def _expand_preset(argv: list[str]) -> list[str]:
    """Replace `--preset seed.json` by `--config <converted yaml>` at the same place, so later flags override it."""
    if "--preset" not in argv:
        return argv
    i = argv.index("--preset")
    if i + 1 >= len(argv):
        raise UsageError("--preset needs a seed JSON file")
    converted = load_seed_json(argv[i + 1])
    tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="housevox-preset-", delete=False)
    with tmp:
        yaml.safe_dump(converted, tmp)
    return argv[:i] + ["--config", tmp.name] + argv[i + 2:]


CONFIG_SECTIONS = {"run_name", "seed_everything", "trainer", "model", "data", "ckpt_path", "optimizer", "lr_scheduler"}


def _check_config_files(argv: list[str]) -> None:
    """Refuse a `--config` YAML that does not parse or has an unknown top-level section (jsonargparse ignores those)."""
    for i, arg in enumerate(argv[:-1]):
        if arg != "--config" or not Path(argv[i + 1]).is_file():
            continue
        path = Path(argv[i + 1])
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"{path}: not valid YAML ({first})") from None
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise UsageError(f"{path}: the config must be a mapping of sections (model, data, trainer, ...)")
        unknown = sorted(str(k) for k in doc if k not in CONFIG_SECTIONS)
        if unknown:
            raise UsageError(f"{path}: unknown section {unknown[0]!r} (known: {', '.join(sorted(CONFIG_SECTIONS))})")


def callbacks() -> list:
    # LoRAExport before RunCheckpoints: the epoch's checkpoint is written once its LoRA is complete, so a
    # kill during the export resumes from the step checkpoint before it and exports again. ExportEval after
    # LoRAExport: it scores the epoch just exported. StopOnSignal after RunCheckpoints (an epoch-end stop
    # reuses its last.ckpt) and RunProfile, before the slow preview and eval. RunLint first at the train start:
    # the run's size and predicted time are the fit's first lines. AutoBatchSize first of all (at setup): the
    # schedule, the lint and the loaders need the resolved batch_size and accumulation; CheckpointingAuto next
    # (at setup, before configure_model builds the model), at the resolved batch_size.
    return [AutoBatchSize(), CheckpointingAuto(), CosineRestartSchedule(), LossLogger(), HeavyLogger(),
            NonFiniteLossGuard(), LoRAExport(), RunCheckpoints(), RunLint(), RunProfile(), StopOnSignal(),
            AudioPreview(), ExportEval()]


def resume_command(argv: list[str]) -> str:
    """The command that continues a stopped run: the same arguments with `--ckpt_path last`."""
    args, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--ckpt_path="):
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        args.append(arg)
    return shlex.join(["python", "-m", "housevox.fit", *args, "--ckpt_path", "last"])


class ParsedConfig(HouseVoxCLI):
    """fit's parser and checks, nothing built or run: the lint reads a run exactly as fit would start it.

    A run linted before its checkpoint or segments exist may leave their paths out (they read as empty).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, seed_everything_default=False, **kwargs)  # reading a config draws no seed

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.set_defaults({"model.checkpoint_dir": "", "data.segments_dir": ""})

    def before_instantiate_classes(self) -> None:
        self.subcommand = None  # LightningCLI runs no subcommand without one

    def instantiate_classes(self) -> None:
        pass


def _cli(cli_class: type[HouseVoxCLI], argv: list[str]) -> HouseVoxCLI:
    """`cli_class` on fit's arguments (`--preset` expanded, `--config` files checked); config errors are one line."""
    # argv is always passed explicitly (after --preset expansion); Lightning would warn that sys.argv differs.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # HouseVoxLoRA draws each batch's noise on the host in on_before_batch_transfer; the datamodule has no such hook.
    warnings.filterwarnings("ignore", message="You have overridden `on_before_batch_transfer`")
    argv = _expand_preset(argv)
    _check_config_files(argv)
    try:
        return cli_class(
            HouseVoxLoRA, SegmentCacheDataModule, args=argv,
            trainer_defaults={**TRAINER_DEFAULTS, "callbacks": callbacks()},
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,  # model.optimizer_type chooses; a second --optimizer would be ignored
            parser_kwargs={"exit_on_error": False},
        )
    except HousevoxError:
        raise
    except (ArgumentError, TypeError, ValueError, KeyError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines()[:2]]  # jsonargparse: the key, then the problem
        raise UsageError(f"config: {' '.join(lines) or type(exc).__name__}") from None


def fit_config(argv: list[str]):
    """The `fit` config (model, data, trainer, ...) that `python -m housevox.fit fit ARGV` would run."""
    return _cli(ParsedConfig, ["fit", *argv]).config.fit


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    given = list(sys.argv[1:] if argv is None else argv)
    try:
        _cli(HouseVoxCLI, given)
    except Stopped as stop:
        raise Stopped(f"{stop}\n  resume:     {resume_command(given)}", stop.exit_code) from None
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
