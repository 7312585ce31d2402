"""A real multi-node Ray cluster on loopback (`orchestrator cluster up --workers 2`: a head
and two worker nodes, each its own `ray start`, token auth on) and `orchestrator submit`
against it: the quickstart sweep succeeds; a 2-worker DDP trial runs on two different nodes;
a worker node lost mid-training is survived from the last checkpoint once a node is back.
The test starts the cluster itself and stops only the processes it started."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conftest import ROOT
from orchestrator import cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    state_dir = tmp_path_factory.mktemp("cluster") / ".ray-local"
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "cluster", "up", "--workers", "2",
         "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = cluster.load(state_dir)
    assert state is not None
    try:
        yield {"state": state, "state_dir": state_dir, "up": proc.stdout}
    finally:
        down = subprocess.run([sys.executable, "-m", "orchestrator.cli", "cluster", "down",
                               "--state-dir", str(state_dir)], capture_output=True, text=True,
                              timeout=300)
        assert down.returncode == 0, down.stderr
        # only what it started is gone, and all of it
        for pid in [state.head_pid, *state.workers]:
            assert not _running(pid), pid


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone but for its exit status
        return f.read().split()[2] != "Z"


def _submit(up: dict, tmp: Path, digits: Path, *args: str, wait: bool = True,
            ) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    state = up["state"]
    argv = [sys.executable, "-m", "orchestrator.cli", "submit", "jobs/configs/quickstart.yaml",
            "--address", state.address, f"data.path={digits}",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"sweep.storage_path={tmp}/results",
            *args]
    env = cluster.env(state)
    env.pop("RAY_ADDRESS", None)
    if wait:
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=900)
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _get(up: dict, path: str) -> dict:
    state = up["state"]
    token = Path(state.token_path).read_text().strip()
    r = requests.get(f"{state.address}{path}", headers={"Authorization": f"Bearer {token}"},
                     timeout=30)
    r.raise_for_status()
    return r.json()["data"]["result"]


def test_status_shows_a_head_and_two_worker_nodes_with_token_auth_on(up: dict) -> None:
    state = up["state"]
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "cluster", "status",
                          "--state-dir", str(up["state_dir"])], capture_output=True, text=True,
                         timeout=60).stdout
    assert out.count(" ALIVE ") == 3 and out.count("worker ") == 2, out
    assert "127.0.0.1" in out
    # the dashboard is on loopback and wants the token
    assert requests.get(f"{state.address}/api/v0/nodes", timeout=10).status_code == 401


def test_submit_runs_the_quickstart_sweep_on_the_cluster(up: dict, digits_path: Path,
                                                         tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    done = _submit(up, tmp_path, digits_path, "sweep.num_samples=2", "train.epochs=2",
                   "experiment=cluster-sweep")
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "preflight: 3 alive node(s)" in done.stdout and "SUCCEEDED" in done.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("cluster-sweep")
    roles = [r.data.tags.get("orchestrator.role") for r in client.search_runs([exp.experiment_id])]
    assert roles.count("trial") == 2 and roles.count("sweep") == 1


def test_a_two_worker_ddp_trial_runs_on_two_nodes(up: dict, digits_path: Path,
                                                  tmp_path: Path) -> None:
    done = _submit(up, tmp_path, digits_path, "--train", "scaling.num_workers=2",
                   "scaling.placement_strategy=STRICT_SPREAD", "train.epochs=2",
                   "experiment=cluster-spread")
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    workers = [a for a in _get(up, "/api/v0/actors?detail=1&limit=10000")["result"]
               if a.get("class_name") == "RayTrainWorker"]
    assert len({a["node_id"] for a in workers}) == 2, workers


def test_a_worker_node_lost_mid_training_resumes_from_the_last_checkpoint(
        up: dict, digits_path: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    epochs = 12
    state, results = up["state"], tmp_path / "results"
    job = _submit(up, tmp_path, digits_path, "--train", "scaling.num_workers=2",
                  "scaling.placement_strategy=STRICT_SPREAD", "scaling.max_failures=3",
                  f"train.epochs={epochs}", "model.hidden=[1024,1024]",
                  "experiment=cluster-loss", wait=False)
    assert isinstance(job, subprocess.Popen)
    try:
        deadline = time.time() + 400
        while not any(results.glob("*/checkpoint_*")):
            assert job.poll() is None, job.stdout.read() if job.stdout else ""
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.5)
        lost = state.workers[-1]
        cluster.stop_worker(state, lost)  # the node goes away with its worker
        assert not _running(lost)
        time.sleep(5)
        cluster.add_worker(state, up["state_dir"])  # capacity comes back
        out, _ = job.communicate(timeout=900)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, out[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("cluster-loss")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    # resumed, not restarted: each epoch logged exactly once
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss")]
    assert sorted(steps) == list(range(1, epochs + 1)), steps
