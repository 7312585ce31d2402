"""End to end through the real CLI: a real local Ray (TorchTrainer DDP trials under Tune with
ASHA), a real MLflow SQLite store in a temporary folder, the real HTTP server on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch

from conftest import ROOT, free_port, rendered_in_browser, wait_until_up
from orchestrator import config
from orchestrator.core import data, diagnosis, modelfile

pytestmark = pytest.mark.slow

NAME = "e2e-digits"
TRIALS, EPOCHS = 4, 6


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, digits_path: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{tmp}/mlflow.db"
    env = {**os.environ, "RAY_ADDRESS": "local"}  # never join a cluster another test started
    args = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "sweep",
        str(ROOT / "jobs/configs/quickstart.yaml"),
        f"data.path={digits_path}",
        f"tracking.uri={uri}",
        f"sweep.storage_path={tmp}/results",
        "experiment=e2e",
        f"tracking.register_as={NAME}",
        f"sweep.num_samples={TRIALS}",
        f"train.epochs={EPOCHS}",
        "sweep.grace_period=2",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp, env=env, timeout=900)
    print(proc.stdout[-5000:], proc.stderr[-5000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = config.load(ROOT / "jobs/configs/quickstart.yaml", [f"data.path={digits_path}"])
    return {"uri": uri, "out": proc.stdout, "splits": data.load_splits(cfg.data), "tmp": tmp}


def _client(uri: str):  # noqa: ANN202
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def test_terminal_shows_progress_table_accuracy_and_next_commands(sweep: dict) -> None:
    out = sweep["out"]
    assert f"trials done {TRIALS}/{TRIALS}" in out and "best val_loss=" in out
    header = next(line for line in out.splitlines() if line.startswith("trial "))
    for col in ("train.weight_decay", "model.dropout", "epochs", "val_loss", "val_accuracy"):
        assert col in header
    assert "test accuracy 0." in out
    assert f"mlflow ui --backend-store-uri {sweep['uri']}" in out
    assert f"orchestrator serve --model models:/{NAME}@champion" in out


def test_asha_stops_two_worker_trials_early_and_the_sweep_still_finishes(sweep: dict) -> None:
    # Two 2-worker trials fill the CPUs: a pruned trial's worker group must be released
    # for the later trials to start (with the group leaked, the sweep would wait forever).
    rows = [
        line
        for line in sweep["out"].splitlines()
        if line.startswith("[sweep] trial ") and " pruned;" in line
    ]
    assert rows, sweep["out"][-3000:]
    assert f"trials done {TRIALS}/{TRIALS}, in progress 0" in sweep["out"]


def test_mlflow_has_one_parent_and_exactly_one_child_per_trial(sweep: dict) -> None:
    client = _client(sweep["uri"])
    exp = client.get_experiment_by_name("e2e")
    # MLflow's UI opens it in its model-training view, not on GenAI traces
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("orchestrator.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("orchestrator.role") == "trial"]
    assert len(parents) == 1 and len(trials) == TRIALS and len(runs) == TRIALS + 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    for tag in (
        "orchestrator.git_commit",
        "orchestrator.config_hash",
        "orchestrator.dataset_fingerprint",
        "orchestrator.versions",
    ):
        assert parent.data.tags[tag]
    seen = set()
    for t in trials:
        assert t.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert t.info.status == "FINISHED"
        p = t.data.params
        assert p["model.hidden"] == "[1024]" and p["scaling.num_workers"] == "2"
        seen.add((p["train.weight_decay"], p["model.dropout"]))
        epochs = int(t.data.tags["orchestrator.epochs_run"])
        assert 1 <= epochs <= EPOCHS
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "val_f1", "gap"):
            steps = [m.step for m in client.get_metric_history(t.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), key  # once per epoch, no dupes
    assert len(seen) == TRIALS  # each trial its own sampled L2 / dropout


def test_champion_alias_loads_with_pyfunc_and_scores_the_reported_accuracy(sweep: dict) -> None:
    import mlflow

    client = _client(sweep["uri"])
    version = client.get_model_version_by_alias(NAME, "champion")
    parent = client.get_run(version.run_id)
    assert parent.data.tags["orchestrator.role"] == "sweep"
    reported = parent.data.metrics["test_accuracy"]
    splits = sweep["splits"]
    probs = np.asarray(mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(splits.x_test))
    assert probs.shape == (len(splits.y_test), 10)
    acc = float((probs.argmax(1) == splits.y_test).mean())
    assert acc == pytest.approx(reported, abs=1e-9)
    assert f"test accuracy {reported:.4f}" in sweep["out"]
    assert acc > 0.9  # a short 6-epoch sweep; the full demo's figure is in docs/benchmarks.md


def test_runs_carry_pictures_dataset_lineage_and_a_pickle_free_champion(sweep: dict) -> None:
    import mlflow

    from orchestrator.serving import serve

    client = _client(sweep["uri"])
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags["orchestrator.role"] == "sweep")
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {
        "plots/regularization_map.png",
        "plots/parallel_coordinates.png",
        "plots/fit_map.png",
    }
    for r in runs:
        contexts = {
            i.tags[0].value: json.loads(i.dataset.profile)["num_rows"]
            for i in r.inputs.dataset_inputs
        }
        assert contexts == {
            "training": len(sweep["splits"].y_train),
            "validation": len(sweep["splits"].y_val),
            "test": len(sweep["splits"].y_test),
        }
        if r.data.tags["orchestrator.role"] == "trial":
            arts = [a.path for a in client.list_artifacts(r.info.run_id, "plots")]
            assert arts == ["plots/learning_curves.png"]
            assert r.data.tags["orchestrator.diagnosis"] in diagnosis.LABELS
            assert any(c.isdigit() for c in r.data.tags["orchestrator.diagnosis_reasons"])
            png = Path(client.download_artifacts(r.info.run_id, arts[0], str(sweep["tmp"])))
            assert png.read_bytes()[:4] == b"\x89PNG"
    # the served form: plain tensors + JSON, no unpickled code, same scores as pyfunc
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion"))
    spec = json.loads((folder / "extra_files" / modelfile.MODEL_FILE).read_text())
    assert spec["format"] == 2 and spec["model"]["hidden"] == [1024]
    assert len(spec["encoding"]["columns"]) == 64 and spec["task"]["kind"] == "multiclass"
    served = serve.load(f"models:/{NAME}@champion", sweep["uri"])
    x = sweep["splits"].x_test
    with torch.no_grad():
        mine = served.net(torch.from_numpy(x)).numpy()
    theirs = np.asarray(mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(x))
    assert np.allclose(mine, theirs, atol=1e-5)


def test_serve_answers_predict_and_health_over_loopback(sweep: dict) -> None:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": sweep["uri"]}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "serve",
            "--model",
            f"models:/{NAME}@champion",
            "--port",
            str(port),
        ],
        env=env,
        cwd=sweep["tmp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/health", server)
        splits = sweep["splits"]
        rows = splits.x_test[:20].tolist()
        r = requests.post(f"{base}/predict", json={"features": rows}, timeout=10)
        assert r.status_code == 200
        body = r.json()
        assert len(body["predictions"]) == 20 and len(body["probabilities"][0]) == 10
        assert np.mean(np.array(body["predictions"]) == splits.y_test[:20]) >= 0.85
        one = requests.post(f"{base}/predict", json={"features": rows[:1]}, timeout=10).json()
        assert one["predictions"] == body["predictions"][:1]
        bad = requests.post(f"{base}/predict", json={"features": [[1.0, 2.0]]}, timeout=10)
        assert bad.status_code == 422 and "64" in bad.text
        assert requests.get(f"{base}/health", timeout=5).status_code == 200  # still up
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    # its start-up line says what it serves, which version, and where
    said = server.stdout.read() if server.stdout else ""
    assert re.search(
        rf"serving models:/{NAME}@champion \(version \d+, 10 classes, 64 features\)", said
    )
    assert f"on http://127.0.0.1:{port}" in said


def test_report_shows_the_champions_confusion_matrix_and_renders(sweep: dict) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "report",
            "e2e",
            "--storage",
            f"{sweep['tmp']}/results",
        ],
        cwd=sweep["tmp"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": sweep["uri"]},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = Path(proc.stdout.split("report: ")[1].split()[0])
    text = page.read_text()
    assert 'alt="confusion matrix"' in text and "test_accuracy" in text
    assert 'alt="regularization map"' in text and 'alt="fit map"' in text
    images = text.count("<img ")
    assert rendered_in_browser(page, sweep["tmp"]) == (images, images)
