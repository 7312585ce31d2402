"""The FastAPI app with a real (tiny) torch model, in-process: request validation rules."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import served_model as _served
from orchestrator import config
from orchestrator.core import model
from orchestrator.serving import serve


@pytest.fixture(scope="module")
def client() -> TestClient:
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    net = model.build(config.ModelConfig(hidden=[8]), x.mean(0), x.std(0), 3)
    net = model.WithProbabilities(net).eval()
    served = serve.Served(net, ["cat", "dog", "eel"], 4, "models:/t@champion")
    return TestClient(serve.create_app(served, max_batch=5))


def test_predict_returns_class_names_and_probabilities(client: TestClient) -> None:
    r = client.post("/predict", json={"features": [[0, 1, 2, 3], [1, 1, 1, 1]]})
    assert r.status_code == 200
    body = r.json()
    assert len(body["predictions"]) == 2 and set(body["predictions"]) <= {"cat", "dog", "eel"}
    assert np.allclose(np.sum(body["probabilities"], axis=1), 1.0, atol=1e-5)
    assert client.get("/health").json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"features": [[0, 1, 2]]}, 422, "features[0]: 3 values"),
        ({"features": [[0, 1, 2, 3]] * 6}, 413, "at most 5"),
        ({"features": []}, 422, "features"),
        ({"features": [["a", 1, 2, 3]]}, 422, "features"),
        ({"rows": [[0, 1, 2, 3]]}, 422, "features"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(
    client: TestClient, body: dict, status: int, words: str
) -> None:
    r = client.post("/predict", json=body)
    assert r.status_code == status
    assert words in r.text


def test_nan_and_infinity_are_refused(client: TestClient) -> None:
    r = client.post(
        "/predict",
        content=b'{"features": [[NaN, 1, 2, Infinity]]}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422


def test_ready_metadata_and_metrics_describe_the_model_and_the_traffic() -> None:
    with TestClient(serve.create_app(_served(0, "3"), max_batch=5)) as c:
        assert c.get("/ready").json()["version"] == "3"
        meta = c.get("/metadata").json()
        assert {k: meta["input"][k] for k in ("features", "dtype", "max_rows")} == {
            "features": 4,
            "dtype": "float32",
            "max_rows": 5,
        }
        assert meta["task"] == "multiclass" and meta["input"]["formats"][0] == "features"
        assert meta["classes"] == ["cat", "dog", "eel"] and meta["run_id"] == "run3"
        for _ in range(3):
            assert c.post("/predict", json={"features": [[0, 1, 2, 3]]}).status_code == 200
        assert c.post("/predict", json={"features": [[0, 1]]}).status_code == 422
        text = c.get("/metrics").text
    assert 'orchestrator_requests_total{path="/predict",status="200"} 3' in text
    assert 'orchestrator_requests_total{path="/predict",status="422"} 1' in text
    assert "orchestrator_errors_total 1" in text
    assert "orchestrator_predict_seconds_count 4" in text
    assert 'orchestrator_batch_rows_bucket{le="+Inf"} 3' in text  # 3 forward passes
    assert 'orchestrator_model_info{version="3"} 1' in text


def test_an_api_key_guards_everything_but_health() -> None:
    with TestClient(serve.create_app(_served(0, "1"), api_key="s3cret")) as c:
        assert c.get("/health").status_code == 200
        for path in ("/ready", "/metadata", "/metrics"):
            assert c.get(path).status_code == 401
        body = {"features": [[0, 1, 2, 3]]}
        assert c.post("/predict", json=body).status_code == 401
        assert c.post("/predict", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/predict", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
        ok = c.post("/predict", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_a_body_over_the_limit_is_refused_before_it_is_parsed() -> None:
    with TestClient(serve.create_app(_served(0, "1"), max_body_bytes=1000)) as c:
        big = b'{"features": [' + b",".join([b"[0,1,2,3]"] * 200) + b"]}"
        r = c.post("/predict", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "1000 bytes" in r.text
        assert c.get("/health").status_code == 200


def test_reload_swaps_in_the_new_version_and_keeps_answering() -> None:
    newer: list[serve.Served] = []
    with TestClient(
        serve.create_app(_served(0, "1"), reload=lambda: newer.pop() if newer else None)
    ) as c:
        x = {"features": [[0.5, -1, 2, 0.1]]}
        before = c.post("/predict", json=x).json()["probabilities"]
        assert c.post("/reload").json() == {"reloaded": False, "version": "1"}
        newer.append(_served(7, "2"))  # the alias moved
        assert c.post("/reload").json() == {"reloaded": True, "version": "2"}
        after = c.post("/predict", json=x).json()["probabilities"]
        assert after != before and c.get("/ready").json()["version"] == "2"
        assert "orchestrator_model_reloads_total 1" in c.get("/metrics").text


def test_the_alias_is_polled_in_the_background() -> None:
    import time

    newer = [_served(7, "2")]
    app = serve.create_app(
        _served(0, "1"), reload=lambda: newer.pop() if newer else None, poll_s=0.05
    )
    with TestClient(app) as c:
        deadline = time.time() + 10
        while c.get("/ready").json()["version"] != "2":
            assert time.time() < deadline
            time.sleep(0.05)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b'{"features": [[1, 2, 3, 4], [1, 2, 3]]}', 422, "features[1]: 3 values"),
        (
            b'{"features": [[1, 2, 3, 4], [1, "2", 3, 4]]}',
            422,
            "features[1][1]: a number, not a string",
        ),
        (
            b'{"features": [[1, 2, 3, 4], [1, 2, null, 4]]}',
            422,
            "features[1][2]: a number, not null",
        ),
        (b'{"features": [[1, 2, 3, true]]}', 422, "features[0][3]: a number, not a boolean"),
        (b'{"features": [[1, 2, 3, 1e39]]}', 422, "features[0][3]: 1e+39 is not a finite float32"),
        (b'{"features": [[1, 2, 3, [4]]]}', 422, "features[0][3]: a number, not a list"),
        (b'{"features": [{"a": 1}]}', 422, "features[0]: a list of 4 numbers, not an object"),
        (b'{"features": "1,2,3,4"}', 422, "features: a non-empty list"),
        (b"[[1, 2, 3, 4]]", 422, "features: required"),
        (b'{"features": [[1, 2, 3, 4]', 422, "body: not valid JSON"),
        (b'{"features": [[1, 2, 3, 1e400]]}', 422, "body: not valid JSON"),
        (b'{"features": [[1, 2, 3, 1' + b"0" * 400 + b"]]}", 422, "number is infinity"),
    ],
)
def test_the_first_bad_value_is_named(body: bytes, status: int, words: str) -> None:
    with pytest.raises(serve.BadInput) as e:
        serve.parse_features(body, 4, 5)
    assert e.value.status == status and words in e.value.message


def test_good_rows_parse_to_float32_of_the_same_values() -> None:
    x = serve.parse_features(b'{"features": [[1, 2.5, -3e10, 0], [4, 5, 6, 7]], "id": 9}', 4, 5)
    assert x.dtype == np.float32 and x.shape == (2, 4)
    assert np.allclose(x[0], [1, 2.5, -3e10, 0])
    big = serve.parse_features(b'{"features": [[1, 2, 3, 1000000000000000000000000]]}', 4, 5)
    assert big[0, 3] == np.float32(1e24)  # past int64, within float32


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives() -> None:
    def chunks():  # no content-length: the server must count
        yield b'{"features": ['
        for _ in range(400):
            yield b"[0,1,2,3],"
        yield b"[0,1,2,3]]}"

    with TestClient(serve.create_app(_served(0, "1"), max_body_bytes=1000)) as c:
        r = c.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "1000 bytes" in r.text
        small = c.post(
            "/predict",
            content=iter([b'{"features": [[0,1,2,3]]}']),
            headers={"content-type": "application/json"},
        )
        assert small.status_code == 200


def test_a_bug_answers_500_once_and_the_server_stays_up() -> None:
    served = _served(0, "1")
    calls = {"n": 0}
    real = served.net.forward

    def flaky(x):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug")
        return real(x)

    served.net.forward = flaky  # type: ignore[method-assign]
    with TestClient(serve.create_app(served), raise_server_exceptions=False) as c:
        body = {"features": [[0, 1, 2, 3]]}
        r = c.post("/predict", json=body)
        assert r.status_code == 500 and "RuntimeError" in r.text
        assert c.post("/predict", json=body).status_code == 200
        assert 'path="/predict",status="500"' in c.get("/metrics").text


def test_rows_that_overflow_the_network_get_422_not_nan(client: TestClient) -> None:
    r = client.post("/predict", json={"features": [[0, 1, 2, 3], [-3.4e38, 3.4e38, 0, 0]]})
    assert r.status_code == 422 and "rows [1]: the model's output is not a number" in r.text


def test_the_server_runs_with_the_http_limits_of_the_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    from orchestrator.serving.http_limits import Limits

    ran: dict = {}
    # restored after the test; the server turns MLflow's pickle loading off for its process
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    monkeypatch.setattr(serve, "load", lambda *a, **k: _served(0, "1"))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(kw))
    opts = config.load(
        None,
        [
            "serve.max_header_bytes=2048",
            "serve.header_timeout_s=3",
            "serve.body_timeout_s=4",
            "serve.max_connections=9",
            "serve.keepalive_s=2",
        ],
        only="serve",
    ).serve
    serve.run("models:/t@champion", opts, "sqlite:///unused.db")
    limits = ran["http"]._limits
    assert limits == Limits(
        max_header_bytes=2048,
        header_timeout_s=3,
        body_timeout_s=4,
        max_connections=9,
        keepalive_s=2,
    )
    assert ran["limit_concurrency"] == 9 and ran["timeout_keep_alive"] == 2
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("serve.header_timeout_s=0", "serve.header_timeout_s"),
        ("serve.body_timeout_s=.inf", "serve.body_timeout_s"),
        ("serve.max_header_bytes=10", "serve.max_header_bytes"),
        ("serve.max_connections=0", "serve.max_connections"),
        ("serve.max_model_mb=-1", "serve.max_model_mb"),
    ],
)
def test_bad_limits_are_refused_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.load(None, [override], only="serve")
    assert e.value.key == key


def test_the_server_takes_its_tracking_uri_from_the_environment_without_a_sweep_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `orchestrator serve` has no data.path: building a whole Config() here failed its rules
    from orchestrator.config import ServeConfig

    seen: list[str] = []

    def load(model_uri: str, uri: str, max_mb: float, factories: tuple = ()) -> None:
        seen.append(uri)
        raise serve.Refused("1", "stop here")

    monkeypatch.setattr(serve, "load", load)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    with pytest.raises(serve.Refused):
        serve.run("models:/m@champion", ServeConfig(), None, None)
    assert seen == [f"sqlite:///{tmp_path}/m.db"]
