"""LightningDataModule over the segment cache: build once in prepare_data, then read entries lazily.

Batching: every 30 s segment has T = 750 latent frames, but each caption + lyrics has its own
condition length L. A batch pads its conditions to its longest L and carries the mask; the DiT
masks the padding out of its cross-attention, so each row is computed as that segment alone
(unpadded, as inference sees it). Each optimizer step's samples are the next
batch_size · accumulate (· ranks) of the epoch's permutation whatever the split, sorted by L
inside that window so that similar lengths share a micro-batch and padding stays small.
"""

import hashlib
import logging
import signal
from collections.abc import Iterator
from typing import Literal
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from housevox.acestep.conditioning import pad_rows
from housevox.data.cache import build_cache, entry_path, load_entry, read_index
from housevox.errors import HousevoxError
from housevox.seeding import derived_generator

log = logging.getLogger(__name__)


class SegmentCacheDataset(Dataset):
    """Index rows in RAM, tensors on disk: one entry is opened per item, so RAM scales with the index."""

    def __init__(self, entries: list[dict], cache_dir: str | Path):
        self.entries, self.cache_dir = entries, Path(cache_dir)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        row = self.entries[i]
        path = entry_path(self.cache_dir, row["key"])
        try:
            item = load_entry(path, row["key"])
        except HousevoxError as exc:
            # Never train on it and never swap in another sample: remove it so the next run rebuilds it.
            path.unlink(missing_ok=True)
            raise HousevoxError(f"{exc}; removed it, run again to rebuild it") from None
        if (item["target_latents"].shape[0], item["encoder_hidden_states"].shape[0]) != (row["T"], row["L"]):
            raise HousevoxError(f"{path}: shapes differ from {self.cache_dir / 'index.json'}; run again to rebuild the cache")
        item["index"] = i
        return item


PADDED = ("encoder_hidden_states", "encoder_attention_mask")  # [L, ...]: padded to the batch's longest L


def collate(items: list[dict]) -> dict:
    """Stack entries, padding conditions (and their masks, with False) to the longest L; `padded` says if any was."""
    lengths = {item["encoder_hidden_states"].shape[0] for item in items}
    batch = {name: (pad_rows if name in PADDED else torch.stack)([item[name] for item in items])
             for name in items[0] if name != "index"}
    batch["index"] = torch.tensor([item["index"] for item in items])
    batch["padded"] = len(lengths) > 1
    return batch


