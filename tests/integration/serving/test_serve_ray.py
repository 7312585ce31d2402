"""`orchestrator serve --ray --replicas 2`: the model server as a Ray Serve deployment on a
real local Ray, the model from a real MLflow SQLite store, requests over loopback HTTP."""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from conftest import Payload, files_holding, free_port, make_cfg, numeric_spec
from orchestrator.core import model
from orchestrator.serving import serve
from orchestrator.tracking import champions

pytestmark = pytest.mark.slow

NAME = "ray-served"
# the server runs with an API key: the replicas check it without ever holding it
API_KEY = secrets.token_urlsafe(24)
HTTP = requests.Session()
HTTP.headers["X-API-Key"] = API_KEY


def _register(uri: str, seed: int) -> str:
    """A small trained-shape model registered as NAME@champion; its version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    cfg = make_cfg(**{"model.hidden": [16], "tracking.register_as": NAME, "tracking.uri": uri})
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ray-serve") or client.get_experiment(
        client.create_experiment("ray-serve")
    )
    x = np.random.default_rng(seed).normal(size=(32, 6)).astype(np.float32)
    torch.manual_seed(seed)
    net = model.from_data(cfg, x, num_classes=3)
    parent = client.create_run(exp.experiment_id).info.run_id
    trial = client.create_run(exp.experiment_id).info.run_id
    return champions.register_champion(
        cfg, parent, net, x, numeric_spec(cfg, x, ["a", "b", "c"]), {"test_accuracy": 0.5}, trial
    )


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("ray-serve")
    uri = f"sqlite:///{tmp}/mlflow.db"
    assert _register(uri, 0) == "1"
    port = free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # short: Ray's socket paths
    env = {
        **os.environ,
        "RAY_ADDRESS": "local",
        "MLFLOW_TRACKING_URI": uri,
        "ORCHESTRATOR_API_KEY": API_KEY,
        "RAY_TMPDIR": str(ray_tmp),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "serve",
            "--ray",
            "--replicas",
            "2",
            "--model",
            f"models:/{NAME}@champion",
            "--port",
            str(port),
            "--tracking-uri",
            uri,
            # two replicas on a 2-core machine, with room for Serve's proxy and controller
            "serve.replica_cpus=0.5",
            "serve.poll_s=1",
        ],
        env=env,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                if HTTP.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.time() < deadline, "Ray Serve did not come up in 240 s"
            time.sleep(0.5)
        yield {"base": base, "uri": uri, "proc": proc, "tmp": tmp, "ray_tmp": ray_tmp}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)


def _pids(base: str, n: int = 40) -> dict[int, str]:
    """pid -> model version, over ``n`` /metadata calls (Serve spreads them on replicas)."""
    seen = {}
    for _ in range(n):
        meta = HTTP.get(f"{base}/metadata", timeout=10).json()
        seen[meta["server"]["pid"]] = meta["version"]
    return seen


def test_two_replicas_answer_the_same_predictions(deployed: dict) -> None:
    base = deployed["base"]
    # two processes behind one address (the proxy may learn of the second a little later)
    deadline = time.time() + 60
    while len(_pids(base)) < 2:
        assert time.time() < deadline, "only one replica answers"
        time.sleep(1)
    served = serve.load(f"models:/{NAME}/1", deployed["uri"])
    x = np.random.default_rng(5).normal(size=(64, 6)).astype(np.float32)
    with torch.no_grad():
        expected = served.net(torch.from_numpy(x)).numpy()

    def one(i: int) -> list[float]:
        r = requests.post(
            f"{base}/predict",
            json={"features": x[i : i + 1].tolist()},
            timeout=30,
            headers=HTTP.headers,
        )
        assert r.status_code == 200, r.text
        return r.json()["probabilities"][0]

    # concurrent single-row requests: Ray Serve batches them per replica
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = np.array(list(pool.map(one, range(len(x)))))
    assert np.allclose(got, expected, atol=1e-5)
    whole = HTTP.post(f"{base}/predict", json={"features": x.tolist()}, timeout=30).json()
    assert whole["predictions"] == [served.classes[i] for i in expected.argmax(1)]


def test_bad_input_is_refused_by_the_same_rules(deployed: dict) -> None:
    base = deployed["base"]
    r = HTTP.post(f"{base}/predict", json={"features": [[1, 2, 3]]}, timeout=30)
    assert r.status_code == 422 and "features[0]: 3 values, the model takes 6" in r.text
    r = HTTP.post(f"{base}/predict", json={"features": [[1, 2, 3, 4, 5, "x"]]}, timeout=30)
    assert r.status_code == 422 and "features[0][5]" in r.text
    assert HTTP.get(f"{base}/health", timeout=10).status_code == 200
    assert "orchestrator_requests_total" in HTTP.get(f"{base}/metrics", timeout=10).text


def test_the_api_key_guards_every_replica_which_never_holds_the_key(deployed: dict) -> None:
    base = deployed["base"]
    for _ in range(8):  # spread over both replicas
        r = requests.post(f"{base}/predict", json={"features": [[0.0] * 6]}, timeout=30)
        assert r.status_code == 401, r.text
        assert requests.get(f"{base}/metadata", timeout=10).status_code == 401
    assert requests.get(f"{base}/health", timeout=10).status_code == 200
    r = requests.post(
        f"{base}/predict",
        json={"features": [[0.0] * 6]},
        timeout=30,
        headers={"Authorization": f"bearer {API_KEY}"},
    )
    assert r.status_code == 200, r.text
    # the deployment's arguments (kept by Ray, shown by its dashboard) carry a digest only:
    # the key is in none of the session's files (logs, GCS, pickled arguments)
    sessions = list(deployed["ray_tmp"].glob("ray/session_*"))
    assert sessions and any(sessions[0].glob("logs/*")), sessions
    assert files_holding(deployed["ray_tmp"], API_KEY) == []


def test_every_replica_moves_to_the_new_champion(deployed: dict) -> None:
    base = deployed["base"]
    assert _register(deployed["uri"], 1) == "2"  # the alias moves
    deadline = time.time() + 120
    while set(_pids(base, 20).values()) != {"2"} or len(_pids(base, 20)) < 2:
        assert deployed["proc"].poll() is None
        assert time.time() < deadline, _pids(base, 20)
        time.sleep(1)
    r = HTTP.post(f"{base}/predict", json={"features": [[0.0] * 6]}, timeout=30)
    assert r.status_code == 200


def test_it_stops_on_sigterm_and_frees_the_port(deployed: dict) -> None:
    proc = deployed["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{deployed['base']}/health", timeout=5)


def test_zero_replicas_or_more_than_fit_are_refused_before_deploying(tmp_path: Path) -> None:
    for replicas in ("0", "64"):  # 64 x 1 CPU on a 2-core machine
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "serve",
                "--ray",
                "--replicas",
                replicas,
                "--model",
                f"models:/{NAME}@champion",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
            env={**os.environ, "RAY_ADDRESS": "local"},
        )
        assert proc.returncode != 0 and "serve.replicas" in proc.stdout + proc.stderr, replicas


def test_a_version_without_the_pickle_free_form_is_refused_before_deploying(deployed: dict) -> None:
    import mlflow

    marker = deployed["tmp"] / "payload-ran"
    mlflow.set_tracking_uri(deployed["uri"])
    with mlflow.start_run(
        experiment_id=mlflow.MlflowClient().get_experiment_by_name("ray-serve").experiment_id
    ):
        info = mlflow.pytorch.log_model(
            Payload(marker), name="model", pip_requirements=["torch"], serialization_format="pickle"
        )
    mlflow.register_model(info.model_uri, "pickled")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "serve",
            "--ray",
            "--replicas",
            "1",
            "--model",
            "models:/pickled/1",
            "--tracking-uri",
            deployed["uri"],
            "serve.replica_cpus=0.5",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=deployed["tmp"],
        env={**os.environ, "RAY_ADDRESS": "local"},
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "no pickle-free form" in proc.stderr and not marker.exists()
