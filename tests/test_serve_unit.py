"""The FastAPI app with a real (tiny) torch model, in-process: request validation rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from orchestrator import config, model, serve


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
def test_bad_requests_get_4xx_with_a_message(client: TestClient, body: dict, status: int,
                                             words: str) -> None:
    r = client.post("/predict", json=body)
    assert r.status_code == status
    assert words in r.text


def test_nan_and_infinity_are_refused(client: TestClient) -> None:
    r = client.post("/predict", content=b'{"features": [[NaN, 1, 2, Infinity]]}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422
