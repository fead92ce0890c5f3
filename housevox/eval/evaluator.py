"""One eval of one run: the fixed takes, the reference sets and the base's scores, then a row per epoch.

The CLI and the fit-time callback both drive this, so `eval.json` means the same thing
whichever wrote it. References and base renders are made once; each epoch then costs its
own renders and their embeddings only.
"""

import logging
from pathlib import Path

from housevox.eval.prompts import EvalTake
from housevox.eval.render import Renderer, RenderSettings, render_takes
from housevox.eval.results import add_epoch, carry_over, epoch_row, log_scalars, new_document, read_eval, write_eval
from housevox.eval.score import embed_renders, reference_set, score_renders
from housevox.errors import HousevoxError

log = logging.getLogger("housevox")


class Evaluator:
    """The takes and reference Gaussians of one eval; the renderer and embedding come with each call,
    so a fit-time eval can free them between exports."""

    def __init__(self, embedding, takes: list[EvalTake], settings: RenderSettings,
                 segments_dir: str | Path, train_rows: list[dict], held_out_rows: list[dict], cache_dir: str | Path):
        self.takes, self.settings = takes, settings
        self.train = reference_set(embedding, segments_dir, train_rows, cache_dir)
        if self.train is None:
            raise HousevoxError(f"{segments_dir}: no training segments to compare the renders with")
        self.held_out = reference_set(embedding, segments_dir, held_out_rows, cache_dir)
        if self.held_out is None:
            log.warning("eval: no held-out tracks (data.val_tracks / val_fraction): fad_held_out is not measured")
        self.doc: dict | None = None

    def scores(self, dit, renderer: Renderer, embedding, lora_scale: float) -> dict:
        renders = render_takes(dit, renderer, self.takes, self.settings, lora_scale, decode=embedding.space == "audio")
        return score_renders(embedding, embed_renders(embedding, renders), self.takes, self.train, self.held_out)

    def start(self, dit, renderer: Renderer, embedding, run_folder: str | Path) -> dict:
        """Score the base (adapters at scale 0) and open the run's document, keeping comparable earlier epochs."""
        settings = {"takes": [t.record() for t in self.takes], "render": self.settings.record(), "lora_scale": 1.0}
        reference = {"train": self.train.record(), "held_out": self.held_out.record() if self.held_out else None}
        base = self.scores(dit, renderer, embedding, 0.0)
        self.doc = carry_over(new_document(embedding.record, settings, reference, base), read_eval(run_folder))
        return self.doc

    def score_epoch(self, dit, renderer: Renderer, embedding, run_folder: str | Path, epoch: int, global_step: int,
                    lora_file: str, writer) -> dict:
        """Render and score `dit` as it is now (the epoch's LoRA loaded), write eval.json and the eval/* scalars."""
        if self.doc is None:
            self.start(dit, renderer, embedding, run_folder)
        row = epoch_row(epoch, global_step, lora_file, self.scores(dit, renderer, embedding, 1.0), self.doc["base"])
        add_epoch(self.doc, row)
        write_eval(run_folder, self.doc)
        log_scalars(writer, self.doc, row)
        return row
