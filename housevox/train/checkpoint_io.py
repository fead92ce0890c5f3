"""Checkpoints written next to their target and renamed, and read without unpickling code.

Lightning's default save goes through a temp dir and a move, which is a copy across
filesystems: a kill mid-copy tears `last.ckpt`. Here the temp file sits in the same
folder, is fsynced, and `os.replace` makes the switch atomic.
"""

from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from housevox.atomic import save_torch
from housevox.errors import HousevoxError


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        try:
            save_torch(checkpoint, path)
        except OSError as exc:
            raise HousevoxError(f"{path}: could not save the checkpoint ({exc.strerror or exc}); "
                                f"the previous checkpoint is untouched") from None

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file raises many types; all mean "unusable"
            good = sorted(Path(path).parent.glob("epoch*.ckpt"), key=lambda p: p.stat().st_mtime)
            hint = f"; the previous good checkpoint may be {good[-1]}" if good else ""
            raise HousevoxError(f"{path}: unreadable checkpoint ({type(exc).__name__}){hint}") from None
