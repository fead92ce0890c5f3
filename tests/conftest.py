"""Shared fixtures: tiny checkpoints written by housevox's own fixture maker (no downloads)."""

import os
from pathlib import Path

import pytest
import torch

from housevox.acestep.fixture import make_fixture

torch.set_num_threads(min(2, os.cpu_count() or 1))

UPSTREAM_TINY = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "upstream_tinyA"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny XL-layout checkpoint with vae/ and text encoder, sharded like upstream."""
    return make_fixture(tmp_path_factory.mktemp("ckpt") / "acestep-v15-tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def upstream_tiny() -> Path:
    if not UPSTREAM_TINY.is_dir():
        if os.environ.get("CI"):  # CI lays shared/ beside the clone: a missing parity fixture is a failure there
            pytest.fail(f"{UPSTREAM_TINY} not present")
        pytest.skip(f"{UPSTREAM_TINY} not present (clone next to shared/ to run the upstream parity tests)")
    return UPSTREAM_TINY


@pytest.fixture(scope="session")
def tiny_segments(tmp_path_factory, tiny_checkpoint) -> Path:
    """Two synthesised 59.5 s house tracks → housevox.prep → 3 segments each (the last window anchored to the track end), cache built."""
    from housevox import prep
    from housevox.data import build_cache
    from housevox.demo_audio import synthesize_demo_tracks

    root = tmp_path_factory.mktemp("segments")
    synthesize_demo_tracks(root / "tracks", n_tracks=2, seed=1, duration_s=59.5)
    assert prep.main(["--input", str(root / "tracks"), "--output", str(root / "segments"), "--workers", "1"]) == 0
    build_cache(root / "segments", tiny_checkpoint, root / "segments" / "cache", default_caption="")
    return root / "segments"


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A `demo/` folder holding the trained demo base (checkpoints/ and base/), built once per session; copy it."""
    from housevox.demo import ensure_demo_checkpoint

    root = tmp_path_factory.mktemp("demo-base") / "demo"
    ensure_demo_checkpoint(root)
    return root
