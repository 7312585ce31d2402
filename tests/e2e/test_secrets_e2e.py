"""Secrets end to end: a sweep against a basic-auth `mlflow server` (started with
`orchestrator tracking serve ... -- --app-name basic-auth`) with the password in
``tracking.uri`` and a ``serve.api_key``; its driver is killed, and `orchestrator resume`
continues it with the credentials from the environment. Then the secrets are looked for
everywhere the run wrote: the server's SQLite store and artifacts folder, the sweep folder,
the Ray session that the driver started, the server's command line and both drivers' output.
They are nowhere. Real MLflow server, real local Ray."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from conftest import CLUSTER_SECRETS, ROOT, files_holding

pytestmark = pytest.mark.slow
# fresh each session (MLflow wants >= 12 characters); test_cluster.py's nodes hold the same
PASSWORD = CLUSTER_SECRETS["MLFLOW_TRACKING_PASSWORD"]
API_KEY = CLUSTER_SECRETS["ORCHESTRATOR_API_KEY"]


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """RAY_TMPDIR for the drivers: their Ray session in a folder of its own (short: Ray's
    socket paths), deleted after."""
    path = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_sweep_on_a_basic_auth_server_resumes_from_the_environment_and_leaks_nothing(
    basic_auth_server: dict, digits_path: Path, ray_tmp: Path
) -> None:
    from mlflow.tracking import MlflowClient

    tmp, port = basic_auth_server["tmp"], basic_auth_server["port"]
    server = psutil.Process(basic_auth_server["proc"].pid)
    # the backend store is not on any command line of the server (it came in the environment)
    for p in [server, *server.children(recursive=True)]:
        assert "server.db" not in " ".join(p.cmdline()), p.cmdline()
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(api, timeout=10).status_code == 401  # basic auth is on

    base = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
            "ORCHESTRATOR_API_KEY",
            "MLFLOW_TRACKING_URI",
        )
    }
    env = {
        **base,
        "RAY_ADDRESS": "local",
        "RAY_TMPDIR": str(ray_tmp),
        "TUNE_GLOBAL_CHECKPOINT_S": "1",
        "PYTHONUNBUFFERED": "1",
    }
    uri = f"http://admin:{PASSWORD}@127.0.0.1:{port}"
    # the secrets in a config file (the way to keep them off command lines: ps, Ray's
    # dashboard shows a driver's command line)
    cfg = tmp / "secret.yaml"
    cfg.write_text(
        (ROOT / "jobs/configs/quickstart.yaml").read_text() + f"\nserve:\n  api_key: {API_KEY}\n"
    )
    cfg.write_text(cfg.read_text().replace("tracking:\n", f"tracking:\n  uri: {uri}\n"))
    results = tmp / "results"
    args = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "sweep",
        str(cfg),
        f"data.path={digits_path}",
        f"sweep.storage_path={results}",
        "experiment=secret",
        "tracking.register_as=secret-digits",
        "scaling.num_workers=1",
        "scaling.cpus_per_worker=1",
        "model.hidden=[32]",
        "sweep.num_samples=3",
        "train.epochs=4",
        "sweep.scheduler=fifo",
        "sweep.refit=false",
    ]
    out: list[str] = []
    driver = subprocess.Popen(
        args, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert driver.stdout is not None
        deadline = time.time() + 300
        for line in driver.stdout:  # one trial finished: the sweep is under way
            out.append(line)
            if "trials done 1/" in line:
                break
            assert time.time() < deadline, "".join(out)
        started = psutil.Process(driver.pid).children(recursive=True)
        time.sleep(1.5)  # Tune saves its state every second
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
        for p in locals().get("started", []):  # the Ray it started, if not gone with it
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    first = "".join(out)
    assert "MLflow http://127.0.0.1" in first, first  # shown bare: its credentials are in env

    resume = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "resume",
        "secret",
        "--storage",
        str(results),
    ]
    refused = subprocess.run(resume, cwd=tmp, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "tracking.uri" in refused.stderr and "MLFLOW_TRACKING_USERNAME" in refused.stderr
    creds = {
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": PASSWORD,
        "ORCHESTRATOR_API_KEY": API_KEY,
    }
    done = subprocess.run(
        resume, cwd=tmp, env={**env, **creds}, capture_output=True, text=True, timeout=600
    )
    print(first[-3000:], done.stdout[-3000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "restored" in done.stdout and "trials done 3/3" in done.stdout
    # the hints: the server without credentials, and where MLflow's client finds them
    assert f"open http://127.0.0.1:{port} " in done.stdout
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD exported" in done.stdout

    os.environ.update(creds)  # MLflow's client reads them (restored after the test)
    try:
        client = MlflowClient(f"http://127.0.0.1:{port}")
        exp = client.get_experiment_by_name("secret")
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
        assert {r.data.params["serve.api_key"] for r in runs} == {"***"}
        assert {r.data.params["tracking.uri"] for r in runs} == {f"http://***@127.0.0.1:{port}"}
        assert client.get_model_version_by_alias("secret-digits", "champion").version
    finally:
        for k in creds:
            os.environ.pop(k, None)

    sessions = list((ray_tmp / "ray").glob("session_*/logs/*"))
    assert len(sessions) > 5  # Ray's logs are really there
    everywhere = [tmp / "server.db", tmp / "artifacts", results, ray_tmp]
    assert any((tmp / "artifacts").rglob("config.yaml"))
    for root in everywhere:
        found = (
            files_holding(root, PASSWORD, API_KEY)
            if root.is_dir()
            else [str(root) for n in (PASSWORD, API_KEY) if n.encode() in root.read_bytes()]
        )
        assert not found, found
    printed = first + done.stdout + done.stderr + refused.stdout + refused.stderr
    assert PASSWORD not in printed and API_KEY not in printed
    assert not re.search(r"admin:[^@\s]*@", printed)
