"""Big-data path with the real Ray Data: the Parquet streams through
`get_dataset_shard(...).iter_torch_batches` into 2 DDP workers, or whole into a single-worker
trial on the fast path; the champion's test split streams too. (Digits, and penguins with
text categories and missing values, forced onto the stream path with data.loader=stream.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


# DDP shards of digits; the fast path's whole datasets, of a table with text categories and
# missing values encoded batch by batch in Ray Data's tasks
@pytest.mark.parametrize(("workers", "table"), [(2, "digits"), (1, "penguins")])
def test_streamed_sweep_trains_registers_and_scores_the_champion(
    digits_path: Path, tmp_path: Path, workers: int, table: str
) -> None:
    from mlflow.tracking import MlflowClient

    from orchestrator.core import data

    path = digits_path if table == "digits" else data.export(table, tmp_path / "p.parquet")
    epochs = 4 if table == "digits" else 12
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "sweep",
            str(ROOT / "jobs/configs/quickstart.yaml"),
            f"data.path={path}",
            "data.loader=stream",
            "data.missing=impute",
            f"tracking.uri={uri}",
            f"sweep.storage_path={tmp_path}/r",
            "experiment=stream",
            "tracking.register_as=stream-digits",
            "sweep.num_samples=2",
            f"train.epochs={epochs}",
            f"sweep.grace_period={epochs}",
            f"scaling.num_workers={workers}",
        ],
        cwd=tmp_path,
        env={**os.environ, "RAY_ADDRESS": "local"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(stream)" in proc.stdout and "trials done 2/2" in proc.stdout
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("stream").experiment_id])
    trials = [r for r in runs if r.data.tags["orchestrator.role"] == "trial"]
    assert len(trials) == 2
    for t in trials:
        steps = [m.step for m in client.get_metric_history(t.info.run_id, "val_accuracy")]
        assert steps == list(range(1, epochs + 1))
        assert t.data.metrics["val_accuracy"] > 0.85
    parent = next(r for r in runs if r.data.tags["orchestrator.role"] == "sweep")
    assert parent.data.metrics["test_accuracy"] > 0.85
    assert str(client.get_model_version_by_alias("stream-digits", "champion").version) == "1"
