"""A real multi-node Ray cluster on loopback (`orchestrator cluster up --workers 2`: a head
and two worker nodes, each its own `ray start`, token auth on) and jobs against it: the
quickstart sweep through `orchestrator submit` and through Ray's own `ray job submit`; a
2-worker DDP trial on two different nodes; a DDP sweep that loses each worker node in turn
(a replacement joins after each) and finishes every trial with every epoch once; storage a
node cannot write refused before the job; a config error and a wrong token fail the job.
The module starts the cluster itself and stops only the processes it started."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import CLUSTER_SECRETS, ROOT, files_holding, running
from orchestrator.launch import cluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
BIN = Path(sys.executable).parent


@pytest.fixture
def up(local_cluster: dict) -> dict:
    return local_cluster


def _submit(
    up: dict,
    tmp: Path,
    digits: Path,
    *args: str,
    wait: bool = True,
) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    state = up["state"]
    argv = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "submit",
        "jobs/configs/quickstart.yaml",
        "--address",
        state.address,
        f"data.path={digits}",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        f"sweep.storage_path={tmp}/results",
        *args,
    ]
    env = cluster.env(state)
    env.pop("RAY_ADDRESS", None)
    if wait:
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _get(up: dict, path: str) -> dict:
    state = up["state"]
    token = Path(state.token_path).read_text().strip()
    r = requests.get(
        f"{state.address}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    r.raise_for_status()
    return r.json()["data"]["result"]


def test_status_shows_a_head_and_two_worker_nodes_with_token_auth_on(up: dict) -> None:
    state = up["state"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "cluster",
            "status",
            "--state-dir",
            str(up["state_dir"]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert out.count(" ALIVE ") == 3 and out.count("worker ") == 2, out
    assert "127.0.0.1" in out
    # the dashboard is on loopback and wants the token
    assert requests.get(f"{state.address}/api/v0/nodes", timeout=10).status_code == 401


def test_submit_runs_the_quickstart_sweep_on_the_cluster(
    up: dict, digits_path: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    done = _submit(
        up,
        tmp_path,
        digits_path,
        "sweep.num_samples=2",
        "train.epochs=2",
        "experiment=cluster-sweep",
    )
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "preflight: 3 alive node(s)" in done.stdout and "SUCCEEDED" in done.stdout
    # the storage probe, from each node
    assert "preflight: 3 node(s) can write" in done.stdout, done.stdout[:3000]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("cluster-sweep")
    roles = [r.data.tags.get("orchestrator.role") for r in client.search_runs([exp.experiment_id])]
    assert roles.count("trial") == 2 and roles.count("sweep") == 1


def test_submit_sends_no_secret_and_the_job_finds_them_on_the_cluster(
    up: dict, basic_auth_server: dict, digits_path: Path, tmp_path: Path
) -> None:
    """A password in tracking.uri (a basic-auth MLflow server) and a serve.api_key given to
    `orchestrator submit`: the job authenticates with the nodes' own credentials, and neither
    secret is in `ray job list/status/logs`, in what submit printed, or in any node's session
    folder (logs, the job's uploaded working directory) or the cluster's state folder."""
    from mlflow.tracking import MlflowClient

    password, key = (
        CLUSTER_SECRETS["MLFLOW_TRACKING_PASSWORD"],
        CLUSTER_SECRETS["ORCHESTRATOR_API_KEY"],
    )
    uri = f"http://127.0.0.1:{basic_auth_server['port']}"
    done = _submit(
        up,
        tmp_path,
        digits_path,
        "sweep.num_samples=1",
        "train.epochs=1",
        "sweep.refit=false",
        "experiment=cluster-secret",
        f"tracking.uri=http://admin:{password}@127.0.0.1:{basic_auth_server['port']}",
        f"serve.api_key={key}",
    )
    assert isinstance(done, subprocess.CompletedProcess)
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-4000:]
    assert "ORCHESTRATOR_API_KEY in the cluster's environment" in done.stdout
    assert "tracking.uri=http://***@127.0.0.1" in done.stdout
    job = re.search(r"submitted (\S+):", done.stdout)
    assert job is not None
    env = {**cluster.env(up["state"])}
    env.pop("RAY_ADDRESS", None)
    address = up["state"].address
    for cmd in (["list"], ["status", job[1]], ["logs", job[1]]):
        ray = subprocess.run(
            [str(BIN / "ray"), "job", *cmd, "--address", address],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ray.returncode == 0, ray.stderr
        printed += ray.stdout + ray.stderr
    assert "trials done 1/1" in printed  # the logs are really there
    assert password not in printed and key not in printed
    temp = Path(up["state"].temp_dir)
    roots = [p for p in temp.parent.glob(f"{temp.name}*") if p.is_dir()] + [up["state_dir"]]
    assert len(roots) >= 4 and any(temp.glob("session_*/logs/job-driver-*"))
    found = [hit for root in roots for hit in files_holding(root, password, key)]
    assert not found, found
    os.environ.update(CLUSTER_SECRETS)  # MLflow's client reads them
    try:
        runs = MlflowClient(uri).search_runs(
            [MlflowClient(uri).get_experiment_by_name("cluster-secret").experiment_id]
        )
    finally:
        for k in CLUSTER_SECRETS:
            os.environ.pop(k, None)
    assert {r.data.params["serve.api_key"] for r in runs} == {"***"} and len(runs) == 2


def test_storage_a_node_cannot_write_is_refused_before_the_job_starts(
    up: dict, digits_path: Path, tmp_path: Path
) -> None:
    done = _submit(up, tmp_path, digits_path, "sweep.storage_path=/proc/orchestrator-results")
    assert isinstance(done, subprocess.CompletedProcess)
    printed = done.stdout + done.stderr
    assert done.returncode == 2, printed[-4000:]
    assert "sweep.storage_path" in printed and "cannot be written from every node" in printed
    assert "head " in printed and "worker " in printed  # each node answered for itself
    assert "submitted" not in done.stdout  # the sweep's job never started


def test_a_two_worker_ddp_trial_runs_on_two_nodes(
    up: dict, digits_path: Path, tmp_path: Path
) -> None:
    done = _submit(
        up,
        tmp_path,
        digits_path,
        "--train",
        "scaling.num_workers=2",
        "scaling.placement_strategy=STRICT_SPREAD",
        "train.epochs=2",
        "experiment=cluster-spread",
    )
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    workers = [
        a
        for a in _get(up, "/api/v0/actors?detail=1&limit=10000")["result"]
        if a.get("class_name") == "RayTrainWorker"
    ]
    assert len({a["node_id"] for a in workers}) == 2, workers


def test_a_ddp_sweep_survives_losing_each_worker_node_in_turn(
    up: dict, digits_path: Path, tmp_path: Path
) -> None:
    """Each original worker node is stopped in turn, once during each trial, and a
    replacement joins after each. The trials' steering actors sit on the head (the
    orchestrator_head resource), so no search retry is allowed (sweep.max_failures=0): the
    worker groups restart from their last checkpoints, and MLflow ends with every trial and
    every epoch exactly once."""
    from mlflow.tracking import MlflowClient

    epochs, trials = 8, 2
    state, results = up["state"], tmp_path / "results"
    job = _submit(
        up,
        tmp_path,
        digits_path,
        "scaling.num_workers=2",
        "scaling.placement_strategy=STRICT_SPREAD",
        "scaling.max_failures=3",
        "sweep.max_failures=0",
        f"sweep.num_samples={trials}",
        "sweep.scheduler=fifo",
        "sweep.refit=false",
        f"train.epochs={epochs}",
        "model.hidden=[1024,1024]",
        "experiment=cluster-loss",
        wait=False,
    )
    assert isinstance(job, subprocess.Popen)
    originals = [p for p in state.workers if running(p)]
    assert len(originals) == 2
    try:
        deadline = time.time() + 600
        for index, lost in enumerate(originals):  # the first during trial 0, then trial 1
            while not any(results.glob(f"*_0000{index}/checkpoint_*")):
                assert job.poll() is None, job.stdout.read() if job.stdout else ""
                assert time.time() < deadline, f"no checkpoint of trial {index} appeared"
                time.sleep(0.5)
            cluster.stop_worker(state, lost)  # the node goes away with its worker
            assert not running(lost)
            time.sleep(3)
            cluster.add_worker(state, up["state_dir"])  # a replacement joins
        out, _ = job.communicate(timeout=900)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, out[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("cluster-loss")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("orchestrator.role") == "trial"]
    assert len(children) == trials and len(runs) == trials + 1
    for run in children:  # resumed, not restarted: each epoch logged exactly once
        assert run.info.status == "FINISHED", run.data.tags.get("orchestrator.error")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert sorted(steps) == list(range(1, epochs + 1)), steps


# ---------------------------------------------------------------- Ray's own `ray job submit`


@pytest.fixture
def head(local_cluster: dict) -> dict[str, str]:
    """The shared multi-node cluster (conftest): `ray job submit` goes to its head."""
    from orchestrator.launch import cluster

    state = local_cluster["state"]
    env = cluster.env(state)
    return {
        "address": state.address,
        **{k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "PATH")},
    }


def _ray_job_submit(
    head: dict[str, str],
    args: list[str],
    env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **{k: v for k, v in head.items() if k != "address"}, **(env_extra or {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            head["address"],
            "--working-dir",
            str(ROOT),
            "--",
            "python",
            "-m",
            "jobs.sweep",
            "jobs/configs/quickstart.yaml",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_ray_job_submit_runs_the_quickstart_sweep(
    head: dict[str, str], digits_path: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = _ray_job_submit(
        head,
        [
            f"data.path={digits_path}",
            f"tracking.uri={uri}",
            f"sweep.storage_path={tmp_path}/results",
            "experiment=job",
            "tracking.register_as=job-digits",
            "sweep.num_samples=2",
            "train.epochs=3",
            "sweep.grace_period=1",
            "sweep.refit=false",  # the cluster's refit is the submit test's: not twice
        ],
    )
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "trials done 2/2" in proc.stdout and "succeeded" in proc.stdout
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("job").experiment_id])
    assert sorted(r.data.tags["orchestrator.role"] for r in runs) == ["sweep", "trial", "trial"]
    assert str(client.get_model_version_by_alias("job-digits", "champion").version) == "1"


def test_a_config_error_fails_the_job(head: dict[str, str], tmp_path: Path) -> None:
    proc = _ray_job_submit(head, [f"data.path={tmp_path}/missing.parquet"])
    assert proc.returncode != 0
    assert "'data.path'" in proc.stdout + proc.stderr


def test_a_client_without_the_token_is_refused(head: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "no-token"
    empty.write_text("wrong-token")
    proc = _ray_job_submit(
        head, ["sweep.num_samples=1"], env_extra={"RAY_AUTH_TOKEN_PATH": str(empty)}
    )
    assert proc.returncode != 0
    text = (proc.stdout + proc.stderr).lower()
    assert "token" in text or "unauthorized" in text or "401" in text
