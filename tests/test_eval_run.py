"""housevox.eval end to end on a real tiny run: the fit-time hook and the CLI agree, eval.json, eval/* scalars, card."""

import json
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import run_fit, write_config

from housevox import card
from housevox.errors import run_cli
from housevox.eval.__main__ import main as eval_main

EVAL_FIT = {"save_every": 1, "eval_every_n_epochs": 1, "eval_takes": 2, "eval_embedding": "vae", "num_inference_steps": 2}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_checkpoint, tiny_segments):
    """2 epochs, a LoRA export and a fit-time eval (vae embedding, 2 takes of 2 steps) after each."""
    root = tmp_path_factory.mktemp("evalrun")
    result = run_fit(write_config(root / "cfg.yaml", tiny_checkpoint, tiny_segments, **EVAL_FIT), root,
                     "--trainer.max_epochs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "lightning_logs" / "t", result


def scalars(folder) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"] if tag.startswith("eval/")}


@pytest.mark.slow
def test_fit_time_eval_cli_and_card(run, capsys):
    folder, result = run
    assert "eval_every_n_epochs 1 costs GPU time" in result.stderr  # the lint states the cost before training
    doc = json.loads((folder / "eval.json").read_text())
    assert doc["embedding"] == {"kind": "vae"} and [r["epoch"] for r in doc["epochs"]] == [1, 2]
    assert doc["reference"]["train"]["tracks"] == ["housevox_demo_1_00"]
    assert doc["reference"]["held_out"]["tracks"] == ["housevox_demo_1_01"]  # the run's own validation track
    assert [t["origin"] for t in doc["settings"]["takes"]] == ["train", "held_out"]
    base = doc["base"]
    assert base["fad_train"] > 0 and base["fad_held_out"] > 0 and base["clap_score"] is None
    fit_rows = {r["epoch"]: r for r in doc["epochs"]}
    for r in doc["epochs"]:
        assert r["fad_train_vs_base"] == pytest.approx(r["fad_train"] - base["fad_train"])
    tags = scalars(folder)
    steps = {r["global_step"] - 1 for r in doc["epochs"]}
    for name in ("fad_train", "fad_train_base", "fad_held_out", "fad_held_out_base"):
        assert set(tags[f"eval/vae/{name}"]) == steps, name
    assert tags["eval/vae/fad_train"][fit_rows[2]["global_step"] - 1] == pytest.approx(fit_rows[2]["fad_train"], rel=1e-6)

    # The CLI with the same settings re-scores epoch 2 from its exported (bf16) file and keeps the hook's epoch 1.
    assert run_cli(eval_main, [str(folder), "--epochs", "2", "--takes", "2", "--embedding", "vae"]) == 0
    out = capsys.readouterr().out
    assert "| 2" in out and "eval.json" in out
    again = json.loads((folder / "eval.json").read_text())
    assert again["settings_key"] == doc["settings_key"] and [r["epoch"] for r in again["epochs"]] == [1, 2]
    for name in ("fad_train", "fad_held_out"):  # same base weights, same takes: same renders
        assert again["base"][name] == pytest.approx(base[name], rel=1e-9)
    assert again["epochs"][0] == fit_rows[1]
    assert again["epochs"][1]["fad_train"] == pytest.approx(fit_rows[2]["fad_train"], rel=0.05)

    assert run_cli(card.main, [str(folder), "--epoch", "best-eval"]) == 0
    text = (folder / "release_card.md").read_text()
    best = again["best_epoch"]
    assert re.search(rf"^\| {best} ★ best eval ← this card \|", text, re.M)
    assert f"epoch {best}\n" in text.split("\n\n")[0] + "\n"
    assert "## Objective evaluation" in text and "2 fixed takes per model (1 held out, 1 train prompts)" in text


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["{run}", "--epochs", "7"], "no LoRA for epoch 7 (exported: 1, 2)"),
    (["{run}", "--epochs", "x"], "--epochs must be all or comma-separated"),
    (["{run}", "--takes", "1"], "--takes 1: FAD needs at least 2 takes"),
    (["{run}", "--embedding", "clap", "--clap-model", "{tmp}/none"], "no such folder"),
    (["{tmp}"], "no TensorBoard event files"),
])
def test_eval_errors_are_one_line(run, tmp_path, capsys, args, message):
    argv = [a.format(run=run[0], tmp=tmp_path) for a in args]
    assert run_cli(eval_main, argv) != 0
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_card_best_eval_without_eval_json(tmp_path):
    from housevox.card import choose
    from housevox.errors import HousevoxError
    from housevox.report import Run

    with pytest.raises(HousevoxError, match="run python -m housevox.eval"):
        choose(Run(tmp_path, {}, [], saves=[object()]), "best-eval")
