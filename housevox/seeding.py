"""Seeds derived from the run seed, so no draw depends on the global RNG or on what ran before."""

import contextlib
import hashlib
from collections.abc import Iterator

import torch


def derived_seed(*parts) -> int:
    """A 63-bit seed from a stable hash of `parts` (the same on every platform and in every process)."""
    digest = hashlib.sha256(",".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def derived_generator(*parts) -> torch.Generator:
    """A CPU generator seeded by `derived_seed(*parts)`, independent of device and global RNG."""
    return torch.Generator().manual_seed(derived_seed(*parts))


@contextlib.contextmanager
def isolated_global_rng(seed: int) -> Iterator[None]:
    """Seed torch's global CPU RNG for code that only draws from it (module constructors), then restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
