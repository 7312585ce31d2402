"""The model server fuzzed against its own OpenAPI schema (schemathesis), over real HTTP on
loopback: valid bodies must be answered 200 with the documented shape, invalid ones 4xx with
a message, and nothing may ever answer 500 or take the server down."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import schemathesis
import torch
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from conftest import free_port
from orchestrator import config
from orchestrator.core import model
from orchestrator.serving import serve

pytestmark = pytest.mark.slow


def _app() -> FastAPI:
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    net = model.WithProbabilities(
        model.build(config.ModelConfig(hidden=[8]), x.mean(0), x.std(0), 3)
    ).eval()
    served = serve.Served(net, ["cat", "dog", "eel"], 4, "models:/fuzz@champion", "1", "r1")
    return serve.create_app(served, max_batch=8, max_body_bytes=4096)


# The schema is the app's own (built here, at collection, without serving); the requests go
# to the same app served by uvicorn on loopback.
APP = _app()
fuzz = schemathesis.openapi.from_dict(APP.openapi())
fuzz.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=200, deterministic=True
)
# too many rows is refused with 413 by design (as a body over the byte limit is)
_rejection = fuzz.config.checks.negative_data_rejection
_rejection.expected_statuses = [s for s in _rejection.expected_statuses if s != "5xx"] + ["413"]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(APP, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@fuzz.parametrize()
@settings(suppress_health_check=list(HealthCheck), deadline=None)
def test_every_endpoint_keeps_its_schema_and_never_answers_500(
    case: schemathesis.Case, base_url: str
) -> None:
    # Schema-valid rows are answered 200, except rows so far out (near float32's limits) that
    # the network overflows: those get a documented 422 rather than NaN probabilities.
    response = case.call_and_validate(base_url=base_url, excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500
    if case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE:
        assert response.status_code == 200 or (
            response.status_code == 422 and "output is not a number" in response.text
        ), response.text


def test_the_server_is_still_up_and_counted_no_errors_of_its_own(base_url: str) -> None:
    assert requests.get(f"{base_url}/health", timeout=5).json() == {"status": "ok"}
    text = requests.get(f"{base_url}/metrics", timeout=5).text
    assert 'status="500"' not in text


def test_the_predict_schema_says_the_models_shape(base_url: str) -> None:
    doc = requests.get(f"{base_url}/openapi.json", timeout=5).json()
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    rows = body["schema"]["properties"]["features"]
    assert rows["maxItems"] == 8 and rows["items"]["minItems"] == rows["items"]["maxItems"] == 4
    assert {"401", "413", "422"} <= set(doc["paths"]["/predict"]["post"]["responses"])
