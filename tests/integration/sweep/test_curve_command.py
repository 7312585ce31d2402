"""`orchestrator curve`: the champion of a real sweep (real local Ray, MLflow in SQLite)
trained again on 1/8 to all of its training rows with 3 seeds each, the curve read and
written to MLflow and beside the sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def _cli(tmp: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=tmp,
        env={**os.environ, "RAY_ADDRESS": "local"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(proc.stdout[-6000:], proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_curve_of_a_finished_sweeps_champion(digits_path: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    results = tmp_path / "results"
    _cli(
        tmp_path,
        "sweep",
        str(ROOT / "jobs/configs/quickstart.yaml"),
        f"data.path={digits_path}",
        f"tracking.uri={uri}",
        f"sweep.storage_path={results}",
        "experiment=cv",
        "tracking.register_as=cv",
        "scaling.num_workers=1",
        "scaling.cpus_per_worker=1",
        "model.hidden=[64]",
        "data.max_train_rows=800",
        "sweep.num_samples=2",
        "sweep.confirm_seeds=0",
        "train.epochs=4",
    )
    out = _cli(tmp_path, "curve", "cv", "--storage", str(results))
    # 800 rows, 10 classes: 100 (1/8), 200, 400, 800, each with 3 seeds
    assert "4 sizes (100, 200, 400, 800 training rows) x 3 seeds = 12 runs" in out
    assert "verdict: " in out

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cv").experiment_id
    runs = client.search_runs([exp], max_results=200)
    by_role: dict[str, list] = {}
    for r in runs:
        by_role.setdefault(r.data.tags["orchestrator.role"], []).append(r)
    (sweep,) = by_role["sweep"]
    (curve_run,) = by_role["curve"]
    assert curve_run.data.tags["mlflow.parentRunId"] == sweep.info.run_id
    assert curve_run.info.status == "FINISHED"
    verdict = curve_run.data.tags["orchestrator.curve_verdict"]
    assert verdict in ("helps", "little", "flat", "unreliable")
    points = by_role["curve_point"]
    assert len(points) == 12
    assert all(p.data.tags["mlflow.parentRunId"] == curve_run.info.run_id for p in points)
    sizes = sorted(int(p.data.params["data.max_train_rows"]) for p in points)
    assert sizes == [100] * 3 + [200] * 3 + [400] * 3 + [800] * 3
    seeds = {(p.data.params["data.max_train_rows"], p.data.params["train.seed"]) for p in points}
    assert len(seeds) == 12  # three different seeds at each size
    for p in points:  # each epoch logged once (early stopping may end a run sooner)
        steps = [m.step for m in client.get_metric_history(p.info.run_id, "val_loss")]
        assert steps and sorted(steps) == list(range(1, len(steps) + 1))
    assert "plots/data_curve.png" in [
        a.path for a in client.list_artifacts(curve_run.info.run_id, "plots")
    ]
    if verdict in ("helps", "little"):
        assert "curve_val_loss_2x" in curve_run.data.metrics

    (folder,) = [p for p in results.iterdir() if (p / "data_curve.json").exists()]
    saved = json.loads((folder / "data_curve.json").read_text())
    assert len(saved["points"]) == 12 and saved["verdict"] == verdict
    assert (folder / "data_curve.png").read_bytes()[:4] == b"\x89PNG"
