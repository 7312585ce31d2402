from pathlib import Path

import pytest

from orchestrator import config
from orchestrator.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_is_valid_and_has_its_launch_command(path: Path) -> None:
    cfg = config.load(path)
    assert cfg.data.path
    assert "orchestrator " in path.read_text().split("\n\n")[0]  # header comment


def test_quickstart_searches_l2_and_dropout_with_asha() -> None:
    cfg = config.load(ROOT / "jobs/configs/quickstart.yaml")
    assert cfg.sweep.space["train.weight_decay"]["type"] == "loguniform"
    assert cfg.sweep.space["model.dropout"]["type"] == "uniform"
    assert cfg.sweep.scheduler == "asha" and cfg.sweep.num_samples >= 8


def _err(raw: dict) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        config.from_dict({"data": {"path": "x.parquet"}, **raw})
    return e.value


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"train": {"lrr": 0.1}}, "train.lrr", "unknown key"),
        ({"model": {"dropout": "lots"}}, "model.dropout", "expected a number"),
        ({"train": {"epochs": 2.5}}, "train.epochs", "expected an integer"),
        ({"train": {"lr": -0.1}}, "train.lr", "positive"),
        ({"model": {"dropout": 1.0}}, "model.dropout", "[0, 1)"),
        ({"sweep": {"stall_timeout": 0}}, "sweep.stall_timeout", "> 0 seconds"),
        ({"data": {"path": ""}}, "data.path", "not set"),
        ({"scaling": {"use_gpu": "yes"}}, "scaling.use_gpu", "true or false"),
        ({"sweep": {"space": {"train.nope": {"type": "uniform", "low": 0, "high": 1}}}},
         "sweep.space.train.nope", "not a config key"),
        ({"sweep": {"space": {"model.dropout": {"type": "uniform", "low": 0, "high": 1.5}}}},
         "sweep.space.model.dropout", "would be invalid"),
        ({"sweep": {"space": {"train.lr": {"type": "loguniform", "low": 0, "high": 1}}}},
         "sweep.space.train.lr.low", "low > 0"),
        ({"sweep": {"reduction_factor": 1}}, "sweep.reduction_factor", "at least 2"),
    ],
)
def test_bad_values_name_the_dotted_key_and_a_fix(raw: dict, key: str, words: str) -> None:
    e = _err(raw)
    assert e.key == key
    assert words in e.problem
    assert e.fix and "fix:" in str(e)


def test_overrides_parse_yaml_values_and_win_over_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("data: {path: a.parquet}\ntrain: {lr: 0.1}\n")
    cfg = config.load(f, ["train.lr=0.01", "model.hidden=[8,4]",
                          "sweep.space.train.l1={type: loguniform, low: 1e-6, high: 1e-3}"])
    assert cfg.train.lr == 0.01 and cfg.model.hidden == [8, 4]
    assert cfg.sweep.space["train.l1"]["low"] == pytest.approx(1e-6)


def test_yaml_exponent_without_dot_is_a_number() -> None:
    # PyYAML reads 1e-4 as the string "1e-4"; it must still be a float here.
    cfg = config.from_dict({"data": {"path": "x"}, "train": {"weight_decay": "1e-4"}})
    assert cfg.train.weight_decay == pytest.approx(1e-4)


def test_malformed_override_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        config.load(None, ["train.lr"])
    assert "key=value" in e.value.problem


def test_with_values_gives_a_validated_copy_and_flatten_is_dotted() -> None:
    base = config.from_dict({"data": {"path": "x"}})
    trial = config.with_values(base, {"train.weight_decay": 0.5, "model.dropout": 0.3})
    assert trial.train.weight_decay == 0.5 and base.train.weight_decay != 0.5
    flat = config.flatten(trial)
    assert flat["model.dropout"] == 0.3 and flat["train.weight_decay"] == 0.5
    assert "sweep.space" in flat and config.config_hash(trial) != config.config_hash(base)


def test_config_error_survives_pickling() -> None:
    import pickle

    e = pickle.loads(pickle.dumps(ConfigError("a.b", "bad", "fix it")))
    assert (e.key, e.problem, e.fix) == ("a.b", "bad", "fix it")
