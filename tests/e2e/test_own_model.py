"""A user's own model on a real table, end to end through the real CLI: the example factory
(jobs/factories.py) as a module in the user's folder (not installed) imported by every Ray
worker, penguins with text categories and missing values, a real MLflow store, the champion
served over HTTP from raw records by a server that trusts that factory, and refused by one
that does not."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import torch

from conftest import ROOT, free_port, wait_until_up
from orchestrator.core import data, model

pytestmark = pytest.mark.slow

NAME = "e2e-own-model"
# the shipped example factory, copied into the user's folder under another name: neither
# installed nor on any path but the folder the sweep runs from
FACTORY = "penguin_models:residual_mlp"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("own-model")
    (tmp / "penguin_models.py").write_text((ROOT / "jobs" / "factories.py").read_text())
    table = data.export("penguins", tmp / "penguins.parquet")
    uri = f"sqlite:///{tmp}/mlflow.db"
    env = {**os.environ, "RAY_ADDRESS": "local"}
    env.pop("PYTHONPATH", None)  # the factory must come from the working folder alone
    args = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "sweep",
        str(ROOT / "jobs/configs/penguins.yaml"),
        f"data.path={table}",
        f"tracking.uri={uri}",
        f"sweep.storage_path={tmp}/results",
        f"tracking.register_as={NAME}",
        f"model.kind={FACTORY}",
        "model.args={width: 32, depth: 1}",
        "sweep.space={model.args.width: {type: choice, values: [8, 32]}, "
        "model.args.depth: {type: choice, values: [1, 2]}}",
        "sweep.searcher=random",
        "sweep.num_samples=3",
        "train.epochs=8",
        "sweep.grace_period=4",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp, env=env, timeout=900)
    print(proc.stdout[-5000:], proc.stderr[-5000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        "uri": uri,
        "out": proc.stdout,
        "tmp": tmp,
        "env": env,
        "table": table,
    }


def test_the_sweep_says_what_it_decided_and_trains_the_users_model(sweep: dict) -> None:
    out = sweep["out"]
    assert "task multiclass (3 classes); 7 feature columns" in out
    assert "2 categories" in out and "with missing values imputed" in out
    assert "trials done 3/3" in out and "test accuracy " in out
    accuracy = float(out.split("test accuracy ")[1].split()[0].rstrip(";,"))
    assert accuracy > 0.9  # penguins' species are nearly separable by the measurements
    assert "logged without a pt2 program: its inputs include text categories" in out
    assert f"serve.factories='[{FACTORY}]'" in out  # the next command tells the server to trust it
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep["uri"])
    exp = client.get_experiment_by_name("penguins")
    parent = next(
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("orchestrator.role") == "sweep"
    )
    # the user's code is kept with the champion, as text, for reproducibility
    logged = [a.path for a in client.list_artifacts(parent.info.run_id, "code")]
    assert logged == ["code/penguin_models.py"]


def _serve(sweep: dict, *overrides: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "serve",
            "--model",
            f"models:/{NAME}@champion",
            "--port",
            str(port),
            "--tracking-uri",
            sweep["uri"],
            *overrides,
        ],
        cwd=sweep["tmp"],
        env=sweep["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, port


def test_a_server_not_told_to_trust_the_factory_refuses_it(sweep: dict) -> None:
    proc, _ = _serve(sweep)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert f"the factory '{FACTORY}' is not trusted by this server" in err
    assert "serve.factories" in err


def test_the_served_champion_takes_raw_records_and_answers_as_the_model_itself(
    sweep: dict,
) -> None:
    from orchestrator.tracking import registry

    proc, port = _serve(sweep, f"serve.factories=[{FACTORY}]")
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc)
        raw = pq.read_table(sweep["table"]).to_pylist()
        rows = [{k: v for k, v in r.items() if k != "label"} for r in raw[:40]]
        assert any(r["sex"] is None for r in rows)  # missing values go in as they are
        for r in rows:  # NaN is not JSON: a missing measurement is null
            for k, v in r.items():
                if isinstance(v, float) and np.isnan(v):
                    r[k] = None
        rows[0] = {**rows[0], "island": "Atlantis"}  # an island never seen in training
        resp = requests.post(
            f"http://127.0.0.1:{port}/predict", json={"dataframe_records": rows}, timeout=30
        )
        assert resp.status_code == 200, resp.text
        served = np.asarray(resp.json()["probabilities"])
        meta = requests.get(f"http://127.0.0.1:{port}/metadata", timeout=10).json()
        bad = requests.post(
            f"http://127.0.0.1:{port}/predict",
            json={"dataframe_records": [{**rows[1], "bill_length_mm": "long"}]},
            timeout=10,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert bad.status_code == 422 and "dataframe_records[0].bill_length_mm" in bad.text
    assert meta["task"] == "multiclass" and meta["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    import mlflow
    import pyarrow as pa

    from orchestrator.core import features

    mlflow.set_tracking_uri(sweep["uri"])
    sys.path.insert(0, str(sweep["tmp"]))
    try:
        net, spec, _, _ = registry.load(f"models:/{NAME}@champion", 1 << 30, [FACTORY])
    finally:
        sys.path.remove(str(sweep["tmp"]))
    x = features.encode(spec.encoding, pa.Table.from_pylist(rows).select(spec.encoding.names))
    with torch.no_grad():
        direct = model.Outputs(net, spec.task)(torch.from_numpy(x)).numpy()
    assert np.allclose(served, direct, atol=1e-6)
    assert served.shape == (40, 3) and np.allclose(served.sum(axis=1), 1.0, atol=1e-5)
