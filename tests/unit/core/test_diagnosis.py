"""The bias/variance rules on learning curves, no training: each label, its numbers and fixes,
and the score on the labelled corpus (tests/curves/corpus.json, made by jobs/curves.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import make_cfg
from jobs import curves
from orchestrator import config
from orchestrator.core import diagnosis

BASE = diagnosis.baseline([100] * 10)  # ten balanced classes: loss ln 10, accuracy 0.1
CORPUS = curves.load()
FIXTURE = json.loads(
    (Path(__file__).parents[2] / "curves" / "early-minimum-overfit.json").read_text()
)


def _cfg(**over: Any) -> config.Config:
    return make_cfg(**over)


def _curves(train: list[float], val: list[float], **cols: list[float]) -> list[dict[str, float]]:
    rows = [
        {"epoch": float(e), "train_loss": t, "val_loss": v}
        for e, (t, v) in enumerate(zip(train, val, strict=True), 1)
    ]
    for key, values in cols.items():
        for row, v in zip(rows, values, strict=True):
            row[key] = v
    return rows


def _judge(
    rows: list[dict[str, float]],
    cfg: config.Config | None = None,
    th: config.DiagnosisConfig | None = None,
) -> diagnosis.Diagnosis:
    cfg = cfg or _cfg(**{"train.epochs": len(rows)})
    d = diagnosis.diagnose(rows, BASE, cfg, th)
    assert d is not None
    return d


def test_the_baseline_is_what_predicting_class_frequencies_scores() -> None:
    assert BASE.loss == pytest.approx(math.log(10)) and BASE.accuracy == pytest.approx(0.1)
    skewed = diagnosis.baseline([90, 10, 0])
    assert skewed.accuracy == pytest.approx(0.9)
    assert skewed.loss == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))


# ---------------------------------------------------------------- the corpus


def test_the_corpus_has_what_the_rule_is_scored_on() -> None:
    kept = curves.scored(CORPUS)
    assert len(kept) >= 40 and len({c["set"] for c in kept}) >= 4
    for label in ("underfit", "overfit", "both", "good_fit"):
        assert sum(c["built"] == label for c in kept) >= 8, label
    ends = {c["outcome"] for c in kept if c["built"] in diagnosis.STEERING}
    assert {"pruned", "early_stopped", "completed"} <= ends
    # every curve was reviewed: agreed with, or dropped with the reason why
    assert all(c["review"] == "agree" or c["review"].startswith("drop: ") for c in CORPUS)
    assert {c["built"] for c in CORPUS} <= set(diagnosis.LABELS)


def test_held_out_sets_score_at_least_90_percent() -> None:
    result = curves.score(CORPUS)
    assert result["held_out_curves"] >= 30 and result["tuning_curves"] >= 20
    assert result["held_out_accuracy"] >= 0.9, result["misses"]
    assert result["tuning_accuracy"] >= 0.9, result["misses"]


def test_never_underfit_when_training_accuracy_reached_one_while_validation_rose() -> None:
    fitted = [
        c
        for c in curves.scored(CORPUS)
        if max(v for v in c["train_accuracy"] if v is not None) >= 0.999
        and c["val_loss"][-1] is not None
        and c["val_loss"][-1] > min(c["val_loss"])
    ]
    assert len(fitted) >= 10
    # whatever the bias threshold, a run that fit every training row is not high bias
    for ratio in (0.05, 0.15, 0.5, 0.9):
        th = config.DiagnosisConfig(underfit_loss_ratio=ratio)
        assert not [c["id"] for c in fitted if curves.judge(c, th).label in ("underfit", "both")]


@pytest.mark.parametrize("key", ["val_loss", "train_loss"])
def test_one_spiked_epoch_changes_at_most_5_percent_of_the_labels(key: str) -> None:
    for seed in range(5):
        assert curves.spike_flips(CORPUS, seed=seed, key=key) <= 0.05, seed


def test_the_early_minimum_run_is_overfit_with_what_the_restored_weights_are() -> None:
    """The run issue 15 was filed on: validation bottoms out at epoch 5 and doubles while
    training accuracy reaches 1.0; version 0.1 called it underfit."""
    assert FIXTURE["expected"] == "overfit" and FIXTURE["diagnosed_by_0.1"] == "underfit"
    cols = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
    rows = [
        {"epoch": float(i + 1), **{k: FIXTURE[k][i] for k in cols}}
        for i in range(FIXTURE["epochs"])
    ]
    cfg = _cfg(
        **{
            "train.epochs": FIXTURE["epochs"],
            "model.hidden": [512, 512],
            "train.weight_decay": 0.0,
            "model.dropout": 0.0,
        }
    )
    d = diagnosis.diagnose(rows, diagnosis.Baseline(FIXTURE["baseline_loss"], 0.1), cfg)
    assert d is not None and d.label == "overfit"
    for part in (
        "validation loss was lowest at epoch 5",
        "rose 98% after it",
        "training accuracy reached 100%",
        "the epoch-5 weights",
        "add weight decay, dropout, augmentation or data",
    ):
        assert part in d.reasons
    assert "train.weight_decay (now 0)" in " ".join(d.fixes)
    # stopped early at epoch 15 (patience 10), the same run says the weights were restored
    rows = rows[:15]
    rows[-1]["early_stopped"] = 1.0
    d = diagnosis.diagnose(rows, diagnosis.Baseline(FIXTURE["baseline_loss"], 0.1), cfg)
    assert d is not None and d.label == "overfit" and "the restored epoch-5 weights" in d.reasons


# ---------------------------------------------------------------- each label on its own


def test_high_training_loss_is_underfit_with_capacity_and_less_regularization() -> None:
    d = _judge(
        _curves([2.0, 1.5, 1.3, 1.2, 1.15, 1.1], [2.0, 1.6, 1.4, 1.3, 1.25, 1.2]),
        _cfg(**{"model.hidden": [8], "train.weight_decay": 0.5, "train.epochs": 6}),
    )
    assert d.label == "underfit"
    # read smoothed (the median of the last three epochs): 1.15 / ln 10
    assert "never fell below 50% of the baseline's 2.303" in d.reasons
    assert any("model.hidden (now [8])" in f for f in d.fixes)
    assert any("train.weight_decay (now 0.5)" in f for f in d.fixes)
    assert any("train.epochs" in f for f in d.fixes)  # validation was still falling


def test_validation_rising_after_its_minimum_is_overfit_wherever_the_minimum_falls() -> None:
    train = [1.0, 0.4, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005]
    val = [1.0, 0.5, 0.35, 0.36, 0.55, 0.7, 0.8, 0.9]
    d = _judge(_curves(train, val), _cfg(**{"data.max_train_rows": 200, "train.epochs": 8}))
    assert d.label == "overfit"
    assert "lowest at epoch 3 (0.350)" in d.reasons and "rose" in d.reasons
    keys = " ".join(d.fixes)
    for key in (
        "data.max_train_rows (now 200)",
        "train.weight_decay",
        "train.l1",
        "model.dropout",
        "train.early_stopping.patience",
        "train.augment",
    ):
        assert key in keys


def test_a_wide_gap_alone_is_overfit() -> None:
    d = _judge(_curves([0.5, 0.1, 0.05, 0.02, 0.01], [0.9, 0.6, 0.55, 0.52, 0.5]))
    assert d.label == "overfit" and "a gap of 22% of the baseline's loss" in d.reasons


def test_high_training_loss_and_a_wide_gap_is_both() -> None:
    train = [2.0, 1.5, 1.2, 1.0, 0.9, 0.85, 0.8, 0.8]
    val = [2.0, 1.7, 1.5, 1.45, 1.45, 1.5, 1.5, 1.5]
    d = _judge(
        _curves(train, val),
        _cfg(**{"model.hidden": [16], "train.epochs": 8, "data.max_train_rows": 300}),
    )
    assert d.label == "both"
    assert "high bias" in d.reasons and "high variance" in d.reasons
    text = " ".join(d.fixes)
    assert "model.hidden (now [16])" in text and "train.weight_decay" in text
    assert "data.max_train_rows (now 300)" in text


def test_low_losses_close_together_are_the_sweet_spot() -> None:
    d = _judge(_curves([1.0, 0.3, 0.12, 0.09, 0.08], [1.0, 0.35, 0.16, 0.14, 0.13]))
    assert d.label == "good_fit" and d.fixes == [] and "the sweet spot" in d.reasons


def test_thresholds_move_the_line() -> None:
    rows = _curves([1.0, 0.3, 0.12, 0.09, 0.08], [1.0, 0.35, 0.16, 0.14, 0.13])
    assert _judge(rows, th=config.DiagnosisConfig(gap_ratio=0.01)).label == "overfit"
    assert _judge(rows, th=config.DiagnosisConfig(underfit_loss_ratio=0.01)).label == "underfit"


def test_a_nan_or_a_blown_up_loss_is_diverged_not_underfit() -> None:
    d = _judge(
        _curves([1.0, 0.8, math.nan], [1.0, 0.9, math.nan]),
        _cfg(**{"train.lr": 0.5, "train.optimizer": "sgd"}),
    )
    assert d.label == "diverged" and "epoch 3" in d.reasons
    assert "train.lr (now 0.5)" in d.fixes[0] and any("adamw" in f for f in d.fixes)
    flagged = _curves([2.0] * 6, [2.0] * 6)
    flagged[-1]["diverged"] = 1.0
    assert _judge(flagged).label == "diverged"
    # finite, but validation loss at 8x the baseline while training learned nothing
    blown = _curves([2.3] * 8, [18.0] * 8, train_accuracy=[0.1] * 8, val_accuracy=[0.1] * 8)
    d = _judge(blown)
    assert d.label == "diverged" and "7.82x the baseline" in d.reasons
    # a run that learned and then lost it: training loss back above the baseline
    relapsed = _curves(
        [2.0, 0.5, 0.05, 0.02, 3.0, 6.0, 8.0],
        [2.0, 0.6, 0.3, 0.3, 3.0, 6.0, 8.0],
        train_accuracy=[0.3, 0.8, 0.99, 1.0, 0.2, 0.1, 0.1],
        val_accuracy=[0.3, 0.8, 0.9, 0.9, 0.2, 0.1, 0.1],
    )
    assert _judge(relapsed).label == "diverged"
    # the same loss on a run that memorized its training rows is overfit, not a blow-up
    memorized = _curves(
        [2.0, 0.5, 0.1, 0.01, 0.001, 0.0],
        [2.0, 3.0, 6.0, 8.0, 9.0, 9.5],
        train_accuracy=[0.3, 0.8, 0.95, 1.0, 1.0, 1.0],
        val_accuracy=[0.3, 0.3, 0.3, 0.3, 0.3, 0.3],
    )
    assert _judge(memorized).label == "overfit"
    assert diagnosis.diagnose([], BASE, _cfg()) is None
    assert diagnosis.diagnose(_curves([1.0], [1.0]), diagnosis.baseline([]), _cfg()) is None


def test_a_run_that_fit_every_training_row_is_never_high_bias() -> None:
    # training loss read in train mode (heavy dropout) stays at 30% of the baseline although
    # every training row is classified right; validation rises: overfit, not both
    rows = _curves(
        [1.5, 1.0, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7],
        [1.5, 1.2, 1.1, 1.3, 1.5, 1.7, 1.8, 1.9],
        train_accuracy=[0.6, 0.9, 0.97, 1.0, 1.0, 1.0, 1.0, 1.0],
        val_accuracy=[0.5, 0.6, 0.62, 0.6, 0.6, 0.6, 0.6, 0.6],
    )
    assert _judge(rows).label == "overfit"
    without = [{k: v for k, v in r.items() if "accuracy" not in k} for r in rows]
    assert _judge(without).label == "both"  # no accuracy to tell: the loss alone is high


def test_an_accuracy_gap_with_a_modest_loss_gap_is_overfit() -> None:
    # loss gap 10% of the baseline (under gap_ratio, over half of it), accuracy gap 20 points
    rows = _curves(
        [1.0, 0.5, 0.3, 0.25, 0.25, 0.25],
        [1.1, 0.7, 0.5, 0.48, 0.48, 0.48],
        train_accuracy=[0.7, 0.85, 0.95, 0.97, 0.97, 0.97],
        val_accuracy=[0.65, 0.72, 0.76, 0.77, 0.77, 0.77],
    )
    d = _judge(rows)
    assert d.label == "overfit" and "accuracy 97% training vs 77% validation" in d.reasons
    without = [{k: v for k, v in r.items() if "accuracy" not in k} for r in rows]
    assert _judge(without).label == "good_fit"


def test_a_run_cut_short_while_training_loss_falls_fast_is_not_called_underfit() -> None:
    rows = _curves([2.2, 1.9, 1.6, 1.35, 1.1, 0.9, 0.75], [2.2, 1.9, 1.65, 1.4, 1.2, 1.0, 0.9])
    rows[-1]["early_stopped"] = 1.0
    d = _judge(rows, _cfg(**{"train.epochs": 50}))
    assert d.label == "undetermined" and "still falling fast" in d.reasons
    # the same curve with the budget spent is a finished judgment
    rows[-1].pop("early_stopped")
    assert _judge(rows, _cfg(**{"train.epochs": 7})).label == "underfit"


def test_too_few_epochs_or_pruned_while_learning_is_undetermined() -> None:
    d = _judge(_curves([2.0, 1.5, 1.2], [2.0, 1.6, 1.3]))
    assert d.label == "undetermined" and "only 3 epochs" in d.reasons
    assert "sweep.grace_period" in d.fixes[0]
    falling = _curves(
        [2.0, 1.7, 1.5, 1.3, 1.2, 1.1, 1.0, 0.9], [2.0, 1.8, 1.6, 1.45, 1.35, 1.25, 1.15, 1.05]
    )
    d = _judge(falling, _cfg(**{"train.epochs": 60}))  # pruned at epoch 8 of 60
    assert d.label == "undetermined" and "stopped by the scheduler at epoch 8 of 60" in d.reasons
    # the same epochs as a finished run are judged: it never fit its training rows
    assert _judge(falling, _cfg(**{"train.epochs": 8})).label == "underfit"
    # pruned on a plateau is a finished judgment too
    flat = _curves([2.0, 1.9] + [1.8] * 8, [2.0, 1.9] + [1.85] * 8)
    assert _judge(flat, _cfg(**{"train.epochs": 60})).label == "underfit"


def test_every_fix_names_a_config_key_that_exists() -> None:
    cfg = _cfg(**{"data.max_train_rows": 100, "train.epochs": 6})
    found = [
        _judge(_curves([2.0, 1.5, 1.3, 1.2, 1.15, 1.1], [2.0, 1.6, 1.4, 1.3, 1.25, 1.2]), cfg),
        _judge(_curves([1.0, 0.4, 0.2, 0.1, 0.05, 0.02], [1.0, 0.5, 0.4, 0.6, 0.7, 0.8]), cfg),
        _judge(_curves([2.0, 1.5, 1.2, 1.0, 0.9, 0.85], [2.0, 1.7, 1.5, 1.5, 1.5, 1.5]), cfg),
        _judge(_curves([1.0, math.nan], [1.0, math.nan]), cfg),
        _judge(_curves([2.0, 1.5], [2.0, 1.6]), cfg),
    ]
    assert [d.label for d in found] == ["underfit", "overfit", "both", "diverged", "undetermined"]
    known = set(config.flatten(cfg))
    for d in found:
        for fix in d.fixes:
            keys = re.findall(r"\b(?:data|model|train|sweep)\.[a-z0-9_.]*[a-z0-9_]", fix)
            assert keys and all(k in known for k in keys), fix


def test_bad_thresholds_are_refused_with_their_key() -> None:
    for key, value in (
        ("diagnosis.min_epochs", 0),
        ("diagnosis.diverge_ratio", 1.0),
        ("diagnosis.gap_ratio", -0.1),
        ("diagnosis.falling_ratio", 0.0),
    ):
        with pytest.raises(config.ConfigError, match=re.escape(key)):
            make_cfg(**{key: value})


# ---------------------------------------------------------------- the next search space

SPACE = {
    "train.weight_decay": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
    "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.6},
}


def _points(values: list[tuple[float, float, float]], label: str = "good_fit") -> list[dict]:
    return [
        {"train.weight_decay": wd, "model.dropout": dp, "val_loss": loss, "label": label}
        for wd, dp, loss in values
    ]


def test_a_best_trial_on_a_boundary_extends_the_range_past_it() -> None:
    pts = _points([(1.1e-4, 0.55, 0.10), (1e-3, 0.3, 0.2), (1e-2, 0.1, 0.3), (5e-2, 0.2, 0.4)])
    space, why = diagnosis.propose(pts, SPACE, "val_loss", "min", _cfg())
    assert space["train.weight_decay"] == {
        "type": "loguniform",
        "low": 1e-5,
        "high": pytest.approx(3.162e-3),
    }
    # dropout 0.55 is in the top tenth of [0, 0.6]: extended up, but never past 0.95
    assert space["model.dropout"]["high"] == pytest.approx(0.9)
    assert space["model.dropout"]["low"] == pytest.approx(0.3)
    assert any("lower edge" in w for w in why) and any("upper edge" in w for w in why)


def test_a_best_trial_inside_narrows_the_range_around_the_best_ones() -> None:
    pts = _points(
        [
            (3e-3, 0.30, 0.10),
            (2e-3, 0.25, 0.11),
            (4e-3, 0.35, 0.12),
            (1.5e-4, 0.05, 0.5),
            (8e-2, 0.58, 0.6),
            (2e-4, 0.5, 0.7),
            (5e-2, 0.02, 0.8),
            (1e-2, 0.1, 0.9),
        ]
    )
    space, why = diagnosis.propose(pts, SPACE, "val_loss", "min", _cfg())
    wd = space["train.weight_decay"]
    assert 1e-4 < wd["low"] < 2e-3 and 4e-3 < wd["high"] < 1e-1  # around 2e-3..4e-3
    assert space["model.dropout"]["low"] > 0.0 and space["model.dropout"]["high"] < 0.6
    assert any("narrowed" in w for w in why)


def test_when_every_trial_underfits_capacity_goes_up_and_regularization_down() -> None:
    pts = _points([(1e-3, 0.3, 1.5), (1e-2, 0.1, 1.6), (5e-2, 0.5, 1.9)], label="underfit")
    # a diverged trial and an undetermined one do not change that: they never steer
    pts += [
        {**_points([(1e-4, 0.0, math.nan)])[0], "label": "diverged"},
        {**_points([(1e-4, 0.0, 0.2)])[0], "label": "undetermined"},
    ]
    space, why = diagnosis.propose(pts, SPACE, "val_loss", "min", _cfg(**{"model.hidden": [16]}))
    assert space["model.hidden"] == {"type": "choice", "values": [[32], [64]]}
    assert space["train.weight_decay"] == {
        "type": "loguniform",
        "low": pytest.approx(1e-6),
        "high": pytest.approx(1e-2),
    }
    assert space["model.dropout"]["high"] == pytest.approx(0.06)
    assert any("every trial high bias (3 underfit)" in w for w in why)
    assert any("1 diverged or undetermined trial(s) left out" in w for w in why)
    config.from_dict({"data": {"path": "x.parquet"}, "sweep": {"space": space}})  # valid


def test_a_factory_model_is_told_to_raise_its_own_capacity_not_model_hidden() -> None:
    pts = _points([(1e-3, 0.3, 1.5), (1e-2, 0.1, 1.6), (5e-2, 0.5, 1.9)], label="underfit")
    cfg = _cfg(**{"model.kind": "jobs.factories:residual_mlp", "model.args": {"width": 8}})
    space, why = diagnosis.propose(pts, SPACE, "val_loss", "min", cfg)
    assert "model.hidden" not in space  # it would change nothing of a factory's model
    assert any("factory's own arguments" in w for w in why)
    assert space["train.weight_decay"]["high"] < SPACE["train.weight_decay"]["high"]  # less L2
    fixes = diagnosis._underfit_fixes(cfg, still_falling=False)
    assert "capacity arguments of jobs.factories:residual_mlp" in fixes[0]


def test_when_every_trial_is_both_capacity_and_regularization_go_up_together() -> None:
    pts = _points([(1e-3, 0.3, 1.5), (1e-2, 0.1, 1.6), (5e-2, 0.5, 1.9)], label="both")
    space, why = diagnosis.propose(pts, SPACE, "val_loss", "min", _cfg(**{"model.hidden": [16, 8]}))
    assert space["model.hidden"] == {"type": "choice", "values": [[32, 16], [64, 32]]}
    assert space["train.weight_decay"] == {
        "type": "loguniform",
        "low": pytest.approx(1e-3),
        "high": pytest.approx(10.0),
    }
    assert space["model.dropout"] == {
        "type": "uniform",
        "low": pytest.approx(0.3),
        "high": pytest.approx(0.9),
    }
    assert any("every trial high bias (3 both)" in w for w in why)
    assert any("more regularization alongside the capacity" in w for w in why)
    config.from_dict({"data": {"path": "x.parquet"}, "sweep": {"space": space}})  # valid


def test_trials_that_never_steer_leave_the_space_alone() -> None:
    pts = [{**p, "label": "undetermined"} for p in _points([(1e-3, 0.3, 1.5), (1e-2, 0.1, 1.6)])]
    space, why = diagnosis.propose(pts, SPACE, "val_loss", "min", _cfg())
    assert space == SPACE and "nothing to steer by" in why[0]


def test_a_log_range_grows_half_a_decade_past_its_upper_edge() -> None:
    # the learning rate that worked best sits at the top: a decade more would diverge
    space = {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}
    pts = [
        {"train.lr": lr, "val_loss": loss, "label": "good_fit"}
        for lr, loss in ((9e-3, 0.1), (1e-3, 0.2), (3e-4, 0.3), (1.5e-4, 0.4))
    ]
    new, why = diagnosis.propose(pts, space, "val_loss", "min", _cfg())
    assert new["train.lr"]["high"] == pytest.approx(10**-1.5, rel=1e-3)
    assert new["train.lr"]["low"] == pytest.approx(1e-3)
    assert "upper edge" in why[0]
