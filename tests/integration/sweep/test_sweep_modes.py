"""Searchers, schedulers and the champion's confirmation, through the real CLI on a real local
Ray (single-worker trials on the fast path) and a real MLflow SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def _sweep(tmp: Path, digits: Path, name: str, *over: str) -> tuple[str, object]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp}/mlflow.db"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "sweep",
            str(ROOT / "jobs/configs/quickstart.yaml"),
            f"data.path={digits}",
            f"tracking.uri={uri}",
            f"sweep.storage_path={tmp}/results",
            f"experiment={name}",
            f"tracking.register_as={name}",
            "scaling.num_workers=1",
            "scaling.cpus_per_worker=1",
            "model.hidden=[64]",
            *over,
        ],
        cwd=tmp,
        env={**os.environ, "RAY_ADDRESS": "local"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(proc.stdout[-5000:], proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    return proc.stdout, (
        client,
        client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=200),
    )


def _role(runs: list, role: str) -> list:
    return [r for r in runs if r.data.tags["orchestrator.role"] == role]


def test_optuna_median_gap_objective_and_seed_confirmation(
    digits_path: Path, tmp_path: Path
) -> None:
    out, (client, runs) = _sweep(
        tmp_path,
        digits_path,
        "modes",
        "sweep.searcher=optuna",
        "sweep.scheduler=median",
        "sweep.objective=gap_penalized",
        "sweep.gap_penalty=1.0",
        "sweep.num_samples=4",
        "train.epochs=6",
        "sweep.confirm_seeds=2",
        "sweep.confirm_top=2",
    )
    assert "optuna search, median scheduler" in out and "(fast path)" in out
    trials, confirms = _role(runs, "trial"), _role(runs, "confirm")
    assert len(trials) == 4 and len({r.data.params["model.dropout"] for r in trials}) == 4
    for r in trials:  # the gap and the objective it feeds, every epoch
        gap = client.get_metric_history(r.info.run_id, "gap")
        objective = client.get_metric_history(r.info.run_id, "objective")
        assert len(gap) == len(objective) == int(r.data.tags["orchestrator.epochs_run"])
    # the top 2 configurations, each rerun with 2 fresh seeds at full budget
    assert len(confirms) == 4
    assert sorted(r.data.params["train.seed"] for r in confirms) == ["1", "1", "2", "2"]
    assert all(len(client.get_metric_history(r.info.run_id, "val_loss")) == 6 for r in confirms)
    winner = next(line for line in out.splitlines() if line.startswith("[confirm] * trial"))
    parent = _role(runs, "sweep")[0]
    champion = parent.data.tags["orchestrator.champion_trial"]
    assert f"trial {champion}:" in winner and "+-" in winner
    assert parent.data.metrics["confirm_objective_mean"] > 0
    means = {
        k.split(".")[-1]: float(v.split("mean=")[1].split()[0])
        for k, v in parent.data.tags.items()
        if k.startswith("orchestrator.confirm.")
    }
    assert len(means) == 2 and means[champion] == min(means.values())
    assert "chosen on the mean of 2 seeds" in out


def test_a_crashing_trial_is_retried_then_recorded_failed_and_the_sweep_goes_on(
    digits_path: Path, tmp_path: Path
) -> None:
    # A layer of 2e9 units asks for 512 GB: the allocation fails inside that trial, every time
    out, (client, runs) = _sweep(
        tmp_path,
        digits_path,
        "crash",
        "sweep.searcher=grid",
        "sweep.scheduler=fifo",
        "sweep.max_failures=1",
        "train.epochs=3",
        "sweep.space={}",
        "sweep.space.model.hidden={type: grid, values: [[64], [2000000000]]}",
    )
    assert out.count("crashed; retrying from its last checkpoint") == 1
    trials = _role(runs, "trial")
    assert len(trials) == 2
    failed = [r for r in trials if r.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.params["model.hidden"] == "[2000000000]"
    assert "allocate" in failed[0].data.tags["orchestrator.error"]
    assert failed[0].data.tags["orchestrator.status"] == "failed"
    assert "failed: " in out and "test accuracy" in out  # the other trial became the champion


def test_pbt_moves_trials_to_better_values_and_keeps_their_weights(
    digits_path: Path, tmp_path: Path
) -> None:
    out, (client, runs) = _sweep(
        tmp_path,
        digits_path,
        "pbt",
        "sweep.scheduler=pbt",
        "sweep.perturbation_interval=2",
        "sweep.num_samples=4",
        "train.epochs=14",
        "sweep.refit=false",
    )
    assert "continues from epoch" in out  # an exploited trial resumed a better one's weights
    trials = _role(runs, "trial")
    moved = [
        r for r in trials if any(k.startswith("orchestrator.values.epoch") for k in r.data.tags)
    ]
    assert moved
    for r in trials:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")]
        assert len(steps) == len(set(steps))


def test_asynchronous_hyperband_stops_trials_in_its_brackets(
    digits_path: Path, tmp_path: Path
) -> None:
    out, (client, runs) = _sweep(
        tmp_path,
        digits_path,
        "hyperband",
        "sweep.scheduler=hyperband",
        "sweep.brackets=2",
        "sweep.grace_period=1",
        "sweep.reduction_factor=2",
        "sweep.num_samples=8",
        "train.epochs=6",
    )
    assert "hyperband scheduler" in out
    epochs = sorted(int(r.data.tags["orchestrator.epochs_run"]) for r in _role(runs, "trial"))
    assert len(epochs) == 8 and epochs[0] < 6 and epochs[-1] == 6


def test_asha_by_promotion_pauses_trials_at_rungs_and_resumes_the_best(
    digits_path: Path, tmp_path: Path
) -> None:
    out, (client, runs) = _sweep(
        tmp_path,
        digits_path,
        "promote",
        "sweep.scheduler=asha",
        "sweep.asha_mode=promote",
        "sweep.grace_period=1",
        "sweep.reduction_factor=3",
        "sweep.num_samples=9",
        "sweep.max_concurrent=1",
        "train.epochs=9",
        "sweep.refit=false",
    )
    assert "asha scheduler (by promotion)" in out
    assert "continues from epoch 1" in out  # paused at the first rung, promoted later
    trials = _role(runs, "trial")
    epochs = sorted(int(r.data.tags["orchestrator.epochs_run"]) for r in trials)
    assert len(epochs) == 9 and epochs[-1] == 9 and sum(epochs) < 9 * 9
    # rungs at epochs 1 and 3: a trial ends at a rung (or the budget), never between
    assert set(epochs) <= {1, 3, 9}
    # the first trial had nobody to beat, yet it paused at the first rung: the second one
    # started before the first had finished (one trial at a time)
    ids = sorted(r.data.tags["orchestrator.trial_id"] for r in trials)
    ended = [
        line
        for line in out.splitlines()
        if line.startswith(f"[sweep] trial {ids[0]} ")
        and ("finished;" in line or "pruned;" in line)
    ]
    assert len(ended) == 1 and out.index(f"trial {ids[1]} started") < out.index(ended[0])
    for r in trials:  # paused and resumed from the rung's own checkpoint: no epoch twice
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")]
        assert sorted(steps) == list(range(1, int(r.data.tags["orchestrator.epochs_run"]) + 1))
