"""The CLI's door: config and data errors exit 2 before Ray or MLflow start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.execution import runtime

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "jobs/configs/quickstart.yaml")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["train.lrr=0.1"], "train.lrr"),
        (["train.epochs=ten"], "train.epochs"),
        (["train.lr=-1"], "train.lr"),
        (["model.dropout=1.2"], "model.dropout"),
        (["data.path=/nonexistent/x.parquet"], "data.path"),
        (["data.label=digit"], "data.label"),
    ],
)
def test_bad_config_exits_2_naming_the_key_and_writes_nothing(
    overrides: list[str],
    key: str,
    digits_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    args = [
        "sweep",
        QUICKSTART,
        f"data.path={digits_path}",
        f"tracking.uri=sqlite:///{db}",
        f"sweep.storage_path={tmp_path / 'results'}",
        *overrides,
    ]
    assert cli.main(args) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"'{key}'" in err and "fix:" in err
    assert not db.exists() and not (tmp_path / "results").exists()


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for sub in (["sweep"], ["serve"], ["data", "export"], ["resume"], ["tracking", "replay"]):
        with pytest.raises(SystemExit) as done:
            cli.main([*sub, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: orchestrator {' '.join(sub)}"), out[:200]


def test_jobs_entry_point_reports_config_errors_with_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.sweep", QUICKSTART, f"data.path={tmp_path}/missing.parquet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "'data.path'" in proc.stderr


def test_serve_config_needs_no_data_section_but_checks_its_own() -> None:
    from orchestrator import config

    assert config.load(None, ["serve.port=9000"], only="serve").serve.port == 9000
    with pytest.raises(config.ConfigError) as e:
        config.load(None, ["serve.max_batch=0"], only="serve")
    assert e.value.key == "serve.max_batch"


def test_overrides_may_follow_options(capsys: pytest.CaptureFixture[str]) -> None:
    # `submit CONFIG --address X key=value`: the override still reaches the config check
    assert (
        cli.main(
            [
                "submit",
                "jobs/configs/quickstart.yaml",
                "--address",
                "http://127.0.0.1:1",
                "train.epochs=0",
            ]
        )
        == 2
    )
    assert "train.epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["submit", "jobs/configs/quickstart.yaml", "--address", "x", "--bogus"])


def test_a_stalled_sweep_exits_5_with_the_watchdogs_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator import sweep
    from orchestrator.analysis import progress

    def stalls(*args: object, **kw: object) -> None:
        raise progress.SweepStalled("trial t_00001 (model.dropout=0.1) has reported nothing")

    monkeypatch.setattr(sweep, "run", stalls)
    monkeypatch.setattr(runtime, "ensure_env", lambda: None)
    assert cli.main(["sweep", QUICKSTART]) == cli.EXIT_STALLED == 5
    assert "sweep stalled: trial t_00001" in capsys.readouterr().err
