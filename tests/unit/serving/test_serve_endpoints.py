"""Who may call what on the model server: the API key (empty is an error, the Bearer scheme
in any case, every path but /health behind it, the schema and docs included), JSON only on
/predict (a cross-site page cannot POST text/plain to it), and no unauthenticated server on
an address beyond loopback unless asked for."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from orchestrator import cli, config
from orchestrator.core import model
from orchestrator.serving import serve

ROW = {"features": [[0.0, 1.0, 2.0, 3.0]]}


def _served() -> serve.Served:
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    net = model.build(config.ModelConfig(hidden=[8]), x.mean(0), x.std(0), 3)
    return serve.Served(
        model.WithProbabilities(net).eval(), ["a", "b", "c"], 4, "models:/t@champion", "1", "run1"
    )


@pytest.fixture(scope="module")
def keyed() -> Any:
    with TestClient(serve.create_app(_served(), api_key="s3cret", reload=lambda: None)) as c:
        yield c


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/reload"),
        ("GET", "/metadata"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/ready"),
        ("GET", "/metrics"),
        ("POST", "/predict"),
        ("GET", "/redoc"),
    ],
)
def test_with_a_key_every_path_but_health_answers_401_without_it(
    keyed: TestClient, method: str, path: str
) -> None:
    assert keyed.request(method, path).status_code == 401
    assert keyed.request(method, path, headers={"X-API-Key": "wrong"}).status_code == 401
    ok = keyed.request(
        method,
        path,
        headers={"X-API-Key": "s3cret"},
        **({"json": ROW} if path == "/predict" else {}),
    )
    assert ok.status_code == 200, ok.text
    assert keyed.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("Bearer s3cret", 200),
        ("bearer s3cret", 200),
        ("BEARER  s3cret ", 200),
        ("s3cret", 401),
        ("Basic s3cret", 401),
        ("Bearer", 401),
        ("Bearers3cret", 401),
        ("Bearer wrong", 401),
    ],
)
def test_the_bearer_scheme_is_matched_in_any_case(
    keyed: TestClient, header: str, status: int
) -> None:
    r = keyed.post("/predict", json=ROW, headers={"Authorization": header})
    assert r.status_code == status, r.text


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON", 200),
        ("text/plain", 415),
        ("text/plain; charset=utf-8", 415),
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        (None, 415),
    ],
)
def test_predict_takes_json_only(content_type: str | None, status: int) -> None:
    import orjson

    headers = {"content-type": content_type} if content_type else {}
    with TestClient(serve.create_app(_served())) as c:
        r = c.post("/predict", content=orjson.dumps(ROW), headers=headers)
        assert r.status_code == status, r.text
        if status == 415:
            assert "content-type: /predict takes application/json" in r.json()["detail"]
        assert c.get("/health").status_code == 200  # other paths take what they take


def test_an_empty_key_given_to_the_app_is_an_error() -> None:
    with pytest.raises(ValueError, match="api_key: empty"):
        serve.create_app(_served(), api_key="")


@pytest.mark.parametrize(
    ("configured", "environ", "key"),
    [
        ("", {}, "serve.api_key"),
        ("  ", {}, "serve.api_key"),
        (None, {"ORCHESTRATOR_API_KEY": ""}, "ORCHESTRATOR_API_KEY"),
        (" k ", {}, "serve.api_key"),
    ],
)
def test_an_empty_key_is_an_error_not_auth_off(
    configured: str | None, environ: dict, key: str
) -> None:
    with pytest.raises(config.ConfigError) as e:
        serve.required_key(configured, environ, "127.0.0.1", False)
    assert e.value.key == key


def test_the_key_comes_from_the_config_then_the_environment() -> None:
    env = {"ORCHESTRATOR_API_KEY": "from-env"}
    assert serve.required_key("from-config", env, "0.0.0.0", False) == "from-config"
    assert serve.required_key(None, env, "0.0.0.0", False) == "from-env"
    assert serve.required_key(None, {}, "127.0.0.1", False) is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("myhost", False),
        ("192.168.0.1", False),
    ],
)
def test_an_address_beyond_loopback_needs_a_key_or_an_explicit_allow(
    host: str, loopback: bool
) -> None:
    assert serve.is_loopback(host) == loopback
    if loopback:
        assert serve.required_key(None, {}, host, False) is None
        return
    with pytest.raises(config.ConfigError) as e:
        serve.required_key(None, {}, host, False)
    assert e.value.key == "serve.host" and "--allow-unauthenticated" in e.value.fix
    assert serve.required_key(None, {}, host, True) is None


def test_the_cli_refuses_before_loading_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    ran: list[tuple] = []
    monkeypatch.setattr(serve, "run", lambda *a: ran.append(a))
    monkeypatch.delenv("ORCHESTRATOR_API_KEY", raising=False)
    argv = ["serve", "--model", "models:/t@champion", "--host", "0.0.0.0"]
    assert cli.main(argv) == cli.EXIT_CONFIG and not ran
    assert "serve.host" in capsys.readouterr().err
    assert cli.main([*argv, "--allow-unauthenticated"]) == 0
    assert cli.main([*argv, "serve.allow_unauthenticated=true"]) == 0
    assert len(ran) == 2 and ran[0][3] is None
    monkeypatch.setenv("ORCHESTRATOR_API_KEY", "")
    assert cli.main(["serve", "--model", "models:/t@champion"]) == cli.EXIT_CONFIG
    assert "ORCHESTRATOR_API_KEY" in capsys.readouterr().err and len(ran) == 2
