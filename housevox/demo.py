"""The embedded default: `demo:tiny` and `demo:segments` in a config build themselves when missing.

Only these explicit values create anything; a mistyped real path stays an error,
never a silent fallback to random weights.
"""

import logging
from pathlib import Path

from housevox.acestep.fixture import make_fixture

log = logging.getLogger("housevox")

DEMO_CHECKPOINT = "demo:tiny"
DEMO_SEGMENTS = "demo:segments"
DEMO_TRACKS = 3


def demo_root(default_root_dir: str | Path | None) -> Path:
    return Path(default_root_dir or ".") / "demo"


def ensure_demo_checkpoint(root: Path) -> Path:
    path = root / "checkpoints" / "acestep-v15-tiny"
    if not (path / "config.json").is_file():
        log.info("demo: writing the tiny random-init checkpoint to %s", path)
        make_fixture(path, preset="tiny", seed=0)
    return path


def ensure_demo_segments(root: Path) -> Path:
    """Synthesise a few house tracks and run the real prep pipeline on them (both are idempotent)."""
    from housevox import prep
    from housevox.demo_audio import synthesize_demo_tracks

    tracks, segments = root / "tracks", root / "segments"
    if not (segments / "manifest.jsonl").is_file():
        if len(list(tracks.glob("*.wav"))) < DEMO_TRACKS:
            log.info("demo: synthesising %d house tracks in %s", DEMO_TRACKS, tracks)
            synthesize_demo_tracks(tracks, n_tracks=DEMO_TRACKS, seed=0)
        log.info("demo: preparing 30 s segments in %s", segments)
        prep.main(["--input", str(tracks), "--output", str(segments), "--workers", "2"])
    return segments


def resolve_demo_value(value: str, default_root_dir) -> str:
    if value == DEMO_CHECKPOINT:
        return str(ensure_demo_checkpoint(demo_root(default_root_dir)))
    if value == DEMO_SEGMENTS:
        return str(ensure_demo_segments(demo_root(default_root_dir)))
    return value
