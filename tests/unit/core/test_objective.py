"""The ranking objective in the loop (the gap, the penalized objective), a finished run that
stays finished after a resume, and a restored optimizer that takes the config's values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import make_cfg
from orchestrator import config
from orchestrator.core import checkpoint, loop
from orchestrator.core.prepare import prepare


def _cfg(**over: Any) -> config.Config:
    return make_cfg(**over)


# ---------------------------------------------------------------- the objective in the loop


def test_the_loop_reports_the_gap_and_the_penalized_objective(digits_path: Path) -> None:
    cfg = _cfg(
        **{
            "data.path": str(digits_path),
            "train.epochs": 2,
            "model.hidden": [32],
            "sweep.objective": "gap_penalized",
            "sweep.gap_penalty": 2.0,
        }
    )
    seam = loop.LocalSeam()
    loop.train(cfg, prepare(cfg).splits, seam)  # type: ignore[arg-type]
    for r in seam.reports:
        assert r["gap"] == pytest.approx(r["val_loss"] - r["train_loss"])
        assert r["objective"] == pytest.approx(r["val_loss"] + 2.0 * max(0.0, r["gap"]))
    assert config.rank_metric(cfg) == ("objective", "min")
    assert config.rank_metric(_cfg()) == ("val_loss", "min")


def test_a_run_that_had_ended_does_not_train_on_after_a_resume(
    digits_path: Path, tmp_path: Path
) -> None:
    cfg = _cfg(
        **{
            "data.path": str(digits_path),
            "train.epochs": 20,
            "model.hidden": [32],
            "train.early_stopping.patience": 1,
            "train.early_stopping.min_delta": 100.0,
        }
    )  # stops at epoch 2
    splits = prepare(cfg).splits
    kept: list[str] = []

    def keep(d: str) -> None:
        kept.append(str(tmp_path / "ckpt"))
        Path(kept[-1]).mkdir(exist_ok=True)
        (Path(kept[-1]) / checkpoint.CHECKPOINT_FILE).write_bytes(
            (Path(d) / checkpoint.CHECKPOINT_FILE).read_bytes()
        )

    first = loop.LocalSeam(on_checkpoint=keep)
    assert loop.train(cfg, splits, first) == "early_stopped" and len(first.reports) == 2  # type: ignore[arg-type]
    again = loop.LocalSeam(resume_from=kept[-1])
    assert loop.train(cfg, splits, again) == "early_stopped" and again.reports == []  # type: ignore[arg-type]


def test_a_restored_optimizer_takes_the_configs_hyperparameters() -> None:
    # PBT hands a trial another trial's checkpoint with new values: the config must win
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    old = _cfg(**{"train.lr": 0.01, "train.weight_decay": 0.1})
    opt = loop.make_optimizer(net, old)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for _ in range(5):
        opt.step()
        sched.step()
    fraction = opt.param_groups[0]["lr"] / 0.01
    new = _cfg(**{"train.lr": 0.001, "train.weight_decay": 0.5})
    loop.set_hyperparameters(opt, sched, new)
    assert opt.param_groups[0]["weight_decay"] == 0.5 and opt.param_groups[1]["weight_decay"] == 0
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001 * fraction)
    sched.step()
    assert opt.param_groups[0]["lr"] < 0.001
