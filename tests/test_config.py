import subprocess
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
        (
            {"sweep": {"space": {"train.nope": {"type": "uniform", "low": 0, "high": 1}}}},
            "sweep.space.train.nope",
            "not a config key",
        ),
        (
            {"sweep": {"space": {"model.dropout": {"type": "uniform", "low": 0, "high": 1.5}}}},
            "sweep.space.model.dropout",
            "would be invalid",
        ),
        (
            {"sweep": {"space": {"train.lr": {"type": "loguniform", "low": 0, "high": 1}}}},
            "sweep.space.train.lr.low",
            "low > 0",
        ),
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
    cfg = config.load(
        f,
        [
            "train.lr=0.01",
            "model.hidden=[8,4]",
            "sweep.space.train.l1={type: loguniform, low: 1e-6, high: 1e-3}",
        ],
    )
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


# ---------------------------------------------------------------- inf, nan, null sections


def _float_keys(cls: type = config.Config, prefix: str = "") -> list[str]:
    """Every float key of the schema (``float`` or ``float | None``), found by walking it."""
    import dataclasses
    import typing

    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _float_keys(tp, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        elif tp is float or float in typing.get_args(tp):
            out.append(f"{prefix}{f.name}")
    return out


FLOAT_KEYS = _float_keys()


def test_the_schema_has_the_float_keys_the_issue_names() -> None:
    assert {"train.weight_decay", "tracking.drain_timeout", "serve.poll_s"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", "inf", "nan", "1e999"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_must_be_finite(key: str, text: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(None, ["data.path=x.parquet", f"{key}={text}"])
    assert e.value.key == key and "finite" in e.value.problem


def test_a_searched_range_must_be_finite() -> None:
    e = _err(
        {
            "sweep": {
                "space": {
                    "train.augment_shift": {"type": "randint", "low": 1, "high": float("inf")}
                }
            }
        }
    )
    assert e.key == "sweep.space.train.augment_shift" and "finite" in e.problem


@pytest.mark.parametrize(
    "overrides",
    [[], ["sweep.space.train.lr={type: uniform, low: 0.001, high: 0.1}"], ["sweep.num_samples=2"]],
)
def test_a_null_section_is_a_config_error_naming_it(overrides: list[str], tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("data: {path: a.parquet}\nsweep:\n")  # every key under sweep: commented out
    with pytest.raises(ConfigError) as e:
        config.load(f, overrides)
    assert e.value.key == "sweep" and "null" in e.value.problem and "sweep:" in e.value.fix


# ---------------------------------------------------------------- the same through the CLI


def _sweep_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "sweep", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )


def test_cli_exits_2_on_an_infinite_drain_and_a_null_sweep_section(
    digits_path: Path, tmp_path: Path
) -> None:
    db = tmp_path / "mlflow.db"
    common = [
        f"data.path={digits_path}",
        f"tracking.uri=sqlite:///{db}",
        f"sweep.storage_path={tmp_path / 'results'}",
    ]
    proc = _sweep_cli(
        tmp_path, str(ROOT / "jobs/configs/quickstart.yaml"), *common, "tracking.drain_timeout=.inf"
    )
    assert proc.returncode == 2 and "'tracking.drain_timeout'" in proc.stderr, proc.stderr
    f = tmp_path / "null.yaml"
    f.write_text("experiment: nulls\nsweep: null\n")
    proc = _sweep_cli(
        tmp_path, str(f), *common, "sweep.space.train.lr={type: uniform, low: 0.001, high: 0.1}"
    )
    assert proc.returncode == 2 and "'sweep'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not db.exists() and not (tmp_path / "results").exists()


def test_cli_exits_2_on_unwritable_storage_before_any_mlflow_run(
    digits_path: Path, tmp_path: Path
) -> None:
    # a folder under a plain file: no one can write there, root included (these tests may
    # run as root, for whom a chmod-ed folder is writable)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    db = tmp_path / "mlflow.db"
    proc = _sweep_cli(
        tmp_path,
        str(ROOT / "jobs/configs/quickstart.yaml"),
        f"data.path={digits_path}",
        f"tracking.uri=sqlite:///{db}",
        f"sweep.storage_path={blocker / 'results'}",
        "sweep.num_samples=1",
        "train.epochs=1",
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "'sweep.storage_path'" in proc.stderr and "Traceback" not in proc.stderr
    if db.exists():  # nothing written: no store at all, or at least no run in it
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{db}")
        exps = [e.experiment_id for e in client.search_experiments()]
        assert not client.search_runs(exps)
