"""The whole run's time: the predicted step time on a known card, the measured clock, the progress bar's remaining time."""

from types import SimpleNamespace

import pytest
import torch

from housevox.acestep.loading import acestep_config
from housevox.plan.callback import predicted_step_seconds
from housevox.plan.memory import GPUS, RunShape, predict
from housevox.train import eta
from housevox.train.callbacks import RunProfile


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.6, "1:00"), (3599, "59:59"), (3725, "1:02:05"), (-3, "0:00")])
def test_clock(seconds, text):
    assert eta.clock(seconds) == text


def fake_time(monkeypatch) -> list[float]:
    now = [0.0]
    monkeypatch.setattr(eta.time, "perf_counter", lambda: now[0])
    return now


def test_step_clock_skips_warm_up_and_epoch_boundaries(monkeypatch):
    now, clock = fake_time(monkeypatch), eta.StepClock()
    for step, t, epoch in [(11, 5.0, 0), (12, 6.0, 0), (13, 8.0, 0), (14, 10.0, 0), (15, 30.0, 1), (16, 32.0, 1)]:
        now[0] = t
        clock.tick(step, epoch, warm_from=10)  # resumed at step 10: steps 11 and 12 warm up
    assert clock.step_seconds == 2.0  # 12->13, 13->14, 15->16; 14->15 crosses an epoch end (validation, export)
    now[0] = 32.0
    assert clock.remaining(16, 100) == pytest.approx((32 - 6) / 4 * 84)  # the whole span counts for the remaining time
    assert eta.StepClock().remaining(3, 10) is None


def test_progress_bar_shows_the_whole_run_remaining_time(monkeypatch):
    now, profile = fake_time(monkeypatch), RunProfile()
    profile.total_steps, trainer = 10, SimpleNamespace(global_step=0)
    bar = SimpleNamespace(get_metrics=lambda trainer, module: {"v_num": "t"})
    profile._show_remaining_in(bar)
    assert bar.get_metrics(trainer, None) == {"v_num": "t"}  # nothing measured yet
    for step in range(1, 5):
        now[0] = float(step)
        profile.clock.tick(step, 0, warm_from=0)
    trainer.global_step = 4
    assert bar.get_metrics(trainer, None) == {"v_num": "t", "run_left": "0:06"}  # 1 s a step, 6 steps left


def test_predicted_step_time_on_the_detected_card(monkeypatch, tiny_checkpoint):
    hparams = {"rank": 4, "gradient_checkpointing": True, "optimizer_type": "adamw"}
    module = SimpleNamespace(device=torch.device("cuda"), hparams=hparams, config=acestep_config(tiny_checkpoint))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    seconds, where = predicted_step_seconds(module, batch_size=1, accumulate=4)
    micro = predict(module.config.raw, RunShape.from_settings(hparams, batch_size=1)).step_seconds(GPUS["h100"][1])
    assert seconds == pytest.approx(4 * micro) and micro > 0 and where == "on NVIDIA H100 80GB HBM3"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Card")
    assert predicted_step_seconds(module, 1, 4) == (None, f"no prediction for Some Card (known cards: {', '.join(GPUS)})")
    module.device = torch.device("cpu")
    assert predicted_step_seconds(module, 1, 4)[0] is None
