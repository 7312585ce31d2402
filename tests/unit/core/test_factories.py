"""A user's own model: a factory named by its import path, built on the meta device with
every searched value before anything starts, regularized like the built-ins, and served
only where it is trusted."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_cfg, numeric_spec
from orchestrator import config
from orchestrator.config import ConfigError
from orchestrator.core import features, loop, model, modelfile
from orchestrator.core.task import Task

RESIDUAL = "jobs.factories:residual_mlp"


def raising(problem: model.Problem, width: int = 8) -> nn.Module:
    """A factory that refuses some of its arguments, as a user's might."""
    if width > 100:  # noqa: PLR2004
        raise ValueError(f"width {width} is too wide for this model")
    return nn.Linear(problem.inputs, problem.outputs)


def not_a_module(problem: model.Problem) -> object:
    """A factory that returns the wrong thing."""
    return "a string"


def _problem_parts() -> tuple:
    x = np.random.default_rng(0).normal(size=(32, 5)).astype(np.float32)
    return features.numeric_encoding(x), Task("multiclass", [0, 1, 2]), x


def _cfg(kind: str, **more: object) -> config.Config:
    return make_cfg(**{"model.kind": kind, **more})


def test_the_factory_gets_the_problem_and_its_args_behind_the_preprocessing() -> None:
    enc, task, x = _problem_parts()
    cfg = _cfg(RESIDUAL, **{"model.args": {"width": 16, "depth": 3}, "model.dropout": 0.25})
    net = model.network(cfg, enc, task)
    assert isinstance(net[0], model.Preprocess) and len(net) == 2  # noqa: PLR2004
    body = net[1]
    assert body[0].in_features == 5 and body[-1].out_features == 3  # noqa: PLR2004
    assert sum(isinstance(m, nn.LayerNorm) for m in body.modules()) == 4  # noqa: PLR2004
    assert all(m.p == 0.25 for m in body.modules() if isinstance(m, nn.Dropout))
    assert net(torch.from_numpy(x)).shape == (32, 3)
    # L1/L2 reach the factory's weight matrices (and never the stem's statistics)
    decayed = {id(p) for p in loop.weights(net)}
    assert {id(m.weight) for m in body.modules() if isinstance(m, nn.Linear)} <= decayed
    assert all(id(b) not in decayed for b in net[0].buffers())


@pytest.mark.parametrize(
    ("kind", "args", "key", "words"),
    [
        ("no_such_pkg.mod:fn", {}, "model.kind", "cannot import 'no_such_pkg.mod'"),
        ("jobs.factories:nope", {}, "model.kind", "has no function 'nope'"),
        ("test_factories:not_a_module", {}, "model.kind", "returned str, not an nn.Module"),
        (RESIDUAL, {"widht": 8}, "model.args.widht", "unexpected keyword argument 'widht'"),
        ("test_factories:raising", {"width": 500}, "model.args.width", "too wide"),
    ],
)
def test_a_wrong_factory_or_argument_is_refused_naming_the_key(
    kind: str, args: dict, key: str, words: str
) -> None:
    enc, task, _ = _problem_parts()
    with pytest.raises(ConfigError) as e:
        model.check_buildable(_cfg(kind, **{"model.args": args}), enc, task, {})
    assert e.value.key == key and words in e.value.problem, e.value


def test_each_searched_value_is_built_before_the_sweep_one_key_at_a_time() -> None:
    enc, task, _ = _problem_parts()
    space = {
        "model.args.width": {"type": "choice", "values": [8, 64, 400]},
        "train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    }
    cfg = _cfg("test_factories:raising", **{"sweep.space": space})
    with pytest.raises(ConfigError) as e:
        model.check_buildable(cfg, enc, task, cfg.sweep.space)
    assert e.value.key == "sweep.space.model.args.width"
    assert "400" in e.value.problem and "too wide" in e.value.problem
    fine = {"model.args.width": {"type": "randint", "low": 4, "high": 101}}
    model.check_buildable(_cfg("test_factories:raising", **{"sweep.space": fine}), enc, task, fine)


def test_args_are_only_for_factories_and_hold_plain_values() -> None:
    with pytest.raises(ConfigError) as e:
        make_cfg(**{"model.args": {"depth": 2}})
    assert e.value.key == "model.args" and "mlp" in e.value.problem
    with pytest.raises(ConfigError) as e:
        make_cfg(**{"model.kind": RESIDUAL, "model.args": {"depth": {"x": float("nan")}}})
    assert e.value.key == "model.args.depth"
    for bad in ("os.system", "a b:c", "pkg:", ":fn"):
        with pytest.raises(ConfigError) as e:
            make_cfg(**{"model.kind": bad})
        assert e.value.key == "model.kind"


def test_a_factory_declares_the_ranges_worth_searching() -> None:
    space = model.declared_space(RESIDUAL)
    assert set(space) == {"model.args.width", "model.args.depth"}
    assert model.declared_space("mlp") == {}
    # what it declares is a valid space for a config of that factory
    make_cfg(**{"model.kind": RESIDUAL, "sweep.space": space})


def test_a_factory_model_round_trips_the_model_file_only_where_trusted(tmp_path: Path) -> None:
    enc, task, x = _problem_parts()
    cfg = _cfg(RESIDUAL, **{"model.args": {"width": 16, "depth": 1}})
    torch.manual_seed(0)
    net = model.network(cfg, enc, task).eval()
    modelfile.write_weights(tmp_path, modelfile.spec_of(cfg, enc, task), net)
    assert json.loads((tmp_path / modelfile.MODEL_FILE).read_text())["model"]["kind"] == RESIDUAL
    with pytest.raises(modelfile.NotTrusted, match="not trusted by this server"):
        modelfile.load_weights(tmp_path)
    back, spec = modelfile.load_weights(tmp_path, factories=[RESIDUAL])
    with torch.no_grad():
        assert torch.equal(back(torch.from_numpy(x)), net(torch.from_numpy(x)))
    assert spec.model.args == {"width": 16, "depth": 1}
    # a built-in model needs no trust
    plain = make_cfg(**{"model.hidden": [4]})
    modelfile.write_weights(
        tmp_path, numeric_spec(plain, x, [0, 1, 2]), model.from_data(plain, x, 3)
    )
    modelfile.load_weights(tmp_path)
