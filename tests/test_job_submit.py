"""`ray job submit` of the quickstart sweep against a real `ray start --head` on loopback,
token auth on. The test starts the head itself and stops only that process (by pid)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conftest import ROOT, free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head() -> Iterator[dict[str, str]]:
    # Ray's socket paths must stay short: a temp dir of our own, directly under /tmp.
    temp_dir = tempfile.mkdtemp(prefix="rayt-", dir="/tmp")
    token = Path(temp_dir) / "auth_token"
    token.write_text("orchestrator-test-" + os.urandom(16).hex())
    dash = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           # the job's `python` must be this virtual environment's
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while True:
        try:
            requests.get(f"{address}/api/version", timeout=2)
            break
        except requests.ConnectionError:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.time() < deadline, "ray head did not come up"
            time.sleep(1)
    try:
        yield {"address": address, **{k: env[k] for k in ("RAY_AUTH_MODE",
                                                           "RAY_AUTH_TOKEN_PATH", "PATH")}}
    finally:
        # `ray start --block` stops the processes it started when it is signalled.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(head: dict[str, str], args: list[str], env_extra: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **{k: v for k, v in head.items() if k != "address"},
           **(env_extra or {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", head["address"], "--working-dir",
         str(ROOT), "--", "python", "-m", "jobs.sweep", "jobs/configs/quickstart.yaml", *args],
        env=env, capture_output=True, text=True, timeout=900)


def test_ray_job_submit_runs_the_quickstart_sweep(head: dict[str, str], digits_path: Path,
                                                   tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = _submit(head, [f"data.path={digits_path}", f"tracking.uri={uri}",
                          f"sweep.storage_path={tmp_path}/results", "experiment=job",
                          "tracking.register_as=job-digits", "sweep.num_samples=2",
                          "train.epochs=3", "sweep.grace_period=1"])
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "trials done 2/2" in proc.stdout and "succeeded" in proc.stdout
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("job").experiment_id])
    assert sorted(r.data.tags["orchestrator.role"] for r in runs) == ["sweep", "trial", "trial"]
    assert str(client.get_model_version_by_alias("job-digits", "champion").version) == "1"


def test_a_config_error_fails_the_job(head: dict[str, str], tmp_path: Path) -> None:
    proc = _submit(head, [f"data.path={tmp_path}/missing.parquet"])
    assert proc.returncode != 0
    assert "'data.path'" in proc.stdout + proc.stderr


def test_a_client_without_the_token_is_refused(head: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "no-token"
    empty.write_text("wrong-token")
    proc = _submit(head, ["sweep.num_samples=1"],
                   env_extra={"RAY_AUTH_TOKEN_PATH": str(empty)})
    assert proc.returncode != 0
    text = (proc.stdout + proc.stderr).lower()
    assert "token" in text or "unauthorized" in text or "401" in text
