"""Scores of one set of renders: FAD to the training segments and to the held-out segments, and the CLAP score.

The references are the run's own split (the cache index and data.val_tracks /
data.val_fraction, as training used): FAD to the training set falling while FAD to the
held-out tracks does not says the LoRA memorised its tracks rather than learned a style.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from housevox.data.cache import entry_path, load_entry, segment_audio
from housevox.eval.embed import clap_scores
from housevox.eval.fad import Gaussian, fit_gaussian, frechet_distance
from housevox.eval.prompts import EvalTake


@dataclass
class ReferenceSet:
    gaussian: Gaussian
    segments: int
    tracks: list[str]

    def record(self) -> dict:
        return {"segments": self.segments, "tracks": self.tracks, "vectors": self.gaussian.count}


def embed_renders(embedding, renders: list[torch.Tensor]) -> list[np.ndarray]:
    """Vectors of each render: clips [2, S] for an audio embedding, latents [1, T, D] for the `vae` one."""
    return [embedding.audio(r) if embedding.space == "audio" else embedding.latents(r) for r in renders]


def reference_set(embedding, segments_dir: str | Path, rows: list[dict], cache_dir: str | Path) -> ReferenceSet | None:
    """The Gaussian of every segment's vectors (each distinct segment once: its WAV, or its cache entry's latents
    for the `vae` embedding); None for no rows."""
    if embedding.space == "latents":
        keys = list(dict.fromkeys(row["key"] for row in rows))
        vectors = [embedding.latents(load_entry(entry_path(cache_dir, k), k)["target_latents"]) for k in keys]
    else:
        keys = list(dict.fromkeys(row["file"] for row in rows))
        vectors = [embedding.audio(segment_audio(Path(segments_dir) / f)[0]) for f in keys]
    if not keys:
        return None
    return ReferenceSet(fit_gaussian(np.concatenate(vectors)), len(keys), sorted({str(r["track"]) for r in rows}))


def score_renders(embedding, vectors: list[np.ndarray], takes: list[EvalTake], train: ReferenceSet,
                  held_out: ReferenceSet | None) -> dict:
    """fad_train, fad_held_out (None without held-out tracks) and clap_score (None for an embedding without text)."""
    renders = fit_gaussian(np.concatenate(vectors))
    clap = float(np.mean(clap_scores(embedding, vectors, [t.prompt.caption for t in takes]))) if embedding.scores_text else None
    return {"fad_train": frechet_distance(renders, train.gaussian),
            "fad_held_out": frechet_distance(renders, held_out.gaussian) if held_out else None,
            "clap_score": clap}
