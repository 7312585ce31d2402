"""The autopilot driver's pure parts: the CLI's short forms, the budget check, a round's
config, the time a round may take, the best-so-far the stop rule reads, and the rounds
table."""

from __future__ import annotations

import math

import pytest

from conftest import make_cfg
from orchestrator.analysis import progress
from orchestrator.config import ConfigError
from orchestrator.core import autopilot as plan
from orchestrator.sweep import autopilot

SPACE = {"train.weight_decay": {"type": "loguniform", "low": 1e-6, "high": 0.1}}


def test_the_short_forms_set_the_budget_keys_and_are_checked_like_them() -> None:
    cfg = autopilot.config_for(make_cfg(), 40, 1.5)
    assert cfg.autopilot.budget_trials == 40 and cfg.autopilot.budget_hours == 1.5
    assert autopilot.config_for(cfg, None, None) is cfg
    with pytest.raises(ConfigError) as e:
        autopilot.config_for(cfg, None, -1.0)
    assert e.value.key == "autopilot.budget_hours"


def test_a_budget_too_small_for_three_rounds_and_the_confirmation_names_the_key() -> None:
    with pytest.raises(ConfigError) as e:
        autopilot.budget_of(make_cfg(**{"autopilot.budget_trials": 15}))
    assert e.value.key == "autopilot.budget_trials"
    # the confirmation always has at least 2 seeds: 3 x 2 = 6 runs come off the top
    budget = autopilot.budget_of(make_cfg(**{"autopilot.budget_trials": 60}))
    assert budget.confirm == 6 and budget.curve == plan.CURVE_RUNS
    assert sum(budget.rounds) + budget.confirm + budget.curve == 60
    assert len(budget.rounds) >= plan.MIN_ROUNDS


def test_autopilot_config_keys_are_checked_by_name() -> None:
    for key, bad in (
        ("autopilot.min_improvement", 1.5),
        ("autopilot.max_rounds", 2),
        ("autopilot.budget_trials", 0),
    ):
        with pytest.raises(ConfigError) as e:
            make_cfg(**{key: bad})
        assert e.value.key == key


def test_a_round_searches_its_space_with_tpe_seeded_per_round_and_asha() -> None:
    cfg = make_cfg(**{"sweep.scheduler": "median", "sweep.seed": 5})
    r3 = autopilot.round_config(cfg, SPACE, 3, 9)
    assert r3.sweep.space == SPACE and r3.sweep.num_samples == 9
    assert (r3.sweep.searcher, r3.sweep.scheduler, r3.sweep.seed) == ("optuna", "asha", 7)
    assert r3.train.epochs == cfg.train.epochs
    assert autopilot.round_config(cfg, SPACE, 3, 9, epochs=40).train.epochs == 40
    with pytest.raises(ConfigError):  # a steered space is checked like any other
        autopilot.round_config(cfg, {"train.nope": SPACE["train.weight_decay"]}, 2, 4)


def _round(seconds: float, n: int, done: bool = True) -> dict:
    return {"seconds": seconds, "records": [{}] * n, "done": done}


def test_a_round_gets_what_is_left_less_what_the_confirmation_needs() -> None:
    budget = plan.Budget([10, 5, 5], confirm=6, curve=0)
    assert autopilot._time_for_round([_round(0, 0, False)], math.inf, budget) is None
    assert autopilot._time_for_round([_round(0, 0, False)], 1000, budget) == pytest.approx(
        1000 * plan.FIRST_SHARE
    )
    # 10 trials took 100 s: a confirmation run is taken as 2 x 10 s, 6 of them
    rounds = [_round(100, 10), _round(0, 0, False)]
    assert autopilot._time_for_round(rounds, 500, budget) == pytest.approx(500 - 120)
    assert autopilot._time_for_round(rounds, 100, budget) < 0  # nothing left for a round


def test_the_stop_rule_reads_the_best_so_far_of_the_finished_rounds() -> None:
    rounds = [
        autopilot.Round(1, 8, SPACE, [], best=0.30, done=True),
        autopilot.Round(2, 4, SPACE, [], best=0.35, done=True),  # worse: the best stays
        autopilot.Round(3, 4, SPACE, [], best=None, done=True),  # nothing finished
        autopilot.Round(4, 4, SPACE, [], best=0.20, done=True),
        autopilot.Round(5, 4, SPACE, [], best=0.10, done=False),  # not finished: not read
    ]
    assert autopilot._bests(rounds, "min") == [0.30, 0.30, 0.30, 0.20]
    assert autopilot._bests(rounds[:1], "max") == [0.30]


