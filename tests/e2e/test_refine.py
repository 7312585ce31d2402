"""The closed loop on real training: a first sweep over a badly placed weight-decay range
(its best trial on the lower edge), then `orchestrator sweep --refine-from`, which searches
the range `diagnose` proposes, is linked to the first in MLflow, and does better."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_refining_a_badly_placed_range_moves_it_and_improves_the_best(
    digits_path: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [
        str(ROOT / "jobs/configs/quickstart.yaml"),
        f"data.path={digits_path}",
        f"tracking.uri={uri}",
        f"sweep.storage_path={tmp_path}/results",
        "experiment=refine",
        "tracking.register_as=refine",
        "scaling.num_workers=1",
        "scaling.cpus_per_worker=1",
        "model.hidden=[64]",
        "model.dropout=0",
        "train.epochs=20",
        "sweep.num_samples=6",
        "sweep.scheduler=fifo",
        "sweep.refit=false",
        "sweep.max_concurrent=2",
        "sweep.space={}",
        "sweep.space.train.weight_decay={type: loguniform, low: 0.5, high: 50.0}",
    ]
    env = {**os.environ, "RAY_ADDRESS": "local"}

    def cli(*more: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *more],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        print(proc.stdout[-4000:], proc.stderr[-3000:])
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    cli("sweep", *args)
    diag = cli("diagnose", "refine", "--storage", f"{tmp_path}/results")
    assert "sits on the lower edge of [0.5, 50]" in diag
    out = cli("sweep", *args, "--refine-from", "refine")
    assert "refining refine-" in out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("refine").experiment_id
    parents = sorted(
        client.search_runs([exp], "tags.`orchestrator.role` = 'sweep'"),
        key=lambda r: r.info.start_time,
    )
    assert len(parents) == 2
    first, second = parents
    assert second.data.tags["orchestrator.refined_from"] == first.info.run_id
    space = yaml.safe_load(second.data.params["sweep.space"])
    assert space["train.weight_decay"]["low"] < 0.5  # moved down, past the old edge

    def best(parent: object) -> float:
        trials = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")  # type: ignore[attr-defined]
        return min(
            min(m.value for m in client.get_metric_history(t.info.run_id, "val_loss"))
            for t in trials
        )

    assert best(second) < best(first)
