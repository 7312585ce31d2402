"""A DDP worker killed mid-training: Ray Train restarts the group from the last checkpoint
(`scaling.max_failures`) and MLflow ends with every epoch exactly once. Real local Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
EPOCHS = 14


def _workers() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "RayTrainWorker" in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_killed_worker_restarts_from_checkpoint_and_logs_each_epoch_once(
    digits_path: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    results = tmp_path / "results"
    env = {**os.environ, "RAY_ADDRESS": "local"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "train",
            str(ROOT / "jobs/configs/quickstart.yaml"),
            f"data.path={digits_path}",
            f"tracking.uri={uri}",
            f"sweep.storage_path={results}",
            "experiment=faults",
            "scaling.num_workers=2",
            "scaling.max_failures=2",
            f"train.epochs={EPOCHS}",
            "model.hidden=[1024,1024]",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed = None
    try:
        deadline = time.time() + 300
        while killed is None:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.time() < deadline, "no checkpoint appeared"
            if any(results.glob("*/checkpoint_*")) and (workers := _workers()):
                killed = workers[-1].pid
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(out[-4000:])
    assert proc.returncode == 0, out[-3000:]
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == "zombie"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("faults").experiment_id])
    assert [r.data.tags["orchestrator.role"] for r in runs] == ["train"]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, key)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, steps)
