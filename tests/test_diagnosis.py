"""The bias/variance rules on learning curves, no training: each label, its numbers and fixes."""

from __future__ import annotations

import math
from typing import Any

import pytest

from conftest import make_cfg
from orchestrator import config, diagnosis

BASE = diagnosis.baseline([100] * 10)  # ten balanced classes: loss ln 10, accuracy 0.1


def _cfg(**over: Any) -> config.Config:
    return make_cfg(**over)


def _curves(train: list[float], val: list[float]) -> list[dict[str, float]]:
    return [{"epoch": float(e), "train_loss": t, "val_loss": v}
            for e, (t, v) in enumerate(zip(train, val, strict=True), 1)]


def test_the_baseline_is_what_predicting_class_frequencies_scores() -> None:
    assert BASE.loss == pytest.approx(math.log(10)) and BASE.accuracy == pytest.approx(0.1)
    skewed = diagnosis.baseline([90, 10, 0])
    assert skewed.accuracy == pytest.approx(0.9)
    assert skewed.loss == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))


def test_high_training_loss_is_underfit_with_capacity_and_less_regularization() -> None:
    d = diagnosis.diagnose(_curves([2.0, 1.5, 1.2, 1.1], [2.0, 1.6, 1.3, 1.2]), BASE,
                           _cfg(**{"model.hidden": [8], "train.weight_decay": 0.5}))
    assert d is not None and d.label == "underfit"
    assert "1.100" in d.reasons and "48%" in d.reasons  # 1.1 / ln 10
    assert any("model.hidden (now [8])" in f for f in d.fixes)
    assert any("train.weight_decay (now 0.5)" in f for f in d.fixes)
    assert any("train.epochs" in f for f in d.fixes)  # validation was still falling


def test_validation_rising_while_training_falls_is_overfit() -> None:
    train = [1.0, 0.4, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005]
    val = [1.0, 0.5, 0.35, 0.36, 0.40, 0.45, 0.50, 0.55]
    d = diagnosis.diagnose(_curves(train, val), BASE, _cfg(**{"data.max_train_rows": 200}))
    assert d is not None and d.label == "overfit"
    assert "bottomed at epoch 3 of 8" in d.reasons
    keys = " ".join(d.fixes)
    for key in ("data.max_train_rows (now 200)", "train.weight_decay", "train.l1",
                "model.dropout", "train.early_stopping.patience", "train.augment"):
        assert key in keys


def test_a_wide_gap_alone_is_overfit() -> None:
    d = diagnosis.diagnose(_curves([0.5, 0.1, 0.01], [0.9, 0.6, 0.5]), BASE, _cfg())
    assert d is not None and d.label == "overfit" and "gap of 21%" in d.reasons


def test_low_losses_close_together_are_the_sweet_spot() -> None:
    d = diagnosis.diagnose(_curves([1.0, 0.3, 0.12, 0.08], [1.0, 0.35, 0.16, 0.13]), BASE,
                           _cfg())
    assert d is not None and d.label == "good_fit" and d.fixes == []


def test_thresholds_move_the_line() -> None:
    curves = _curves([1.0, 0.3, 0.12, 0.08], [1.0, 0.35, 0.16, 0.13])
    strict = config.DiagnosisConfig(gap_ratio=0.01)
    d = diagnosis.diagnose(curves, BASE, _cfg(), strict)
    assert d is not None and d.label == "overfit"


def test_a_diverged_trial_is_underfit_and_nothing_to_judge_is_none() -> None:
    d = diagnosis.diagnose(_curves([1.0, math.nan], [1.0, math.nan]), BASE, _cfg())
    assert d is not None and d.label == "underfit" and "train.lr" in d.fixes[0]
    assert diagnosis.diagnose([], BASE, _cfg()) is None
    assert diagnosis.diagnose(_curves([1.0], [1.0]), diagnosis.baseline([]), _cfg()) is None


SPACE = {"train.weight_decay": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
         "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.6}}


def _points(values: list[tuple[float, float, float]], label: str = "good_fit") -> list[dict]:
    return [{"train.weight_decay": wd, "model.dropout": dp, "val_loss": loss, "label": label}
            for wd, dp, loss in values]


def test_a_best_trial_on_a_boundary_extends_the_range_past_it() -> None:
    pts = _points([(1.1e-4, 0.55, 0.10), (1e-3, 0.3, 0.2), (1e-2, 0.1, 0.3), (5e-2, 0.2, 0.4)])
    space, why = diagnosis.propose(pts, SPACE, "val_loss", "min", _cfg())
    assert space["train.weight_decay"] == {"type": "loguniform", "low": 1e-5,
                                           "high": pytest.approx(3.162e-3)}
    # dropout 0.55 is in the top tenth of [0, 0.6]: extended up, but never past 0.95
    assert space["model.dropout"]["high"] == pytest.approx(0.9)
    assert space["model.dropout"]["low"] == pytest.approx(0.3)
    assert any("lower edge" in w for w in why) and any("upper edge" in w for w in why)


def test_a_best_trial_inside_narrows_the_range_around_the_best_ones() -> None:
    pts = _points([(3e-3, 0.30, 0.10), (2e-3, 0.25, 0.11), (4e-3, 0.35, 0.12),
                   (1.5e-4, 0.05, 0.5), (8e-2, 0.58, 0.6), (2e-4, 0.5, 0.7),
                   (5e-2, 0.02, 0.8), (1e-2, 0.1, 0.9)])
    space, why = diagnosis.propose(pts, SPACE, "val_loss", "min", _cfg())
    wd = space["train.weight_decay"]
    assert 1e-4 < wd["low"] < 2e-3 and 4e-3 < wd["high"] < 1e-1  # around 2e-3..4e-3
    assert space["model.dropout"]["low"] > 0.0 and space["model.dropout"]["high"] < 0.6
    assert any("narrowed" in w for w in why)


def test_when_every_trial_underfits_capacity_goes_up_and_regularization_down() -> None:
    pts = _points([(1e-3, 0.3, 1.5), (1e-2, 0.1, 1.6), (5e-2, 0.5, 1.9)], label="underfit")
    space, why = diagnosis.propose(pts, SPACE, "val_loss", "min",
                                   _cfg(**{"model.hidden": [16]}))
    assert space["model.hidden"] == {"type": "choice", "values": [[32], [64]]}
    assert space["train.weight_decay"] == {"type": "loguniform", "low": pytest.approx(1e-6),
                                           "high": pytest.approx(1e-2)}
    assert space["model.dropout"]["high"] == pytest.approx(0.06)
    assert "every trial underfit" in why[0]
    config.from_dict({"data": {"path": "x.parquet"}, "sweep": {"space": space}})  # valid
