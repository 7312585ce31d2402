"""The autopilot's decisions: round 1's space, the budget's split, steering, stopping."""

from __future__ import annotations

import pytest

from conftest import make_cfg
from orchestrator.core import autopilot

SPACE = {
    "model.hidden": {"type": "choice", "values": [[64], [128], [64, 64]]},
    "train.weight_decay": {"type": "loguniform", "low": 1e-6, "high": 0.1},
    "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.6},
}


def test_round_one_searches_capacity_regularization_and_learning_rate() -> None:
    space, why = autopilot.broad_space(make_cfg(**{"model.hidden": [128, 128]}), {})
    assert [64] in space["model.hidden"]["values"] and [256, 256, 256] in space["model.hidden"][
        "values"
    ]
    assert {"train.weight_decay", "train.l1", "model.dropout", "train.lr"} <= set(space)
    assert "train.augment" not in space  # tabular data: no augmentation
    assert space["train.lr"]["low"] < 1e-3 < space["train.lr"]["high"]
    assert len(why) == len(space)


def test_round_one_of_a_factory_uses_its_declared_space_or_none() -> None:
    cfg = make_cfg(**{"model.kind": "mymodels:net"})
    declared = {"model.args.depth": {"type": "randint", "low": 0, "high": 4}}
    space, _ = autopilot.broad_space(cfg, declared)
    assert "model.args.depth" in space and "model.hidden" not in space
    assert "model.dropout" not in space
    space, why = autopilot.broad_space(cfg, {})
    assert not any(k.startswith("model.") for k in space)
    assert "regularization and learning rate only" in why[0]


def test_images_get_augmentation() -> None:
    cfg = make_cfg(**{"data.shape": [1, 8, 8], "model.kind": "cnn", "model.hidden": [16]})
    space, _ = autopilot.broad_space(cfg, {})
    assert space["train.augment"]["values"] == [False, True]


def test_the_budget_covers_confirmation_and_the_curve() -> None:
    b = autopilot.plan_budget(60, confirm_runs=6)
    assert b.curve == 12 and b.confirm == 6
    assert sum(b.rounds) + b.confirm + b.curve == 60
    assert b.rounds[0] > b.rounds[1] and min(b.rounds) >= autopilot.MIN_ROUND
    assert len(b.rounds) >= autopilot.MIN_ROUNDS
    assert "60 trials" in b.describe()
    small = autopilot.plan_budget(20, confirm_runs=2)  # no room for the curve
    assert small.curve == 0 and sum(small.rounds) == 18
    with pytest.raises(ValueError, match="at least 14"):
        autopilot.plan_budget(10, confirm_runs=2)


def test_it_stops_after_two_rounds_of_little_improvement() -> None:
    assert autopilot.stop_reason([1.0, 0.995], 0.01) is None  # never before round 3
    assert autopilot.stop_reason([1.0, 0.8, 0.798], 0.01) is None  # round 2 gained 20%
    why = autopilot.stop_reason([1.0, 0.8, 0.798, 0.797], 0.01)
    assert why is not None and "below autopilot.min_improvement" in why
    assert autopilot.stop_reason([0.5, 0.6, 0.605, 0.7], 0.01, mode="max") is None
    assert autopilot.stop_reason([0.9, 0.95, 0.951, 0.952], 0.01, mode="max") is not None


def _points(label: str, n: int = 8) -> list[dict]:
    return [
        {
            "model.hidden": [64] if i % 2 else [128],
            "train.weight_decay": 1e-5 * (i + 1),
            "model.dropout": 0.05 * i,
            "val_loss": 0.1 + 0.01 * i,
            "label": label,
        }
        for i in range(n)
    ]


def test_an_overfit_best_quarter_gets_more_regularization_and_less_capacity() -> None:
    cfg = make_cfg(**{"model.hidden": [128]})
    new, label, why = autopilot.steer(_points("overfit"), SPACE, "val_loss", "min", cfg)
    assert label == "overfit"
    assert new["train.weight_decay"]["low"] >= 1e-5 and new["train.weight_decay"]["high"] > 0.1
    assert new["model.dropout"]["high"] > 0.6
    assert [32] in new["model.hidden"]["values"] and [256] not in new["model.hidden"]["values"]
    assert all("3 of the best 3 are overfit" in w for w in why)


def test_an_underfit_best_quarter_gets_more_capacity_and_less_regularization() -> None:
    cfg = make_cfg(**{"model.hidden": [64]})
    new, label, why = autopilot.steer(_points("underfit"), SPACE, "val_loss", "min", cfg)
    assert label == "underfit"
    # grown from the best quarter's sizes ([128], [64], [128]): each, twice as wide, deeper
    assert new["model.hidden"]["values"] == [[128], [256], [128, 128], [64], [64, 64]]
    assert new["train.weight_decay"]["high"] < SPACE["train.weight_decay"]["high"]
    assert "more capacity" in why[0]


