"""What a serving host loads from the registry, with a real MLflow store (SQLite in a temp
folder) and the real server process on loopback: a version that holds only a pickle (whose
payload would create a marker file) or a hostile spec is refused at start-up and on
reload, the payload never runs, and a running server keeps serving the version it has."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import torch

from conftest import Payload, free_port, make_cfg, numeric_spec, wait_until_up
from orchestrator.core import model, modelfile
from orchestrator.serving import serve

pytestmark = pytest.mark.slow

NAME = "guarded"


def _log(store: dict, net: torch.nn.Module, extra: list[Path]) -> str:
    """``net`` logged (pickle format: fast, and what the server must never load) with
    ``extra`` as extra_files, registered, ``champion`` moved to it; the version."""
    import mlflow

    mlflow.set_tracking_uri(store["uri"])
    with mlflow.start_run(experiment_id=store["exp"]):
        info = mlflow.pytorch.log_model(
            net,
            name="model",
            serialization_format="pickle",
            pip_requirements=["torch"],
            extra_files=extra or None,
            metadata={"classes": ["a", "b", "c"], "num_features": 4},
        )
    version = mlflow.register_model(info.model_uri, NAME).version
    mlflow.MlflowClient(store["uri"]).set_registered_model_alias(NAME, "champion", version)
    return str(version)


def _good(store: dict, seed: int) -> str:
    cfg = make_cfg(**{"model.hidden": [8]})
    x = np.random.default_rng(seed).normal(size=(16, 4)).astype(np.float32)
    torch.manual_seed(seed)
    net = model.from_data(cfg, x, num_classes=3)
    with tempfile.TemporaryDirectory() as d:
        weights, spec = modelfile.write_weights(d, numeric_spec(cfg, x, ["a", "b", "c"]), net)
        return _log(store, net, [weights, spec])


def _hostile_spec(store: dict) -> str:
    cfg = make_cfg(**{"model.hidden": [8]})
    x = np.ones((4, 4), dtype=np.float32)
    net = model.from_data(cfg, x, num_classes=3)
    with tempfile.TemporaryDirectory() as d:
        weights, spec = modelfile.write_weights(d, numeric_spec(cfg, x, ["a", "b", "c"]), net)
        doc = json.loads(spec.read_text())
        doc["model"]["hidden"] = [2_000_000_000]
        spec.write_text(json.dumps(doc))
        return _log(store, net, [weights, spec])


def _pickle_only(store: dict) -> str:
    return _log(store, Payload(store["marker"]), [])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import mlflow

    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp}/mlflow.db"
    exp = mlflow.MlflowClient(uri).create_experiment(
        "guarded", artifact_location=str(tmp / "artifacts")
    )
    return {"uri": uri, "exp": exp, "tmp": tmp, "marker": tmp / "payload-ran"}


def _serve(store: dict, port: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"]}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "serve",
            "--model",
            f"models:/{NAME}@champion",
            "--port",
            str(port),
            *extra,
        ],
        env=env,
        cwd=store["tmp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _refused_at_start(store: dict) -> tuple[str, float, int]:
    """(output, seconds, peak RSS in MiB) of a server that must exit at start-up."""
    start = time.perf_counter()
    proc = _serve(store, free_port())
    try:
        # os.wait4: this child's own peak memory
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = proc.stdout.read() if proc.stdout else ""
    assert os.waitstatus_to_exitcode(status) == 3, out
    return out, time.perf_counter() - start, usage.ru_maxrss // 1024


def test_a_pickle_only_version_is_refused_at_start_and_its_payload_never_runs(store: dict) -> None:
    version = _pickle_only(store)
    out, _, _ = _refused_at_start(store)
    assert f"refused model version {version}" in out
    assert (
        "no pickle-free form (missing extra_files/model.json and extra_files/weights.pt)" in out
        and "Register the model again" in out
    )
    assert not store["marker"].exists()


def test_the_payload_is_real(store: dict, tmp_path: Path) -> None:
    # what the server used to do with such a version (mlflow.pytorch.load_model, pickle
    # allowed by MLflow's default), in a throwaway process: the command runs
    marker = tmp_path / "ran"
    model_uri = f"models:/{NAME}/{_log(store, Payload(marker), [])}"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import mlflow.pytorch, sys; mlflow.pytorch.load_model(sys.argv[1])",
            model_uri,
        ],
        env={**os.environ, "MLFLOW_TRACKING_URI": store["uri"]},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert marker.exists()


def test_a_hostile_spec_is_refused_quickly_without_building_it(store: dict) -> None:
    version = _hostile_spec(store)
    out, seconds, peak_mib = _refused_at_start(store)
    assert f"refused model version {version}" in out
    assert "needs 16,000,000,011 float32 values, but weights.pt has only" in out
    assert peak_mib < 1500 and seconds < 60, (peak_mib, seconds)  # start-up is most of it


def test_the_report_refuses_a_pickle_only_champion(store: dict) -> None:
    from mlflow.tracking import MlflowClient

    from orchestrator.analysis import report

    version = _pickle_only(store)
    client = MlflowClient(store["uri"])
    parent = client.create_run(
        store["exp"], tags={"orchestrator.champion_version": version}
    ).info.run_id
    cfg = make_cfg(**{"tracking.uri": store["uri"], "tracking.register_as": NAME})
    html, _ = report.champion_section(SimpleNamespace(cfg=cfg, parent_run_id=parent))  # type: ignore[arg-type]
    assert "Confusion matrix unavailable" in html and "no pickle-free form" in html
    with pytest.raises(serve.Refused, match="no pickle-free form"):
        serve.load(f"models:/{NAME}/{version}", store["uri"])
    assert not store["marker"].exists()


@pytest.fixture()
def running(store: dict) -> Iterator[dict]:
    version = _good(store, 0)
    port = free_port()
    proc = _serve(store, port, "serve.poll_s=0.5")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/ready", proc)
        assert requests.get(f"{base}/ready", timeout=5).json()["version"] == version
        yield {"base": base, "version": version, "proc": proc}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_an_alias_moved_to_a_bad_version_keeps_the_old_one_serving(
    store: dict, running: dict
) -> None:
    base, good = running["base"], running["version"]
    row = {"features": [[0.1, 0.2, 0.3, 0.4]]}
    before = requests.post(f"{base}/predict", json=row, timeout=5).json()
    for register in (_pickle_only, _hostile_spec):
        bad = register(store)
        deadline = time.time() + 30
        while f'orchestrator_model_refused_info{{version="{bad}"' not in (
            text := requests.get(f"{base}/metrics", timeout=5).text
        ):
            assert time.time() < deadline, text
            time.sleep(0.2)
        assert requests.get(f"{base}/ready", timeout=5).json()["version"] == good
        assert requests.post(f"{base}/predict", json=row, timeout=5).json() == before
        r = requests.post(f"{base}/reload", timeout=30)
        assert r.status_code == 409 and r.json()["refused"]["version"] == bad
    assert "orchestrator_model_refusals_total 2" in text
    assert running["proc"].poll() is None and not store["marker"].exists()
    newer = _good(store, 1)  # and a good version after them is taken
    deadline = time.time() + 30
    while requests.get(f"{base}/ready", timeout=5).json()["version"] != newer:
        assert time.time() < deadline
        time.sleep(0.2)
