"""Training report notebook and release card on a real tiny run: figures exist, every number matches the run."""

import json
import re
import shlex
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import run_fit, write_config

from housevox import card, sample
from housevox.errors import run_cli
from housevox.lora import open_lora

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_checkpoint, tiny_segments) -> Path:
    """3 epochs with LoRA exports at epochs 2 and 3 (save_every 2, plus the end of training)."""
    root = tmp_path_factory.mktemp("report")
    config = write_config(root / "cfg.yaml", tiny_checkpoint, tiny_segments, save_every=2)
    result = run_fit(config, root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "lightning_logs" / "t"


def epoch_values(run: Path, tag: str) -> list[float]:
    acc = EventAccumulator(str(run))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_notebook_runs_headless_and_draws_its_figures(run, monkeypatch):
    monkeypatch.setenv("HOUSEVOX_RUN_DIR", str(run))
    nb = nbformat.read(ROOT / "notebooks" / "training_report.ipynb", as_version=4)
    # jupyter_client launches a kernel spec whose argv is "python" with this interpreter (the venv's).
    NotebookClient(nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 2
    for name in ("training.png", "lora_norms.png"):
        assert (run / "report" / name).stat().st_size > 10_000, name


def card_table(text: str) -> dict[int, tuple[int, float, float]]:
    rows = re.findall(r"^\| (\d+)[^|]* \| (\d+) \| ([\d.]+) \| ([\d.]+) \|", text, re.M)
    return {int(e): (int(s), float(t), float(v)) for e, s, t, v in rows}


def chosen_epoch(text: str) -> int:
    return int(re.search(r"^\| (\d+)[^|]*← this card", text, re.M).group(1))


def test_card_numbers_come_from_the_run(run, capsys):
    text = card_text(run)
    train, val = epoch_values(run, "train/loss_epoch"), epoch_values(run, "val/loss")
    table = card_table(text)
    assert sorted(table) == [1, 2, 3]
    for epoch, (_, t, v) in table.items():
        assert abs(t - train[epoch - 1]) < 6e-5 and abs(v - val[epoch - 1]) < 6e-5
    best = min((2, 3), key=lambda e: val[e - 1])  # only epochs 2 and 3 have a LoRA file
    header = open_lora(run / "lora" / f"epoch_{best:03d}" / f"t_epoch_{best:03d}.safetensors").metadata
    assert header["epoch"] == str(best) and table[best][0] == int(header["global_step"])
    for field in ("rank", "alpha", "global step"):
        key = field.replace(" ", "_")
        assert re.search(rf"^- {field}: {float(header[key]):g}$", text, re.M), field
    assert chosen_epoch(text) == best
    assert "house music style" in text and "- tracks: 2 used of 2" in text
    assert (run / "release_card_loss.png").stat().st_size > 10_000
    assert "](release_card_loss.png)" in text
    command = re.search(r"^python -m housevox.sample (.*)$", text, re.M).group(1)
    args = sample.parse_args(shlex.split(command))  # the recommended command is one the CLI takes
    assert (args.guidance, args.guidance_scale, args.dcw) == ("apg", 5.0, True) and "- guidance: APG" in text


def card_text(run: Path, *args: str) -> str:
    assert run_cli(card.main, [str(run), *args]) == 0
    return (run / "release_card.md").read_text()


def test_card_hardware_profile(run, capsys):
    """The profile fit wrote (CPU here), a GPU one, and none at all."""
    path = run / "run_profile.json"
    recorded = json.loads(path.read_text())
    text = card_text(run)
    per_epoch = recorded["seconds_per_epoch"]
    assert "- device: cpu" in text and "- peak memory: not measured (CPU run)" in text
    assert f"{sum(per_epoch) / len(per_epoch):.1f} s mean over 3 epochs" in text
    gpu = {**recorded, "device": "NVIDIA H100 80GB HBM3", "peak_memory_gib": 12.125,
           "seconds_per_epoch": [190.0, 193.6], "total_seconds": 19690.0}
    try:
        path.write_text(json.dumps(gpu))
        text = card_text(run, "--epoch", "last")
        assert "- device: NVIDIA H100 80GB HBM3" in text and "- peak memory: 12.1 GiB" in text
        assert "191.8 s mean over 2 epochs" in text and "5 h 28 min 10 s" in text
        assert chosen_epoch(text) == 3
        path.unlink()
        assert "- not recorded (no run_profile.json in the run folder)" in card_text(run)
    finally:
        path.write_text(json.dumps(recorded))


@pytest.mark.parametrize("args, message", [
    (["{tmp}/missing"], "no such run folder"),
    (["{tmp}"], "no TensorBoard event files"),
    (["{run}", "--epoch", "1"], "no LoRA for epoch 1 (exported: 2, 3)"),
])
def test_card_errors_are_one_line(run, tmp_path, capsys, args, message):
    argv = [a.format(tmp=tmp_path, run=run) for a in args]
    assert run_cli(card.main, argv) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_reading_event_files_keeps_tensorboards_info_lines_out(tmp_path, caplog):
    """TensorBoard's reader logs "No path found after …tfevents…" at INFO; housevox's CLIs print only their own lines."""
    import logging

    from torch.utils.tensorboard import SummaryWriter

    from housevox.report import read_scalars

    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        writer.add_scalar("train/loss_epoch", 1.0, 0)
    with caplog.at_level(logging.INFO):
        assert [e.value for e in read_scalars(tmp_path)["train/loss_epoch"]] == [1.0]
    assert not [r for r in caplog.records if r.name.startswith("tensorboard")]