def test_more_capacity_grows_from_a_deep_best_quarter_not_the_configured_size() -> None:
    cfg = make_cfg(**{"model.hidden": [64]})  # configured small; the best trials are deep
    points = [{**p, "model.hidden": [128, 128, 128]} for p in _points("underfit")]
    new, _, _ = autopilot.steer(points, SPACE, "val_loss", "min", cfg)
    values = new["model.hidden"]["values"]
    assert values == [[128, 128, 128], [256, 256, 256], [128, 128, 128, 128]]
    assert all(len(v) >= 3 for v in values)  # never shallower than what worked
    deepest = [{**p, "model.hidden": [32] * autopilot.MAX_DEPTH} for p in points]
    new, _, _ = autopilot.steer(deepest, SPACE, "val_loss", "min", cfg)
    assert max(len(v) for v in new["model.hidden"]["values"]) == autopilot.MAX_DEPTH


def test_the_best_quarter_decides_and_diverged_trials_never_steer() -> None:
    points = _points("overfit")
    for p in points[:3]:  # the best three diverged: they do not count
        p["label"] = "diverged"
    for p in points[3:6]:
        p["label"] = "underfit"
    _, label, _ = autopilot.steer(points, SPACE, "val_loss", "min", make_cfg())
    assert label == "underfit"
    none = [{**p, "label": "undetermined"} for p in points]
    new, label, why = autopilot.steer(none, SPACE, "val_loss", "min", make_cfg())
    assert label is None and new == SPACE and "kept" in why[0]


def test_a_small_budget_still_makes_three_rounds() -> None:
    for trials in (12, 13, 24):
        b = autopilot.plan_budget(trials, confirm_runs=0)
        assert len(b.rounds) >= autopilot.MIN_ROUNDS and sum(b.rounds) + b.curve == trials


def test_more_regularization_stops_at_a_ceiling_and_augmentation_comes_back_off() -> None:
    space = {
        **SPACE,
        "train.weight_decay": {"type": "loguniform", "low": 1e-3, "high": 0.5},
        "train.augment": {"type": "choice", "values": [False, True]},
    }
    points = [{**p, "train.weight_decay": 0.05 * (i + 1)} for i, p in enumerate(_points("overfit"))]
    new, _, _ = autopilot.steer(points, space, "val_loss", "min", make_cfg())
    assert new["train.weight_decay"]["high"] == 1.0  # not 5, then 50, round after round
    assert new["train.augment"]["values"] == [True]
    under = [{**p, "label": "underfit"} for p in points]
    again, _, why = autopilot.steer(under, new, "val_loss", "min", make_cfg())
    assert again["train.augment"]["values"] == [False] and any("augment" in w for w in why)


def test_warm_start_keeps_the_earlier_trials_inside_the_new_space_only() -> None:
    new = {
        "model.hidden": {"type": "choice", "values": [[64], [64, 64]]},
        "train.weight_decay": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    }
    points = [
        {"model.hidden": [64], "train.weight_decay": 1e-3, "val_loss": 0.3, "label": "overfit"},
        {"model.hidden": [128], "train.weight_decay": 1e-3, "val_loss": 0.2},  # choice gone
        {"model.hidden": [64], "train.weight_decay": 1e-5, "val_loss": 0.25},  # below the range
        {"model.hidden": [64, 64], "train.weight_decay": 1e-2, "val_loss": float("nan")},
        {"model.hidden": [64, 64], "val_loss": 0.4},  # a key the round did not search
        {"model.hidden": [64, 64], "train.weight_decay": 1e-2, "val_loss": 0.28},  # on the edge
    ]
    kept, rewards = autopilot.warm_start(points, new, "val_loss")
    assert kept == [
        {"model.hidden": [64], "train.weight_decay": 1e-3},
        {"model.hidden": [64, 64], "train.weight_decay": 1e-2},
    ]
    assert rewards == [0.3, 0.28]


def test_warm_start_does_not_mistake_a_bool_for_a_number_choice() -> None:
    space = {"train.augment": {"type": "choice", "values": [True]}}
    kept, _ = autopilot.warm_start(
        [{"train.augment": 1, "val_loss": 0.1}, {"train.augment": True, "val_loss": 0.2}],
        space,
        "val_loss",
    )
    assert kept == [{"train.augment": True}]


def test_a_sweet_spot_narrows_a_choice_to_what_the_best_quarter_chose() -> None:
    points = [  # good_fit everywhere: the best quarter (3) chose [128] and [64, 64]
        {"model.hidden": h, "train.weight_decay": 1e-3, "val_loss": v, "label": "good_fit"}
        for h, v in (
            ([128], 0.10),
            ([64, 64], 0.11),
            ([128], 0.12),
            ([64], 0.30),
            ([64], 0.31),
            ([64], 0.32),
            ([64], 0.33),
            ([64], 0.34),
        )
    ]
    new, label, why = autopilot.steer(points, SPACE, "val_loss", "min", make_cfg())
    assert label == "good_fit"
    assert new["model.hidden"]["values"] == [[128], [64, 64]]
    assert any("model.hidden" in w and "narrowed" in w for w in why)
    # one value chosen: the key keeps its values (one would stop searching it)
    same = [{**p, "model.hidden": [128]} for p in points]
    new, _, _ = autopilot.steer(same, SPACE, "val_loss", "min", make_cfg())
    assert new["model.hidden"] == SPACE["model.hidden"]