class _EpochOrder(Sampler[int]):
    """Sample order from (seed, epoch) alone; Lightning calls set_epoch on `batch_sampler.sampler`."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        generator = derived_generator(self.seed, self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


class SeededBatchSampler(Sampler[list[int]]):
    """Micro-batches in an order fixed by (seed, epoch), the same samples per optimizer step at any split.

    The epoch's permutation is cut into windows of batch_size · accumulate · num_replicas samples
    (one optimizer step); each window is sorted by group key (T, L), stable, and cut into
    micro-batches of `batch_size`, so similar lengths share a batch and a window's samples do not
    depend on how it is split. Under DDP each rank takes every `num_replicas`-th micro-batch, the
    list padded by repeating its first batches so every rank steps equally often. `__len__` is
    always a whole epoch (Lightning counts skipped batches itself when it resumes mid-epoch).
    """

    def __init__(self, group_keys: list[tuple], batch_size: int, seed: int, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0, accumulate: int = 1):
        if batch_size < 1:
            raise HousevoxError(f"data.batch_size: must be at least 1, got {batch_size}")
        self.group_keys, self.batch_size, self.accumulate = list(group_keys), batch_size, max(1, accumulate)
        self.num_replicas, self.rank = num_replicas, rank
        self.sampler = _EpochOrder(len(self.group_keys), seed, shuffle)
        self._skip: tuple[int, int] = (0, 0)  # (epoch, batches to skip in that epoch)

    @property
    def window(self) -> int:
        """Samples per optimizer step over all ranks."""
        return self.batch_size * self.accumulate * self.num_replicas

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def set_start_batch(self, k: int, epoch: int | None = None) -> None:
        """Skip the first k batches of `epoch` (default: the current one); other epochs start at 0."""
        self._skip = (self.epoch if epoch is None else epoch, k)

    def _start(self) -> int:
        epoch, k = self._skip
        return k if epoch == self.epoch else 0

    def batches(self) -> list[list[int]]:
        """This rank's batches of the current epoch, skip ignored."""
        order, done = list(self.sampler), []
        for start in range(0, len(order), self.window):
            window = sorted(order[start:start + self.window], key=lambda i: self.group_keys[i])
            done += [window[j:j + self.batch_size] for j in range(0, len(window), self.batch_size)]
        if self.num_replicas > 1 and done:
            per_rank = -(-len(done) // self.num_replicas)
            done = (done * self.num_replicas)[: per_rank * self.num_replicas][self.rank::self.num_replicas]
        return done

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches()[self._start():])

    def __len__(self) -> int:
        return self.full_length()

    def full_length(self) -> int:
        """Batches per rank in a whole epoch: the same for every epoch."""
        whole, rest = divmod(len(self.group_keys), self.window)
        total = whole * self.window // self.batch_size + -(-rest // self.batch_size)
        return -(-total // self.num_replicas) if total else 0


def split_tracks(tracks: list[str], val_tracks: list[str] | None, val_fraction: float) -> set[str]:
    """Validation tracks: the explicit list, else round(fraction·n) tracks ranked by a hash of their name.

    The hash ignores the run seed, so a resumed or re-seeded run validates on the same tracks.
    At least one track always stays for training.
    """
    unique = sorted(set(tracks))
    if val_tracks is not None:
        unknown = sorted(set(val_tracks) - set(unique))
        if unknown:
            raise HousevoxError(f"data.val_tracks: {unknown[0]!r} is not a track in the cache")
        if set(val_tracks) >= set(unique):
            raise HousevoxError("data.val_tracks: lists every track; leave at least one for training")
        return set(val_tracks)
    if not 0.0 <= val_fraction < 1.0:
        raise HousevoxError(f"data.val_fraction: must be in [0, 1), got {val_fraction}")
    n_val = min(len(unique) - 1, max(1 if val_fraction > 0 else 0, round(val_fraction * len(unique))))
    ranked = sorted(unique, key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())
    return set(ranked[:n_val])


def split_entries(entries: list[dict], val_tracks: list[str] | None, val_fraction: float,
                  cache_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows) of a cache index, split by track: what training and the eval both use."""
    if not entries:
        raise HousevoxError(f"{Path(cache_dir) / 'index.json'}: the cache holds no segments")
    val = split_tracks(sorted({row["track"] for row in entries}), val_tracks, val_fraction)
    return [r for r in entries if r["track"] not in val], [r for r in entries if r["track"] in val]


def leave_interrupts_to_the_trainer(worker_id: int) -> None:
    """A terminal's Ctrl-C reaches every process of the group: workers ignore it, so the trainer, which finishes
    the optimizer step in flight before it stops, still gets the batches it needs (they end with it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class SegmentCacheDataModule(L.LightningDataModule):
    """Owns the 30 s segment cache: encoders run once in prepare_data, training reads cached tensors only.

    Args:
        segments_dir: Folder written by `python -m housevox.prep` (segment WAVs + manifest.jsonl).
        checkpoint_dir: ACE-Step v1.5 checkpoint folder whose VAE, text encoder and condition encoder build the cache.
        cache_dir: Where cache entries and index.json live; default `<segments_dir>/cache`.
        batch_size: Segments per micro-batch (conditions of different lengths are padded and masked, exactly), or
            auto: the largest the predicted GPU memory allows, dividing accumulate_grad_batches, which shrinks to keep
            the effective batch (auto counts as 1); 1 on CPU.
        num_workers: DataLoader worker processes reading cache entries.
        val_tracks: Track ids held out for validation; overrides val_fraction.
        val_fraction: Share of tracks held out for validation when val_tracks is not given (0 = none).
        default_caption: Caption for segments whose manifest row has none.
        seed: Seed of the training data order (with the epoch); the LightningModule sets the run seed here.
    """

    def __init__(self, segments_dir: str, checkpoint_dir: str, cache_dir: str | None = None,
                 batch_size: int | Literal["auto"] = 1,
                 num_workers: int = 0, val_tracks: list[str] | None = None, val_fraction: float = 0.1,
                 default_caption: str = "", seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["seed"])  # the run seed belongs to the LightningModule's hparams
        self.segments_dir = Path(segments_dir)
        if not self.segments_dir.is_dir():
            raise HousevoxError(f"data.segments_dir: {self.segments_dir} is not a folder")
        if not (self.segments_dir / "manifest.jsonl").is_file():
            raise HousevoxError(f"data.segments_dir: {self.segments_dir} has no manifest.jsonl; run `python -m housevox.prep`")
        self.checkpoint_dir = checkpoint_dir
        self.cache_dir = Path(cache_dir) if cache_dir else self.segments_dir / "cache"
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_tracks, self.val_fraction = val_tracks, val_fraction
        self.default_caption, self.seed = default_caption, seed
        self.last_build_report = None
        self._resume: tuple[int, int] = (0, 0)  # (epoch, batches done) restored from a checkpoint
        self.train_set: SegmentCacheDataset | None = None
        self.val_set: SegmentCacheDataset | None = None

    @property
    def micro_batch_size(self) -> int:
        """batch_size, or 1 while `auto` is unresolved (housevox.fit's AutoBatchSize resolves it at setup)."""
        return 1 if self.batch_size == "auto" else self.batch_size

    def _build_device(self) -> torch.device:
        """Encode where training will run (the trainer's device); on CPU without a trainer."""
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def prepare_data(self) -> None:
        self.last_build_report = build_cache(self.segments_dir, self.checkpoint_dir, self.cache_dir,
                                             self.default_caption, device=self._build_device())
        report = self.last_build_report
        log.info("segment cache %s: %d built, %d reused, %d skipped", self.cache_dir, report.built, report.reused,
                 len(report.skipped))

    def setup(self, stage: str | None = None) -> None:
        train, val = split_entries(read_index(self.cache_dir), self.val_tracks, self.val_fraction, self.cache_dir)
        if not val:
            log.warning("no validation tracks (%d track(s) in the cache, val_fraction %s): validation is empty",
                        len({row["track"] for row in train}), self.val_fraction)
        self.train_set = SegmentCacheDataset(train, self.cache_dir)
        self.val_set = SegmentCacheDataset(val, self.cache_dir)

    def _sampler(self, dataset: SegmentCacheDataset, shuffle: bool) -> SeededBatchSampler:
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        accumulate = trainer.accumulate_grad_batches if trainer is not None and shuffle else 1
        return SeededBatchSampler([(r["T"], r["L"]) for r in dataset.entries], self.micro_batch_size, self.seed, shuffle,
                                  num_replicas=replicas, rank=rank, accumulate=accumulate)

    def _loader(self, dataset: SegmentCacheDataset, sampler: SeededBatchSampler) -> DataLoader:
        return DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers, collate_fn=collate,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
                          worker_init_fn=leave_interrupts_to_the_trainer if self.num_workers else None)

    def train_dataloader(self) -> DataLoader:
        """Starts at the restored (epoch, batch) position: Lightning builds this iterator before it calls set_epoch."""
        train = self._require(self.train_set)
        sampler = self._sampler(train, shuffle=True)
        epoch, done = self._resume
        if done >= sampler.full_length():
            epoch, done = epoch + 1, 0
        sampler.set_epoch(epoch)
        sampler.set_start_batch(done, epoch)
        return self._loader(train, sampler)

    def state_dict(self) -> dict:
        """The data position, read from the trainer's counters (prefetched batches are not counted)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        return {"epoch": trainer.current_epoch, "batches_done": trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = (int(state.get("epoch", 0)), int(state.get("batches_done", 0)))

    def val_dataloader(self) -> DataLoader:
        val = self._require(self.val_set)
        return self._loader(val, self._sampler(val, shuffle=False))

    def dataset_hash(self) -> str:
        """16 hex digits over every entry key in the split: names the exact data (audio, captions, checkpoint) a LoRA saw."""
        keys = sorted(r["key"] for dataset in (self.train_set, self.val_set) for r in self._require(dataset).entries)
        return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]

    def train_batches_per_epoch(self) -> int:
        train = self._require(self.train_set)
        return self._sampler(train, shuffle=True).full_length()

    @staticmethod
    def _require(dataset: SegmentCacheDataset | None) -> SegmentCacheDataset:
        if dataset is None:
            raise RuntimeError("SegmentCacheDataModule.setup() must run before its dataloaders are built")
        return dataset
