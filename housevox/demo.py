"""The embedded default: `demo:tiny` and `demo:segments` in a config build themselves when missing.

Only these explicit values create anything; a mistyped real path stays an error,
never a silent fallback to random weights.
"""

import logging
from pathlib import Path

log = logging.getLogger("housevox")

DEMO_CHECKPOINT = "demo:tiny"
DEMO_SEGMENTS = "demo:segments"
DEMO_TRACKS = 3
DEMO_STYLE = "electro"  # style B: what the demo LoRA learns, never in the base's family A (house)


def demo_root(default_root_dir: str | Path | None) -> Path:
    return Path(default_root_dir or ".") / "demo"


def ensure_demo_checkpoint(root: Path) -> Path:
    """The tiny base trained on family A (house grooves), built once under `root` (see demo_base)."""
    from housevox.demo_base import build_demo_base

    path = root / "checkpoints" / "acestep-v15-tiny"
    if not (path / "config.json").is_file():
        log.info("demo: building the tiny demo base (trained on synthesised house grooves) in %s", path)
        build_demo_base(path, root / "base", seed=0)
    return path


def ensure_demo_segments(root: Path) -> Path:
    """Synthesise a few style-B tracks and run the real prep pipeline on them (both are idempotent)."""
    from housevox import prep
    from housevox.demo_audio import synthesize_demo_tracks

    tracks, segments = root / "tracks", root / "segments"
    if not (segments / "manifest.jsonl").is_file():
        if len(list(tracks.glob("*.wav"))) < DEMO_TRACKS:
            log.info("demo: synthesising %d %s tracks (style B) in %s", DEMO_TRACKS, DEMO_STYLE, tracks)
            synthesize_demo_tracks(tracks, n_tracks=DEMO_TRACKS, seed=0, style=DEMO_STYLE)
        log.info("demo: preparing 30 s segments in %s", segments)
        prep.main(["--input", str(tracks), "--output", str(segments), "--workers", "2"])
    return segments


def resolve_demo_value(value: str, default_root_dir) -> str:
    if value == DEMO_CHECKPOINT:
        return str(ensure_demo_checkpoint(demo_root(default_root_dir)))
    if value == DEMO_SEGMENTS:
        return str(ensure_demo_segments(demo_root(default_root_dir)))
    return value