def _ended(best_epoch: int, ran: int, loss: float, label: str = "good_fit") -> dict:
    return {"val_loss": loss, "label": label, "best_epoch": best_epoch, "ran": ran}


def test_a_best_quarter_still_improving_at_its_last_epoch_trains_twice_as_long() -> None:
    # the best three (the quarter, at least 3) peaked at epochs 28-30 of 30: still falling
    late = [_ended(30, 30, 0.10), _ended(29, 30, 0.11), _ended(28, 30, 0.12)]
    worse = [_ended(10, 30, 0.5 + i / 10) for i in range(5)]
    epochs, why = autopilot.longer(late + worse, "val_loss", "min", 30, 30)
    assert epochs == 60
    assert why == [
        "3 of the best 3 were still improving at the end (their best epoch in the last tenth "
        "of 30): train.epochs 30 -> 60"
    ]
    # never past 4x the configured epochs
    late90 = [_ended(90, 90, 0.10), _ended(89, 90, 0.11), _ended(88, 90, 0.12)]
    assert autopilot.longer(late90, "val_loss", "min", 90, 30)[0] == 120
    late120 = [_ended(120, 120, 0.10)] * 3
    assert autopilot.longer(late120, "val_loss", "min", 120, 30) == (120, [])


def test_epochs_stay_when_the_best_peaked_early_or_was_cut_short() -> None:
    early = [_ended(15, 30, 0.10), _ended(12, 30, 0.11), _ended(30, 30, 0.12)]
    assert autopilot.longer(early, "val_loss", "min", 30, 30) == (30, [])
    # pruned at a rung: its last epoch is not the schedule's end
    pruned = [_ended(12, 12, 0.10), _ended(4, 4, 0.11), _ended(30, 30, 0.12)]
    assert autopilot.longer(pruned, "val_loss", "min", 30, 30) == (30, [])
    # a diverged trial never steers, whatever its epochs
    wild = [_ended(30, 30, 0.01, "diverged")] * 3 + early
    assert autopilot.longer(wild, "val_loss", "min", 30, 30) == (30, [])


def test_underfit_trials_whose_validation_stopped_improving_steer_as_a_sweet_spot() -> None:
    """Noisy labels keep training loss high (the diagnosis says underfit), but validation
    loss stops improving half-way: more capacity would fit the noise, so the round narrows."""
    cfg = make_cfg(**{"model.hidden": [64]})
    flat = [{**p, "best_epoch": 14, "ran": 30} for p in _points("underfit")]
    new, label, why = autopilot.steer(flat, SPACE, "val_loss", "min", cfg)
    assert label == "good_fit"
    assert "stopped improving at epoch 14 of 30" in why[0] and "noise" in why[0]
    assert new["model.hidden"]["values"] == [[64], [128]]  # the best quarter's, not grown
    assert not any("less regularization" in w for w in why)
    # still improving at the end (or pruned while improving): capacity, as before
    for best, ran in ((29, 30), (11, 12)):
        rising = [{**p, "best_epoch": best, "ran": ran} for p in _points("underfit")]
        new, label, why = autopilot.steer(rising, SPACE, "val_loss", "min", cfg)
        assert label == "underfit" and "more capacity" in why[0], (best, ran)


def test_a_best_size_on_the_edge_of_the_sizes_searched_extends_past_it() -> None:
    """A sweet spot whose best trial has the largest size offered: the next round offers
    larger ones (like a range's edge), keeping the best quarter's sizes."""
    cfg = make_cfg(**{"model.hidden": [64]})
    good = _points("good_fit")
    for p in good:  # the best (i = 0) is the largest: two layers of 64
        p["model.hidden"] = [64, 64] if p["val_loss"] < 0.105 else [64]
    new, label, why = autopilot.steer(good, SPACE, "val_loss", "min", cfg)
    assert label == "good_fit"
    assert new["model.hidden"]["values"] == [[64, 64], [64], [128, 128], [64, 64, 64]]
    assert any("largest size searched" in w for w in why)
    inside = [{**p, "model.hidden": [128]} if p["val_loss"] < 0.105 else p for p in good]
    new, _, why = autopilot.steer(inside, SPACE, "val_loss", "min", cfg)
    assert not any("size searched" in w for w in why)  # [128] sits between [64] and [64, 64]
    assert new["model.hidden"]["values"] == [[64], [128]]  # narrowed, as before
    smallest = [{**p, "model.hidden": [64]} if p["val_loss"] < 0.105 else p for p in good]
    new, _, why = autopilot.steer(smallest, SPACE, "val_loss", "min", cfg)
    assert [32] in new["model.hidden"]["values"] and any("smallest" in w for w in why)
