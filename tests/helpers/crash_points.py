"""Test-only crash points for the reliability kill loop (never imported by housevox itself).

Importing this module wraps `housevox.atomic.atomic_path` (and the copies imported by name in
checkpoint_io and audio.io). With `HOUSEVOX_KILL_IN_WRITE=<kind>:<n>` set, the n-th atomic write
of that kind is torn: its temp file is cut to half its size and the process SIGKILLs itself
before the rename, as a power cut in the middle of the write would leave it.
Kinds: ckpt (checkpoints), lora (files under lora/), cache (segment cache entries), any.
Add `--trainer.callbacks+=crash_points.KillInWrite` so LightningCLI imports it before any write.
`HOUSEVOX_STEP_DELAY=<seconds>` makes the callback sleep inside each optimizer step (after backward,
before the update), so kills timed from outside land mid-step on a tiny model that steps in milliseconds.
"""

import contextlib
import os
import signal
import time
from pathlib import Path

import lightning as L

import housevox.atomic
import housevox.audio.io
import housevox.train.checkpoint_io

_original = housevox.atomic.atomic_path
_count = 0


def _kind(path: Path) -> str:
    if path.suffix == ".ckpt":
        return "ckpt"
    if "lora" in path.parts:
        return "lora"
    if path.parent.name == "entries":
        return "cache"
    return "other"


@contextlib.contextmanager
def atomic_path(path):
    global _count
    with _original(path) as tmp:
        yield tmp
        spec = os.environ.get("HOUSEVOX_KILL_IN_WRITE")
        if spec:
            kind, n = spec.split(":")
            if kind in ("any", _kind(Path(path))):
                _count += 1
                if _count == int(n):
                    size = tmp.stat().st_size
                    os.truncate(tmp, size // 2)
                    os.kill(os.getpid(), signal.SIGKILL)


for _module in (housevox.atomic, housevox.audio.io, housevox.train.checkpoint_io):
    _module.atomic_path = atomic_path


class KillInWrite(L.Callback):
    """Naming it on the command line makes LightningCLI import this module; it also slows steps on request."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        time.sleep(float(os.environ.get("HOUSEVOX_STEP_DELAY", "0")))
