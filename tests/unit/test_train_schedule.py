"""The learning-rate schedule of a training round."""

from __future__ import annotations

import pytest
import torch

from ptychoflow.remote.train import TrainSettings, _scheduler


def _lrs(s: TrainSettings, iters: int) -> list[float]:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=s.base_lr)
    sched = _scheduler(opt, s, iters)
    out = []
    for _ in range(s.epochs * iters):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_one_cycle_warms_up_to_max_lr_then_anneals_within_the_round() -> None:
    s = TrainSettings(epochs=10, max_lr=2e-3)
    lrs = _lrs(s, iters=5)
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(2e-3)
    assert 0.1 * len(lrs) <= peak <= 0.3 * len(lrs)  # warm-up is the first fifth
    assert lrs[0] < 2e-4 and lrs[-1] < 1e-5  # starts low, ends near zero


def test_cyclic_schedule_is_still_available() -> None:
    s = TrainSettings.from_params({"train_epochs": 12, "schedule": "Cyclic",
                                   "base_lr": 1e-4, "max_lr": 5e-4, "half_cycle_epochs": 3})
    lrs = _lrs(s, iters=4)
    assert s.schedule == "cyclic"
    assert lrs[0] == pytest.approx(1e-4)
    assert max(lrs) == pytest.approx(5e-4)
    assert lrs.index(max(lrs)) == 12  # top of the first half cycle: 3 epochs of 4 steps


def test_an_unknown_schedule_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="onecycle"):
        TrainSettings(schedule="cosine")