def test_the_rounds_table_shows_each_rounds_best_and_where_it_was() -> None:
    rec = {"trial_id": "a", "values": {"train.weight_decay": 0.001}, "best": {"val_loss": 0.3}}
    other = {"trial_id": "b", "values": {"train.weight_decay": 0.1}, "best": {"val_loss": 0.5}}
    rounds = [
        autopilot.Round(1, 2, SPACE, [], best=0.3, label="overfit", records=[rec, other]),
        autopilot.Round(2, 2, SPACE, [], best=0.4, label=None, records=[other]),
    ]
    rows = progress.round_rows(rounds, "val_loss", "min")
    assert [r["so_far"] for r in rows] == [0.3, 0.3]
    assert rows[0]["at"] == {"train.weight_decay": 0.001}
    lines = progress.rounds_table(rounds, "val_loss", "min")
    assert "overfit" in lines[2] and "train.weight_decay=0.001" in lines[2]
    assert lines[3].split()[:3] == ["2", "1", "0.4000"]  # trials run
    assert progress.rounds_table([], "val_loss", "min") == []


def test_the_reports_rounds_section_shows_rounds_spaces_and_reasons(tmp_path) -> None:
    from orchestrator.analysis import report, review
    from orchestrator.core import diagnosis, storage

    rec = {"trial_id": "a", "values": {"train.weight_decay": 0.001}, "best": {"val_loss": 0.3}}
    rounds = [
        vars(autopilot.Round(1, 1, SPACE, [], best=0.3, label="overfit", records=[rec]))
        | {"steer": ["3 of 3 are overfit: train.weight_decay: more regularization"]},
        vars(autopilot.Round(2, 1, SPACE, [], best=0.25, records=[rec])),
    ]

    def view(rounds: list) -> review.SweepView:
        return review.SweepView(
            storage.Folder(str(tmp_path)),
            make_cfg(),
            "run",
            diagnosis.Baseline(2.3, 0.1),
            [],
            {},
            [],
            rounds,
        )

    assert report.rounds_section(view([])) == ""  # a plain sweep
    section = report.rounds_section(view(rounds))
    assert "<h2>Rounds</h2>" in section and "data:image/png;base64," in section
    assert "more regularization" in section and "loguniform" in section
    assert section.count("<tr>") == 3  # the header and one row per round


def test_a_trial_steers_with_its_best_epoch_and_the_epochs_it_trained() -> None:
    saved = {
        "values": {"train.lr": 0.01},
        "best": {"val_loss": 0.2, "epoch": 28.0},
        "epochs": 30,
        "diagnosis": "good_fit",
    }
    p = autopilot._point(saved, "val_loss")
    assert p == {
        "train.lr": 0.01,
        "val_loss": 0.2,
        "label": "good_fit",
        "best_epoch": 28.0,
        "ran": 30,
    }
    # a round saved before rounds had epochs reads back as the configured ones
    old = {k: v for k, v in vars(autopilot.Round(2, 4, SPACE, [])).items() if k != "epochs"}
    assert autopilot.Round(**old).epochs is None


def test_a_rounds_asha_ranks_against_the_earlier_rounds_of_the_same_epochs() -> None:
    """Each saved trial keeps its ranked value per epoch (up to its first gap or non-finite
    value); a round's ladder is carried from the earlier rounds over its own epochs only."""
    history = [
        {"epoch": 1, "val_loss": 0.9},
        {"epoch": 2, "val_loss": 0.7},
        {"epoch": 2, "val_loss": 0.6},  # replayed after a resume: the last one counts
        {"epoch": 3, "val_loss": math.nan},
        {"epoch": 4, "val_loss": 0.5},
    ]
    assert autopilot._curve_of(history, "val_loss") == [0.9, 0.6]
    assert autopilot._curve_of(history, "objective") == []
    rounds = [
        {"number": 1, "epochs": None, "records": [{"trial_id": "a", "curve": [0.5] * 30}]},
        {"number": 2, "epochs": 60, "records": [{"trial_id": "a", "curve": [0.4] * 60}]},
        {"number": 3, "epochs": None, "records": [{"trial_id": "b", "curve": []}]},
    ]
    assert autopilot._earlier_rungs(rounds, 30, 30) == {"round1-a": [0.5] * 30}
    assert autopilot._earlier_rungs(rounds, 60, 30) == {"round2-a": [0.4] * 60}
