"""The Python API drives a regression sweep end to end (a real local Ray, a real MLflow
store): scikit-learn's diabetes, standardized targets, RMSE/MAE/R² in the target's units,
the champion registered and loaded back pickle-free with its answers in those units."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys
import orchestrator
result = orchestrator.sweep(
    sys.argv[1],
    {
        "data.path": sys.argv[2],
        "tracking.uri": sys.argv[3],
        "sweep.storage_path": sys.argv[4],
        "sweep.num_samples": 3,
        "train.epochs": 30,
        "sweep.grace_period": 10,
        "tracking.register_as": "e2e-diabetes",
    },
    out=lambda line: print(line, file=sys.stderr),
)
print(json.dumps({
    "trials": len(result.records),
    "values": result.champion_values,
    "test": result.test_metrics,
    "model_uri": result.model_uri,
    "best": result.champion.best,
}))
"""


def test_a_regression_sweep_through_the_python_api(tmp_path: Path) -> None:
    from orchestrator.core import data

    table = data.export("diabetes", tmp_path / "diabetes.parquet")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(ROOT / "jobs/configs/diabetes.yaml"),
            str(table),
            uri,
            str(tmp_path / "results"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "RAY_ADDRESS": "local"},
        timeout=900,
    )
    print(proc.stderr[-5000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "task regression (1 target)" in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["trials"] == 3 and result["model_uri"] == "models:/e2e-diabetes/1"
    test = result["test"]
    assert set(test) >= {"test_loss", "test_rmse", "test_mae", "test_r2"}
    # in the target's units (disease progression spans 25 to 346), not z-scores
    assert 30 < test["test_rmse"] < 90 and test["test_mae"] < test["test_rmse"]
    assert test["test_r2"] > 0.2
    assert "val_r2" in result["best"] and "val_accuracy" not in result["best"]

    import mlflow
    import pyarrow.parquet as pq
    import torch

    from orchestrator.core import features, model
    from orchestrator.tracking import registry

    mlflow.set_tracking_uri(uri)
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("diabetes")
    trials = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("orchestrator.role") == "trial"
    ]
    assert len(trials) == 3
    for t in trials:  # each epoch's regression metrics, in MLflow
        history = client.get_metric_history(t.info.run_id, "val_r2")
        assert len(history) >= 10 and {"val_rmse", "train_mae"} <= set(t.data.metrics)
    net, spec, version, _ = registry.load(result["model_uri"], 1 << 30)
    assert version == "1" and spec.task.kind == "regression"
    rows = pq.read_table(table)
    x = features.encode(spec.encoding, rows.select(spec.encoding.names))
    with torch.no_grad():
        pred = model.Outputs(net, spec.task)(torch.from_numpy(x)).numpy()[:, 0]
    y = rows.column("label").to_numpy()
    assert abs(pred.mean() - y.mean()) < 20 and np.corrcoef(pred, y)[0, 1] > 0.5
