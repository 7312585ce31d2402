"""What the model server accepts from the registry, without MLflow: the pickle-free form's
spec is input (checked by the config's rules, its size counted against the weights file),
and a refused reload keeps the served version (fakes for the registry)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import make_cfg, numeric_spec
from conftest import served_model as _served
from orchestrator import config
from orchestrator.core import model, modelfile
from orchestrator.serving import serve
from orchestrator.tracking import registry


def _write(folder: Path, **spec_changes: object) -> dict:
    """A real (tiny) pickle-free model in ``folder``, its spec changed by ``spec_changes``."""
    cfg = make_cfg(**{"model.hidden": [8]})
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    net = model.from_data(cfg, x, num_classes=3)
    modelfile.write_weights(folder, numeric_spec(cfg, x, ["a", "b", "c"]), net)
    spec = json.loads((folder / modelfile.MODEL_FILE).read_text())
    for key, value in spec_changes.items():
        node = spec
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[leaf] = value
    (folder / modelfile.MODEL_FILE).write_text(json.dumps(spec))
    return spec


def test_a_network_far_bigger_than_its_weights_is_refused_before_it_is_built(
    tmp_path: Path,
) -> None:
    _write(tmp_path, **{"model.hidden": [2_000_000_000]})
    start = time.perf_counter()
    with pytest.raises(
        ValueError,
        match=r"model\.json: model .* needs 16,000,000,011 float32 "
        r"values, but weights\.pt has only [\d,]+ bytes",
    ):
        modelfile.load_weights(tmp_path)
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"model.hidden": [-3]}, "model.json: model.hidden: layer widths must be positive"),
        ({"model.hidden": [True]}, "model.json: model.hidden[0]: expected an integer"),
        ({"model.kind": "transformer"}, "model.json: model.kind: 'transformer' is neither"),
        ({"model.kind": "os:system"}, "the factory 'os:system' is not trusted by this server"),
        ({"model.dropout": 2.0}, "model.json: model.dropout: must be in [0, 1)"),
        ({"model.code": "import os"}, "model.json: model.code: unknown key"),
        ({"model.hidden": [1] * 2000}, "model.json: model.hidden: 2000 layers, at most 1024"),
        ({"model.kind": "cnn"}, "model.json: shape: is not set but model.kind is cnn"),
        ({"shape": [1, 2, 3]}, "model.json: shape: [1, 2, 3] holds 6 values, not the 4"),
        ({"encoding.columns.0.width": "4"}, "encoding.columns[0].width: expected 1 to"),
        ({"encoding.columns.1.kind": "code"}, "encoding.columns[1].kind: expected one of"),
        ({"encoding.columns.2.mean": [1e999]}, "encoding.columns[2].mean: expected 1 finite"),
        ({"encoding.columns.3.eval": "x"}, "encoding.columns[3]: expected a column object"),
        ({"encoding.missing": "guess"}, "encoding.missing: expected error or impute"),
        ({"task.kind": "ranking"}, "model.json: task.kind: expected one of"),
        ({"task.classes": ["a"]}, "model.json: task.classes: expected 2 to"),
        ({"task.classes": ["a", {"b": 1}, "c"]}, "task.classes: class values must be"),
        ({"task.loss": "hinge"}, "model.json: task.loss: expected cross_entropy"),
        ({"format": 3}, "model.json: format: expected 1 or 2, got 3"),
        ({"model": "mlp"}, "model.json: model: expected an object"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(tmp_path: Path, changes: dict, words: str) -> None:
    _write(tmp_path, **changes)
    with pytest.raises(ValueError) as e:
        modelfile.load_weights(tmp_path)
    assert words in str(e.value)


def test_a_spec_that_is_not_json_or_too_big_is_refused(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / modelfile.MODEL_FILE).write_bytes(b"\xff{")
    with pytest.raises(ValueError, match="model.json: not valid JSON"):
        modelfile.load_weights(tmp_path)
    (tmp_path / modelfile.MODEL_FILE).write_text(" " * (modelfile.MAX_SPEC_BYTES + 1))
    too_big = modelfile.MAX_SPEC_BYTES + 1
    with pytest.raises(ValueError, match=f"model.json: {too_big} bytes, at most"):
        modelfile.load_weights(tmp_path)


@pytest.mark.parametrize(
    ("kind", "hidden", "shape", "classes"),
    [
        ("mlp", [8, 3], None, 2),
        ("mlp", [], None, 5),
        ("cnn", [4, 6], [1, 8, 8], 10),
        ("cnn", [3, 3, 3], [2, 3, 5], 3),
    ],
)
def test_the_counted_size_is_the_built_networks(
    kind: str, hidden: list[int], shape: list[int] | None, classes: int
) -> None:
    # the size check counts a network built on the meta device: the same as the real one
    cfg = make_cfg(**{"model.kind": kind, "model.hidden": hidden, "data.shape": shape})
    d = int(np.prod(shape)) if shape else 7
    spec = numeric_spec(cfg, np.zeros((2, d), dtype=np.float32), list(range(classes)))
    with torch.device("meta"):
        counted = sum(t.numel() for t in spec.network().state_dict().values())
    assert counted == sum(t.numel() for t in spec.network().state_dict().values()) > 0


def test_a_0_1_model_file_still_loads_and_predicts_the_same(tmp_path: Path) -> None:
    # a champion registered by 0.1: format 1, numbers only, the stem's two buffers
    cfg = make_cfg(**{"model.hidden": [8]})
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    net = model.build(config.ModelConfig(hidden=[8]), x.mean(0), x.std(0), 3).eval()
    torch.save(net.state_dict(), tmp_path / modelfile.WEIGHTS_FILE)
    old = {
        "format": 1,
        "model": cfg.model.model_dump(),
        "shape": None,
        "num_classes": 3,
        "classes": ["a", "b", "c"],
        "num_features": 4,
    }
    (tmp_path / modelfile.MODEL_FILE).write_text(json.dumps(old))
    back, spec = modelfile.load_weights(tmp_path)
    assert spec.classes == ["a", "b", "c"] and spec.num_features == 4
    with torch.no_grad():
        assert torch.equal(back(torch.from_numpy(x)), net(torch.from_numpy(x)))


def test_a_refused_reload_keeps_the_served_version_and_says_so(
    capsys: pytest.CaptureFixture,
) -> None:
    calls = {"n": 0}

    def reload() -> serve.Served | None:
        calls["n"] += 1
        raise serve.Refused("2", 'models:/t/2 has no pickle-free form "quoted"')

    with TestClient(serve.create_app(_served(0, "1"), reload=reload)) as c:
        for _ in range(2):
            r = c.post("/reload")
            assert r.status_code == 409
            assert r.json() == {
                "reloaded": False,
                "version": "1",
                "refused": {
                    "version": "2",
                    "reason": 'models:/t/2 has no pickle-free form "quoted"',
                },
            }
        assert c.post("/predict", json={"features": [[0, 1, 2, 3]]}).status_code == 200
        assert c.get("/ready").json()["version"] == "1"
        text = c.get("/metrics").text
    assert "orchestrator_model_refusals_total 1" in text  # the same version counts once
    assert (
        'orchestrator_model_refused_info{version="2",reason="models:/t/2 has no '
        'pickle-free form \\"quoted\\""} 1'
    ) in text
    assert 'orchestrator_model_info{version="1"} 1' in text
    assert capsys.readouterr().out.count("refused model version 2, still serving version 1") == 1


def test_the_reloader_does_not_download_a_refused_version_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[str] = []

    def load(
        uri: str, tracking_uri: str | None = None, max_model_mb: float = 0, factories: tuple = ()
    ) -> None:
        loads.append(uri)
        raise serve.Refused("2", "bad")

    monkeypatch.setattr(registry, "resolve", lambda uri: ("2", "run2"))
    monkeypatch.setattr(serve, "load", load)
    reload = serve.reloader("models:/t@champion", "1")
    for _ in range(3):
        with pytest.raises(serve.Refused):
            reload()
    assert loads == ["models:/t@champion"]


def test_a_disk_error_while_loading_is_not_a_refusal_so_the_next_reload_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path)
    monkeypatch.setattr(registry, "resolve", lambda uri: ("2", "run2"))
    monkeypatch.setattr(registry, "download", lambda *a: None)

    def full_disk(folder: object, factories: tuple = ()) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(modelfile, "load_weights", full_disk)
    reload = serve.reloader("models:/t@champion", "1")
    for _ in range(2):  # not cached as a refusal: each reload tries the version again
        with pytest.raises(OSError):
            reload()
