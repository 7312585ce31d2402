"""MLflow's inputs without MLflow running: the pictures, the dataset lineage entities and the
pickle-free champion's round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import make_cfg, numeric_spec
from orchestrator import config
from orchestrator.analysis import plots
from orchestrator.core import model, modelfile
from orchestrator.tracking import champions, registry, writer

PNG = b"\x89PNG\r\n\x1a\n"


def _cfg(**over: Any) -> config.Config:
    return make_cfg("s3://bucket/digits.parquet", **over)


def _history(epochs: int) -> list[dict[str, float]]:
    return [
        {
            "epoch": float(e),
            "train_loss": 1 / e,
            "val_loss": 1 / e + 0.01 * e,
            "train_accuracy": 1 - 1 / (e + 1),
            "val_accuracy": 0.9 - 0.01 * e,
        }
        for e in range(1, epochs + 1)
    ]


def test_learning_curves_are_a_png_with_one_point_per_epoch() -> None:
    history = _history(6)
    replayed = history + [dict(history[2], val_loss=0.5)]  # epoch 3 reported again
    rows = plots.by_epoch(replayed)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[2]["val_loss"] == 0.5
    png = plots.learning_curves(replayed, "trial t1")
    assert png.startswith(PNG) and len(png) > 10_000


def test_sweep_plots_take_numbers_log_scales_categories_and_failed_metrics() -> None:
    points = [
        {
            "train.weight_decay": 10**-k,
            "model.dropout": 0.1 * k,
            "model.hidden": [64] if k % 2 else [256],
            "val_loss": 0.1 * k,
        }
        for k in range(1, 7)
    ]
    points[3]["val_loss"] = math.nan  # a diverged trial: drawn grey, does not break the scale
    heat = plots.regularization_map(
        points, "train.weight_decay", "model.dropout", "val_loss", log_x=True, champion=0
    )
    par = plots.parallel_coordinates(
        points,
        ["train.weight_decay", "model.dropout", "model.hidden"],
        "val_loss",
        logs={"train.weight_decay"},
    )
    assert heat.startswith(PNG) and par.startswith(PNG)
    assert heat != par


def test_dataset_lineage_names_the_source_digest_and_rows_of_each_split() -> None:
    inputs = writer.dataset_inputs(_cfg(), "ab" * 32, {"train": 1000, "val": 200, "test": 300})
    assert [i.dataset.name for i in inputs] == ["digits.train", "digits.val", "digits.test"]
    assert {i.tags[0].value for i in inputs} == {"training", "validation", "test"}
    ds = inputs[0].dataset
    assert ds.source_type == "s3" and json.loads(ds.source)["uri"] == "s3://bucket/digits.parquet"
    assert ds.digest == ("ab" * 32)[:36] and json.loads(ds.profile)["num_rows"] == 1000


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_the_champion_round_trips_through_plain_weights_and_json(tmp_path: Path, kind: str) -> None:
    cfg = _cfg(**{"model.kind": kind, "model.hidden": [8, 4], "data.shape": [1, 8, 8]})
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(32, 64)).astype(np.float32)
    net = model.from_data(cfg, x, num_classes=10).eval()
    modelfile.write_weights(tmp_path, numeric_spec(cfg, x, list(range(10))), net)
    back, spec = modelfile.load_weights(tmp_path)
    with torch.no_grad():
        assert torch.equal(net(torch.from_numpy(x)), back(torch.from_numpy(x)))
    assert spec.classes == list(range(10)) and spec.num_features == 64


def test_weights_that_would_run_code_when_unpickled_are_refused(tmp_path: Path) -> None:
    cfg = _cfg(**{"model.hidden": [4]})
    x = np.ones((4, 3), dtype=np.float32)
    net = model.from_data(cfg, x, num_classes=2)
    modelfile.write_weights(tmp_path, numeric_spec(cfg, x, [0, 1]), net)
    torch.save({"payload": _Evil()}, tmp_path / modelfile.WEIGHTS_FILE)  # not just tensors
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        modelfile.load_weights(tmp_path)


class _Evil:
    def __reduce__(self) -> tuple:
        return (print, ("unpickled code ran",))


def test_a_new_champion_leaves_the_old_one_the_previous_alias(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real MLflow SQLite store, no Ray: two registrations move `champion` and `previous`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = _cfg(**{"model.hidden": [4], "tracking.register_as": "m", "tracking.uri": uri})
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    versions = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = model.from_data(cfg, x, num_classes=3)
        parent = client.create_run(exp).info.run_id
        trial = client.create_run(exp).info.run_id
        versions.append(
            champions.register_champion(
                cfg, parent, net, x, numeric_spec(cfg, x, [0, 1, 2]), {"test_accuracy": 0.5}, trial
            )
        )
    assert registry.champion_version(client, "m") == versions[1] == "2"
    assert registry.champion_version(client, "m", "previous") == versions[0] == "1"
    assert registry.champion_version(client, "nope") is None


def test_a_champion_torch_export_cannot_take_is_logged_pickle_free_for_pyfunc_and_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text categories: no pt2 program; the pickle-free files with a loader from this
    package's code, which ``mlflow.pyfunc.load_model`` runs on raw columns, and which the
    model server reads without running anything."""
    import mlflow
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    from orchestrator.core import data

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    n = 90
    frame = pa.table(
        {
            "size": rng.normal(size=n),
            "color": rng.choice(["red", "blue"], size=n),
            "label": rng.choice(["a", "b", "c"], size=n),
        }
    )
    pq.write_table(frame, tmp_path / "t.parquet")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = make_cfg(
        str(tmp_path / "t.parquet"),
        **{"model.hidden": [4], "tracking.register_as": "cats", "tracking.uri": uri},
    )
    splits = data.load_splits(cfg)
    net = model.network(cfg, splits.encoding, splits.task).eval()
    spec = modelfile.spec_of(cfg, splits.encoding, splits.task)
    assert "text categories" in str(champions.pt2_refusal(model.Outputs(net, spec.task), spec))
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    parent, trial = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    version = champions.register_champion(
        cfg, parent, net, splits.x_test[:3], spec, {"test_accuracy": 0.5}, trial
    )
    back, _, got_version, _ = registry.load("models:/cats@champion", 1 << 20)
    assert got_version == version
    rows = pd.DataFrame({"size": [0.5, -1.0], "color": ["red", "green"]})  # green: unseen
    got = np.asarray(mlflow.pyfunc.load_model("models:/cats@champion").predict(rows))
    red = 2 + spec.encoding.columns[1].values.index("red")  # codes: unknown, missing, values
    x = torch.tensor([[0.5, red], [-1.0, 0.0]], dtype=torch.float32)
    with torch.no_grad():
        direct = model.Outputs(back, spec.task)(x).numpy()
    assert got.shape == (2, 3) and np.allclose(got, direct, atol=1e-6)
