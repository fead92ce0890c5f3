"""Checkpoints written next to their target and renamed, in the background, and read without unpickling code.

Lightning's default save goes through a temp dir and a move, which is a copy across
filesystems: a kill mid-copy tears `last.ckpt`. Here the temp file sits in the same
folder, is fsynced, and `os.replace` makes the switch atomic.

The XL seed's `last.ckpt` (fp32 LoRA + 8-bit Adam state, ~1.9 GB) would stall training for its
whole write and fsync every 50 steps. So the training thread hands the checkpoint to one writer
thread, which copies its tensors to the host and writes the copy; the trainer only waits, before
the next optimizer step changes those tensors, for the copy to be done (`wait_for_copy`). At most
one save is in flight (a later one waits for it), so at most one host copy exists.
"""

import threading
import time
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from housevox.atomic import save_torch
from housevox.errors import HousevoxError


def _tensors(obj, found: dict) -> None:
    if isinstance(obj, torch.Tensor):
        found[id(obj)] = obj
    elif isinstance(obj, dict):
        for value in obj.values():
            _tensors(value, found)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _tensors(value, found)


def _rebuild(obj, copies: dict):
    if isinstance(obj, torch.Tensor):
        return copies[id(obj)]
    if isinstance(obj, dict):
        return type(obj)((k, _rebuild(v, copies)) for k, v in obj.items()) if type(obj) is not dict else \
            {k: _rebuild(v, copies) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_rebuild(v, copies) for v in obj)
    return obj


class HostCopy:
    """Copies a checkpoint's tensors into host buffers kept from one save to the next.

    One buffer per dtype (pinned when the tensors are on CUDA), filled by one foreach copy, and
    reused while the checkpoint keeps its layout (it does, step after step): the XL checkpoint's
    thousands of tensors cost one pass, with no per-save allocation of 1.9 GB of pinned memory.
    Only call it when the previous copy has been written (the writer keeps one save in flight).
    The joined (same-moment) file of a job is written from the same copy.
    """

    def __init__(self):
        self._layout = None
        self._targets: list[torch.Tensor] = []

    def _allocate(self, sources: list[torch.Tensor], pinned: bool) -> list[torch.Tensor]:
        targets: list[torch.Tensor | None] = [None] * len(sources)
        for dtype in dict.fromkeys(t.dtype for t in sources):
            index = [i for i, t in enumerate(sources) if t.dtype == dtype]
            buffer = torch.empty(sum(sources[i].numel() for i in index), dtype=dtype, pin_memory=pinned)
            for i, part in zip(index, buffer.split([sources[i].numel() for i in index])):
                targets[i] = part.view(sources[i].shape)
        return targets

    def __call__(self, checkpoint: dict) -> dict:
        found: dict[int, torch.Tensor] = {}
        _tensors(checkpoint, found)
        sources = list(found.values())
        cuda = any(t.is_cuda for t in sources)
        layout = (cuda, *((t.dtype, t.shape) for t in sources))
        if layout != self._layout:
            self._targets, self._layout = self._allocate(sources, cuda), layout
        with torch.no_grad():
            torch._foreach_copy_(self._targets, sources, non_blocking=cuda)
        if cuda:  # the copy is queued behind the step that made the tensors; wait for it, not for later work
            done = torch.cuda.Event()
            done.record()
            done.synchronize()
        return _rebuild(checkpoint, dict(zip(found, self._targets)))


def _moment(checkpoint: dict) -> tuple:
    """Where in training a checkpoint was taken: two saves at the same moment hold the same state."""
    return checkpoint.get("epoch"), checkpoint.get("global_step"), repr(checkpoint.get("loops"))


class _Job:
    """One background save: the files it writes (saves taken at the same moment join it) and its copy's progress."""

    def __init__(self, moment: tuple, path: Path, blocked: float):
        self.moment = moment
        self.files = [(path, blocked)]
        self.copied = threading.Event()
        self.waited = 0.0  # seconds the training thread spent on it: starting it, and waiting for its copy


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic checkpoint files; with `background`, copied to the host and written by a writer thread.

    The copy runs in the writer thread too: the trainer calls `wait_for_copy` before the next
    optimizer step (the first thing that changes the saved tensors), by when it is long done.
    A save taken at the same moment as the one in flight (an epoch's `epoch_NNN.ckpt` and
    `last.ckpt`) joins it: the same copy is written to both paths, so neither save waits.
    """

    def __init__(self, background: bool = True):
        super().__init__()
        self.background = background
        self._lock = threading.Lock()
        self._job: _Job | None = None
        self._writer: threading.Thread | None = None
        self._finished: list[tuple[_Job, float, float]] = []
        self._error: Exception | None = None
        self._host_copy = HostCopy()

    @property
    def timings(self) -> list[tuple[float, float]]:
        """Per written file: (seconds the training thread was blocked for it, seconds its write took)."""
        return [(blocked + job.waited, took) for job, blocked, took in self._finished]

    def _run(self, job: _Job, checkpoint: dict) -> None:
        try:
            snapshot = self._host_copy(checkpoint)
        except Exception as exc:  # noqa: BLE001 - surfaced on the training thread by wait()
            self._error = exc
            return
        finally:
            job.copied.set()
        del checkpoint
        while True:
            with self._lock:
                if not job.files:
                    job.moment = None  # nothing more can join this job
                    return
                path, blocked = job.files.pop(0)
            started = time.perf_counter()
            try:
                save_torch(snapshot, path)
            except OSError as exc:
                with self._lock:
                    job.files.clear()
                    job.moment = None
                self._error = HousevoxError(f"{path}: could not save the checkpoint ({exc.strerror or exc}); "
                                            f"the previous checkpoint is untouched")
                return
            self._finished.append((job, blocked, time.perf_counter() - started))

    def wait_for_copy(self) -> None:
        """Block until the save in flight has copied the tensors (call before anything changes them in place)."""
        job = self._job
        if job is not None and not job.copied.is_set():
            started = time.perf_counter()
            job.copied.wait()
            job.waited += time.perf_counter() - started

    def wait(self) -> None:
        """Block until the save in flight (if any) is on disk; raise its error, once."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        started = time.perf_counter()
        path, moment = Path(path), _moment(checkpoint)
        if not self.background:
            save_torch(checkpoint, path)
            return
        with self._lock:
            if self._job is not None and self._job.moment == moment:
                self._job.files.append((path, time.perf_counter() - started))
                return
        self.wait()
        self._job = job = _Job(moment, path, 0.0)
        self._writer = threading.Thread(target=self._run, args=(job, checkpoint), name="housevox-checkpoint")
        self._writer.start()
        job.waited += time.perf_counter() - started

    def remove_checkpoint(self, path) -> None:
        self.wait()
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        self.wait()

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        self.wait()
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file raises many types; all mean "unusable"
            good = sorted(Path(path).parent.glob("epoch*.ckpt"), key=lambda p: p.stat().st_mtime)
            hint = f"; the previous good checkpoint may be {good[-1]}" if good else ""
            raise HousevoxError(f"{path}: unreadable checkpoint ({type(exc).__name__}){hint}") from None
