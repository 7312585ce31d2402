"""/predict takes named records in MLflow's scoring shapes, checked field by field against
the model's input schema, and answers what fits the task."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import make_cfg
from orchestrator.core import data, features, model, modelfile
from orchestrator.serving import serve

ROWS = [
    {"size": 1.5, "color": "red", "sig": [0.1, 0.2], "ok": True},
    {"size": None, "color": "blue", "sig": [1.0, -1.0], "ok": False},
    {"size": -0.5, "color": "never-seen", "sig": [0.0, 0.0], "ok": True},
]


def _served(tmp_path: Path, label: object, **more: object) -> serve.Served:
    rng = np.random.default_rng(0)
    n = 120
    size = rng.normal(size=n)
    size[::9] = np.nan
    table = pa.table(
        {
            "size": size,
            "color": rng.choice(["red", "blue", "green"], size=n),
            "sig": pa.array(
                [list(rng.normal(size=2)) for _ in range(n)], pa.list_(pa.float64(), 2)
            ),
            "ok": rng.random(n) < 0.5,
            "label": label(n, rng) if callable(label) else label,
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    cfg = make_cfg(str(tmp_path / "t.parquet"), **{"data.missing": "impute", **more})
    splits = data.load_splits(cfg)
    torch.manual_seed(0)
    net = model.network(cfg, splits.encoding, splits.task).eval()
    spec = modelfile.spec_of(cfg, splits.encoding, splits.task)
    return serve.Served(
        model.Outputs(net, spec.task).eval(), spec.classes, spec.num_features, "m:/1", "1", "", spec
    )


def _direct(served: serve.Served, rows: list[dict]) -> np.ndarray:
    assert served.spec is not None
    table = pa.table(
        {
            "size": pa.array([r["size"] for r in rows], pa.float64()),
            "color": [r["color"] for r in rows],
            "sig": pa.array([r["sig"] for r in rows], pa.list_(pa.float64(), 2)),
            "ok": [r["ok"] for r in rows],
        }
    )
    with torch.no_grad():
        return served.net(torch.from_numpy(features.encode(served.spec.encoding, table))).numpy()


def _classes(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(["cat", "dog", "eel"], size=n)


@pytest.mark.parametrize(
    "body",
    [
        {"dataframe_records": ROWS},
        {"instances": ROWS},
        {"inputs": ROWS},
        {"dataframe_split": {"columns": list(ROWS[0]), "data": [list(r.values()) for r in ROWS]}},
        {"inputs": {k: [r[k] for r in ROWS] for k in ROWS[0]}},
    ],
    ids=["dataframe_records", "instances", "inputs-records", "dataframe_split", "inputs-columns"],
)
def test_every_scoring_shape_gives_the_models_own_answer(tmp_path: Path, body: dict) -> None:
    served = _served(tmp_path, _classes)
    with TestClient(serve.create_app(served)) as c:
        r = c.post("/predict", json=body)
        assert r.status_code == 200, r.text
        meta = c.get("/metadata").json()
    probs = np.asarray(r.json()["probabilities"])
    assert np.allclose(probs, _direct(served, ROWS), atol=1e-6)
    assert r.json()["predictions"] == [served.classes[i] for i in probs.argmax(1)]
    assert [c["name"] for c in meta["input"]["columns"]] == ["size", "color", "sig", "ok"]
    color = meta["input"]["columns"][1]
    assert color["type"] == "category" and sorted(color["values"]) == ["blue", "green", "red"]
    assert "features" not in meta["input"]["formats"]  # text categories: records only


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        ([{"size": 1.0, "color": "red", "sig": [0, 0]}], "dataframe_records[0].ok: missing"),
        ([{**ROWS[0], "size": "big"}], "dataframe_records[0].size: a number, not a string"),
        ([ROWS[0], {**ROWS[1], "sig": [1.0]}], "dataframe_records[1].sig: a list of 2 numbers"),
        ([{**ROWS[0], "color": 3}], "dataframe_records[0].color: a string category"),
        ([{**ROWS[0], "ok": "yes"}], "dataframe_records[0].ok: true or false"),
        ([{**ROWS[0], "size": 1e300}], "dataframe_records[0].size: 1e+300 is not a finite"),
    ],
)
def test_a_record_that_does_not_fit_gets_422_naming_row_and_column(
    tmp_path: Path, rows: list, words: str
) -> None:
    with TestClient(serve.create_app(_served(tmp_path, _classes))) as c:
        r = c.post("/predict", json={"dataframe_records": rows})
    assert r.status_code == 422 and words in r.json()["detail"], r.text


def test_unknown_categories_and_missing_values_follow_the_models_policies(tmp_path: Path) -> None:
    strict = _served(tmp_path, _classes, **{"data.unknown_category": "error"})
    with TestClient(serve.create_app(strict)) as c:
        r = c.post("/predict", json={"dataframe_records": ROWS})
        assert r.status_code == 422
        assert "dataframe_records[2].color: category 'never-seen' was never seen" in r.text
        assert c.post("/predict", json={"dataframe_records": ROWS[:2]}).status_code == 200
        # matrices are for models of numbers only
        r = c.post("/predict", json={"features": [[1.0, 0, 0.1, 0.2, 1]]})
        assert r.status_code == 422 and "named columns" in r.text


def test_regression_and_multilabel_answer_in_their_own_terms(tmp_path: Path) -> None:
    reg = _served(tmp_path, lambda n, rng: rng.normal(50.0, 10.0, size=n))
    with TestClient(serve.create_app(reg)) as c:
        r = c.post("/predict", json={"dataframe_records": ROWS})
        meta = c.get("/metadata").json()
    assert r.status_code == 200 and "probabilities" not in r.json()
    values = r.json()["predictions"]
    assert len(values) == 3 and all(isinstance(v, float) for v in values)
    assert np.allclose(values, _direct(reg, ROWS)[:, 0], atol=1e-4)
    assert meta["task"] == "regression" and meta["output"] == {"values": 1}
    ml = _served(
        tmp_path,
        lambda n, rng: pa.array(
            (rng.random((n, 3)) < 0.5).astype(int).tolist(), pa.list_(pa.int64(), 3)
        ),
    )
    with TestClient(serve.create_app(ml)) as c:
        r = c.post("/predict", json={"dataframe_records": ROWS})
    probs = np.asarray(r.json()["probabilities"])
    assert probs.shape == (3, 3) and np.allclose(probs, _direct(ml, ROWS), atol=1e-6)
    assert r.json()["predictions"] == (probs > 0.5).astype(int).tolist()


def test_the_openapi_schema_describes_the_records_the_model_takes(tmp_path: Path) -> None:
    import jsonschema

    served = _served(tmp_path, _classes, **{"data.unknown_category": "error"})
    doc = serve.create_app(served).openapi()
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    schema = body["schema"]
    jsonschema.validate({"dataframe_records": ROWS[:2]}, schema)  # what it answers 200
    with pytest.raises(jsonschema.ValidationError):  # a color never seen: refused
        jsonschema.validate({"dataframe_records": ROWS}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"dataframe_records": [{**ROWS[0], "sig": [1.0]}]}, schema)


def test_odd_bodies_get_422_not_500(tmp_path: Path) -> None:
    served = _served(tmp_path, _classes)
    with TestClient(serve.create_app(served)) as c:
        r = c.post("/predict", json={"dataframe_split": {"columns": [["size"]], "data": [[1]]}})
        assert r.status_code == 422 and "column names" in r.text
        r = c.post("/predict", json={"dataframe_records": [{**ROWS[0], "ok": 2**70}]})
        assert r.status_code == 422 and "ok" in r.text
