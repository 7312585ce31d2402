"""`orchestrator autopilot`: rounds of search on digits (real local Ray, MLflow in SQLite),
each steered by the diagnosis of the last; the confirmation and champion once; the data
curve when the champion overfits; MLflow nested autopilot > round > trial; and a driver
killed in round 2 that `orchestrator resume` takes on at round 2, round 1 not rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT
from orchestrator.core import autopilot as plan

pytestmark = pytest.mark.slow

# Diagnosis thresholds under which any positive gap is overfit (never underfit, never too
# short or still falling to judge): the champion of these tiny runs then overfits, and the
# data curve runs at the end, without waiting for a model that overfits by the defaults.
# (Regularized and pruned trials end with val below train loss and stay good_fit: the
# overfit steering itself is covered in tests/unit/core/test_autopilot.py.)
OVERFIT = [
    "diagnosis.gap_ratio=0.000001",
    "diagnosis.rise_ratio=0.000001",
    "diagnosis.underfit_loss_ratio=100",
    "diagnosis.min_epochs=1",
    "diagnosis.falling_ratio=100",
]


def _args(data: Path, tmp: Path, experiment: str, *more: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "autopilot",
        str(ROOT / "jobs/configs/autopilot.yaml"),
        f"data.path={data}",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        f"sweep.storage_path={tmp}/results",
        f"experiment={experiment}",
        f"tracking.register_as={experiment}",
        "model.hidden=[32]",
        "data.max_train_rows=800",  # the curve's 4 sizes: 100 (10 per class) to 800
        "train.epochs=6",
        "sweep.grace_period=2",
        "sweep.max_concurrent=1",  # one trial at a time: ASHA and TPE see the same order
        *more,
    ]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "RAY_ADDRESS": "local",
        "PYTHONUNBUFFERED": "1",
        "TUNE_GLOBAL_CHECKPOINT_S": "1",
    }


def _run(args: list[str], cwd: Path) -> str:
    """A CLI command to its end: its output (head and tail shown), exit 0 asserted."""
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1200)
    print(proc.stdout[:3000], "\n...\n", proc.stdout[-8000:], proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _by_role(uri: str, experiment: str) -> dict[str, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment).experiment_id
    out: dict[str, list] = {}
    for r in client.search_runs([exp], max_results=500):
        out.setdefault(r.data.tags["orchestrator.role"], []).append(r)
    return out


def test_three_steered_rounds_then_champion_and_data_curve(
    digits_path: Path, tmp_path: Path
) -> None:
    # 30 trials: 6 confirmation runs and 12 curve runs off the top, 3 rounds of 4
    out = _run(_args(digits_path, tmp_path, "ap", "--budget-trials", "30", *OVERFIT), tmp_path)
    assert "30 trials: up to 3 rounds of 4 + 4 + 4 (12 searching), 6 confirming" in out
    assert "TPE starts from" in out  # round 2 and 3 were told of the earlier trials
    assert "autopilot.budget_trials (30) spent" in out
    assert "the champion is labelled overfit: would more data help?" in out
    assert "verdict: " in out

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = _by_role(uri, "ap")
    (pilot,) = runs["autopilot"]
    tags = pilot.data.tags
    assert pilot.info.status == "FINISHED"
    assert "orchestrator.champion_trial" in tags and "orchestrator.autopilot_stop" in tags
    assert any(k.startswith("orchestrator.champion.") for k in tags)
    rounds = sorted(runs["sweep"], key=lambda r: int(r.data.tags["orchestrator.round"]))
    assert [r.data.tags["orchestrator.round"] for r in rounds] == ["1", "2", "3"]
    assert all(r.data.tags["mlflow.parentRunId"] == pilot.info.run_id for r in rounds)
    trials = runs["trial"]
    for r in rounds:  # 4 trials under each round, none elsewhere
        mine = [t for t in trials if t.data.tags["mlflow.parentRunId"] == r.info.run_id]
        assert len(mine) == 4
    assert len(trials) == 12
    # steered: each round but the last says by which label and why, and the next differs
    spaces = [json.loads(r.data.tags["orchestrator.round_space"]) for r in rounds]
    for r in rounds[:2]:
        assert r.data.tags["orchestrator.round_label"] in (
            "underfit",
            "good_fit",
            "overfit",
            "both",
        )
        assert r.data.tags["orchestrator.steer_reasons"].startswith(
            tuple(f"{n} of the best" for n in range(1, 5))
        )
    assert "orchestrator.steer_reasons" not in rounds[2].data.tags
    assert "train.lr: a decade either side" in rounds[0].data.tags["orchestrator.round_reasons"]
    assert spaces[0] != spaces[1] != spaces[2]
    assert "best_val_loss" in rounds[0].data.metrics
    # the champion is labelled overfit (thresholds above): the curve ran, under the autopilot
    won = next(
        t
        for t in runs["trial"]
        if t.data.tags["orchestrator.trial_id"] == tags["orchestrator.champion_trial"]
    )
    assert won.data.tags["orchestrator.diagnosis"] in ("overfit", "both")
    confirms = runs["confirm"]
    assert len(confirms) == 6
    assert all(c.data.tags["mlflow.parentRunId"] == pilot.info.run_id for c in confirms)
    (curve,) = runs["curve"]
    assert curve.data.tags["mlflow.parentRunId"] == pilot.info.run_id
    assert len(runs["curve_point"]) == 12
    assert "test_accuracy" in pilot.data.metrics  # the champion's one look at the test split
    # the state keeps every round, for resume, diagnose and report
    (state,) = (tmp_path / "results").glob("ap-*/orchestrator.json")  # not the Tune runs'
    saved, folder = json.loads(state.read_text()), state.parent
    assert saved["phase"] == "done"
    assert [len(r["records"]) for r in saved["autopilot"]["rounds"]] == [4, 4, 4]
    # each later round's ASHA ranked its rungs against the earlier rounds' trials of the
    # same epochs (longer rounds start a ladder of their own): each trial's curve is kept
    done = saved["autopilot"]["rounds"]
    for r in (r for rnd in done for r in rnd["records"]):
        assert len(r["curve"]) == r["epochs"] and all(v > 0 for v in r["curve"])
    carried = 0
    for i, rnd in enumerate(done[1:], start=1):
        epochs = rnd["epochs"] or 6
        earlier = sum(len(d["records"]) for d in done[:i] if (d["epochs"] or 6) == epochs)
        if earlier:
            assert f"ASHA ranks each rung against the {earlier} earlier trial(s)" in out
            carried += 1
    assert carried  # round 2 trains as long as round 1 here (the best were not late)

    # diagnose and report read an autopilot's folder: every round's trials, and the rounds
    for command in ("diagnose", "report"):
        shown = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", command, "ap"]
            + ["--storage", str(tmp_path / "results")],
            cwd=tmp_path,
            env={**_env(), "MLFLOW_TRACKING_URI": uri},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert shown.returncode == 0, shown.stderr[-3000:]
        if command == "diagnose":
            assert ": 12 trials: " in shown.stdout, shown.stdout  # every round's trials
            assert "steered by" in shown.stdout  # the rounds table
    html = (folder / "report.html").read_text()
    assert "<h2>Rounds</h2>" in html and html.count("its space") == 3


def test_a_driver_killed_in_round_two_resumes_at_round_two(
    digits_path: Path, tmp_path: Path
) -> None:
    driver = subprocess.Popen(
        # longer trials (20 epochs): the kill lands inside round 2, not after it
        _args(digits_path, tmp_path, "apk", "--budget-trials", "18", "train.epochs=20"),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "driver.err").open("w"),
        text=True,
    )
    seen: list[str] = []
    try:
        assert driver.stdout is not None
        deadline = time.time() + 600
        for line in driver.stdout:
            seen.append(line)
            if "[sweep] trial" in line and "started" in line and any("round 2:" in s for s in seen):
                break
            assert time.time() < deadline, "".join(seen)
        time.sleep(1.5)  # a trial of round 2 under way, and Tune's state saved
        started = psutil.Process(driver.pid).children(recursive=True)
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
        for p in locals().get("started", []):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    print("".join(seen))
    assert any("round 1 done" in s for s in seen), "".join(seen)
    cli = [sys.executable, "-m", "orchestrator.cli"]
    out = _run([*cli, "resume", "apk", "--storage", str(tmp_path / "results")], tmp_path)
    assert "1 round(s) done, going on with round 2" in out
    assert "round 1:" not in out  # round 1 is not searched again

    runs = _by_role(f"sqlite:///{tmp_path}/mlflow.db", "apk")
    (pilot,) = runs["autopilot"]
    assert pilot.info.status == "FINISHED" and "orchestrator.resumed" in pilot.data.tags
    numbers = sorted(r.data.tags["orchestrator.round"] for r in runs["sweep"])
    assert numbers == ["1", "2", "3"]  # one run per round, round 2's found again
    rounds = {r.data.tags["orchestrator.round"]: r for r in runs["sweep"]}
    assert all(r.info.status == "FINISHED" for r in rounds.values())
    for r in rounds.values():
        mine = [t for t in runs["trial"] if t.data.tags["mlflow.parentRunId"] == r.info.run_id]
        ids = [t.data.tags["orchestrator.trial_id"] for t in mine]
        assert len(ids) == 4 == len(set(ids)), ids  # each trial once, none rerun
        assert all(t.info.status == "FINISHED" for t in mine)


def test_budget_hours_ends_the_search_in_time_and_the_champion_still_comes(
    digits_path: Path, tmp_path: Path
) -> None:
    """``--budget-hours`` binds before ``--budget-trials`` does: round 1 is cut at its 40%
    share of the time (Tune's time budget), no round starts without time left, and the
    confirmation and champion still run."""
    # 72 s. The trial budget is never reached: round 1 alone plans 393 trials, where these
    # 6-epoch trials on 800 rows (most paused at epoch 2) take about 0.35 s each
    hours = 0.02
    out = _run(
        _args(
            digits_path,
            tmp_path,
            "hours",
            "--budget-trials",
            "1000",
            "--budget-hours",
            str(hours),
            "autopilot.min_improvement=0",  # only the budget can stop it
        ),
        tmp_path,
    )
    assert f"autopilot.budget_hours ({hours:g}) spent" in out
    (state,) = (tmp_path / "results").glob("hours-*/orchestrator.json")
    rounds = json.loads(state.read_text())["autopilot"]["rounds"]
    assert all(r["done"] for r in rounds) and rounds[0]["records"]
    assert len(rounds[0]["records"]) < rounds[0]["trials"]  # time, not trials, ended it
    limit = hours * 3600
    slack = 20  # Tune checks its time budget between results; a round's own start-up
    assert rounds[0]["seconds"] <= plan.FIRST_SHARE * limit + slack
    assert sum(r["seconds"] for r in rounds) <= limit + slack
    (pilot,) = _by_role(f"sqlite:///{tmp_path}/mlflow.db", "hours")["autopilot"]
    assert pilot.info.status == "FINISHED" and "test_accuracy" in pilot.data.metrics
    assert "budget_hours" in pilot.data.tags["orchestrator.autopilot_stop"]
