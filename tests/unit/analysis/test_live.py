"""The live view is a pure function of the ledger: its content, read as text."""

from __future__ import annotations

import io
import math

import pytest
from rich.console import Console

from orchestrator.analysis import live
from orchestrator.core.ledger import TrialRecord


def _rec(tid: str, epochs: int, losses: list[float], status: str = "RUNNING") -> TrialRecord:
    history = [
        {"epoch": float(i + 1), "train_loss": v / 2, "val_loss": v} for i, v in enumerate(losses)
    ]
    best = min(history, key=lambda r: r["val_loss"]) if history else None
    return TrialRecord(
        tid,
        {"train.weight_decay": 0.000123456, "model.hidden": [64, 64]},
        epochs=epochs,
        best=best,
        status=status,
        history=history,
    )


def _text(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


LEDGER = [
    _rec("t1", 10, [0.9, 0.5, 0.4, 0.35, 0.3, 0.3, 0.31, 0.29, 0.28, 0.27], "TERMINATED"),
    _rec("t2", 4, [0.8, 0.6, 0.5, 0.45], "TERMINATED"),
    _rec("t3", 3, [0.7, 0.5, 0.42]),
    _rec("t4", 1, [1.1]),
]


def test_a_frame_has_a_row_per_running_trial_and_the_sweeps_totals() -> None:
    f = live.frame(LEDGER, 8, "val_loss", "min", 10, 60.0, {"t4": "PAUSED"})
    assert (f.done, f.total, f.running) == (2, 8, 1)
    assert [r.trial_id for r in f.rows] == ["t3", "t4"]  # running first, then paused
    t3 = f.rows[0]
    assert (t3.epoch, t3.planned, t3.status) == (3, 10, "running")
    assert t3.val_loss == pytest.approx(0.42) and t3.train_loss == pytest.approx(0.21)
    assert f.best == "trial t1 val_loss 0.2700 (epoch 10)"
    assert "weight_decay=0.000123" in t3.values and "hidden=[64, 64]" in t3.values


def test_time_left_comes_from_the_epochs_still_to_train() -> None:
    # 18 epochs in 60 s; the ended trials trained 7 epochs on average: t3 has 4 to go, t4 6,
    # and 4 trials not started 7 each: 38 epochs at 18 per minute
    left = live.time_left(LEDGER, 8, 10, 60.0)
    assert left == pytest.approx(38 * 60 / 18)
    assert live.time_left([_rec("a", 0, [])], 4, 10, 5.0) is None  # no epoch yet: no guess
    # nothing ended yet: each trial is taken at its whole budget
    assert live.time_left([_rec("a", 2, [0.5, 0.4])], 2, 10, 10.0) == pytest.approx(18 * 5)


def test_the_rendered_view_shows_header_rows_phase_and_notes() -> None:
    f = live.frame(LEDGER, 8, "val_loss", "min", 10, 75.0, active=60.0)
    import dataclasses

    f = dataclasses.replace(
        f, phase="refitting the champion", phase_elapsed=12.0, notes=["MLflow unreachable"]
    )
    text = _text(live.render(f))
    lines = text.splitlines()
    assert lines[0].startswith("[sweep] 2/8 trials done, 2 running; best trial t1 val_loss 0.2700")
    assert "1m 15s elapsed, ~2m 07s left" in lines[0]
    header = next(line for line in lines if "trial" in line and "status" in line)
    for column in ("values", "epoch", "train_loss", "val_loss", "best val_loss"):
        assert column in header
    t3 = next(line for line in lines if line.startswith("t3"))
    assert "3/10" in t3 and "0.4200" in t3 and "running" in t3
    assert "refitting the champion ... 12s" in text
    assert "! MLflow unreachable" in text
    assert not any(line.startswith(("t1", "t2")) for line in lines)  # ended: not rows


def test_many_running_trials_are_cut_to_a_count() -> None:
    many = [_rec(f"r{i:02d}", 2, [0.5, 0.4]) for i in range(live.MAX_ROWS + 3)]
    f = live.frame(many, 20, "val_loss", "min", 10, 10.0)
    assert len(f.rows) == live.MAX_ROWS and f.hidden == 3
    assert "... and 3 more" in _text(live.render(f))


def test_the_plain_line_says_the_same_in_one_line() -> None:
    f = live.frame(LEDGER, 8, "val_loss", "min", 10, 60.0, {"t4": "PAUSED"})
    line = live.plain_line(f)
    assert "\n" not in line
    assert line.startswith("[sweep] 2/8 trials done, 1 running")
    assert "t3 epoch 3/10 val_loss 0.4200" in line and "t4" not in line.split("|")[1]


def test_an_empty_ledger_and_a_failed_trial_render_without_numbers() -> None:
    f = live.frame([], 4, "val_loss", "min", 10, 3.0)
    assert (f.done, f.total, f.best, f.left) == (0, 4, None, None)
    assert _text(live.render(f)).startswith("[sweep] 0/4 trials done, 0 running; 3s elapsed")
    bad = _rec("x", 1, [math.nan])
    row = live.frame([bad], 1, "val_loss", "min", 10, 3.0).rows[0]
    assert "-" in _text(live.render(live.frame([bad], 1, "val_loss", "min", 10, 3.0)))
    assert math.isnan(row.val_loss)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59.4, "59s"), (185, "3m 05s"), (7620, "2h 07m")]
)
def test_durations_read_as_people_say_them(seconds: float, text: str) -> None:
    assert live.duration(seconds) == text


def test_one_run_gets_a_bar_over_its_epochs() -> None:
    f = live.frame([_rec("t1", 3, [0.7, 0.5, 0.42])], 1, "val_loss", "min", 10, 9.0)
    text = _text(live.render(f))
    assert "epoch 3/10" in text and "best 0.4200" in text
    assert "status" not in text  # no table for one run: the bar says it
