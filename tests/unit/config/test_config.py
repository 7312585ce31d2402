import subprocess
from pathlib import Path

import pytest

from orchestrator import config
from orchestrator.config import ConfigError

ROOT = Path(__file__).resolve().parents[3]
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
    import typing

    from pydantic import BaseModel

    out = []
    for name, f in cls.model_fields.items():  # type: ignore[attr-defined]
        tp = f.annotation
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            out += _float_keys(tp, f"{prefix}{name}.")
        elif tp is float or float in typing.get_args(tp):
            out.append(f"{prefix}{name}")
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


# ---------------------------------------------------------------- strict types, the schema


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("train.epochs='4'", "train.epochs", "expected an integer, got str '4'"),
        ("train.epochs=4.0", "train.epochs", "expected an integer, got float 4.0"),
        ("train.epochs=true", "train.epochs", "expected an integer, got bool True"),
        ("scaling.use_gpu='yes'", "scaling.use_gpu", "expected true or false, got str"),
        ("scaling.use_gpu=1", "scaling.use_gpu", "expected true or false, got int 1"),
        ("model.hidden=[64, true]", "model.hidden[1]", "expected an integer"),
        ("model.hidden=64", "model.hidden", "expected a list, got int 64"),
        ("train.lr=true", "train.lr", "expected a number, got bool True"),
        ("train.lr=", "train.lr", "is empty"),
        ("experiment=3", "experiment", "expected text, got int 3"),
        ("train=4", "train", "expected a mapping, got int 4"),
        ("model.kind=rnn", "model.kind", "'rnn' is neither a built-in kind"),
        ("sweep.scheduler=hyper", "sweep.scheduler", "unknown scheduler 'hyper'"),
        ("train.early_stopping.patiense=3", "train.early_stopping.patiense", "unknown key"),
    ],
)
def test_strict_types_refuse_what_lax_coercion_would_take(
    override: str, key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(None, ["data.path=x.parquet", override])
    assert e.value.key == key and words in e.value.problem, e.value
    assert e.value.fix


def test_an_unknown_key_lists_the_section_keys_and_an_unknown_value_the_choices() -> None:
    e = _err({"train": {"lrr": 0.1}})
    assert "lr" in e.fix and "weight_decay" in e.fix and "epochs" in e.fix
    e = _err({"model": {"kind": "rnn"}})
    assert "'mlp'" in e.fix and "'cnn'" in e.fix and "package.module:function" in e.fix


def test_numbers_as_text_are_floats_but_never_ints() -> None:
    cfg = config.from_dict({"data": {"path": "x"}, "train": {"lr": "3e-3", "l1": 0}})
    assert cfg.train.lr == pytest.approx(3e-3) and type(cfg.train.l1) is float
    with pytest.raises(ConfigError, match="expected an integer"):
        config.from_dict({"data": {"path": "x"}, "train": {"epochs": "30"}})


def test_validation_leaves_its_input_as_it_was() -> None:
    import copy

    raw = {
        "data": {"path": "x"},
        "sweep": {
            "space": {
                "train.augment_shift": {"type": "randint", "low": "1", "high": 4.0},
                "train.lr": {"type": "uniform", "low": "1e-3", "high": 1},
            }
        },
    }
    before = copy.deepcopy(raw)
    cfg = config.from_dict(raw)
    assert raw == before
    assert cfg.sweep.space["train.augment_shift"] == {"type": "randint", "low": 1, "high": 4}
    assert cfg.sweep.space["train.lr"] == {"type": "uniform", "low": 1e-3, "high": 1.0}
    trial = config.with_values(cfg, {"train.lr": 0.01})
    assert cfg.train.lr != 0.01 and trial.train.lr == 0.01


def test_serve_only_checks_types_everywhere_and_values_only_of_serve() -> None:
    cfg = config.load(None, ["train.epochs=0", "serve.port=9001"], only="serve")
    assert cfg.serve.port == 9001  # no data.path, a bad epoch count: not serving's business
    with pytest.raises(ConfigError) as e:
        config.load(None, ["train.epochs=two"], only="serve")
    assert e.value.key == "train.epochs"
    with pytest.raises(ConfigError) as e:
        config.load(None, ["serve.port=0"], only="serve")
    assert e.value.key == "serve.port"


def test_every_field_is_documented_in_the_schema() -> None:
    schema = config.json_schema()
    missing = [
        f"{name}.{field}"
        for name, section in schema["$defs"].items()
        for field, spec in section["properties"].items()
        if not spec.get("description")
    ] + [k for k, spec in schema["properties"].items() if not spec.get("description")]
    assert not missing


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_passes_the_json_schema(path: Path) -> None:
    import jsonschema
    import yaml

    jsonschema.validate(yaml.safe_load(path.read_text()), config.json_schema())


def test_the_json_schema_refuses_what_the_loader_refuses() -> None:
    import jsonschema

    schema = config.json_schema()
    for bad in (
        {"train": {"lrr": 0.1}},
        {"train": {"epochs": "4"}},
        {"model": {"kind": "rnn"}},
        {"sweep": {"space": {"train.lr": {"type": "uniform", "low": 0}}}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"data": {"path": "x"}, **bad}, schema)
        with pytest.raises(ConfigError):
            config.from_dict({"data": {"path": "x"}, **bad})


def test_config_schema_and_check_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    from orchestrator import cli

    assert cli.main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False and "sweep" in schema["properties"]
    assert cli.main(["config", "schema", "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text()) == schema
    capsys.readouterr()
    quick = str(ROOT / "jobs/configs/quickstart.yaml")
    assert cli.main(["config", "check", quick, "train.lr=0.01", "serve.api_key=s3cret"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.01" in out and "s3cret" not in out and "api_key: '***'" in out
    assert cli.main(["config", "check", quick, "model.kind=rnn"]) == 2
    assert "'model.kind'" in capsys.readouterr().err


def test_serve_flags_are_short_for_config_keys() -> None:
    from orchestrator import cli

    args = cli.build_parser().parse_args(
        ["serve", "--model", "m", "--host", "0.0.0.0", "--port", "9", "--replicas", "3"]
        + ["--tracking-uri", "http://h:5000", "--allow-unauthenticated"]
    )
    flags = cli.serve_flags(args)
    assert flags == [
        "serve.host=0.0.0.0",
        "serve.port=9",
        "serve.replicas=3",
        "tracking.uri=http://h:5000",
        "serve.allow_unauthenticated=true",
    ]
    cfg = config.load(None, flags, only="serve")
    assert (cfg.serve.host, cfg.serve.port, cfg.serve.replicas) == ("0.0.0.0", 9, 3)
    assert cfg.tracking.uri == "http://h:5000" and cfg.serve.allow_unauthenticated


def test_a_bad_flag_value_is_refused_under_its_key_with_exit_2(
    capsys: pytest.CaptureFixture,
) -> None:
    from orchestrator import cli

    assert cli.main(["serve", "--model", "models:/m@champion", "--ray", "--replicas", "0"]) == 2
    assert "'serve.replicas'" in capsys.readouterr().err


def test_the_configuration_reference_is_generated_from_the_schema() -> None:
    from orchestrator.config import reference

    page = (ROOT / "docs/configuration.md").read_text()
    assert page == reference.markdown(), (
        "docs/configuration.md is stale: orchestrator config reference --out docs/configuration.md"
    )
    for section in ("data", "model", "train", "train.early_stopping", "sweep", "serve"):
        assert f"## `{section}`" in page
    assert "| `train.weight_decay` | float | `0.0001` |" in page
    assert "| `serve.api_key` | str \\| None | unset (secret) |" in page
