"""The Python API: cheap to import, one configuration surface with the CLI."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from orchestrator.config import Config, ConfigError


def test_importing_the_package_imports_neither_ray_mlflow_nor_torch() -> None:
    code = (
        "import sys, orchestrator\n"
        "orchestrator.load_config\n"
        "print(sorted(m for m in ('ray', 'mlflow', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_config_is_a_path_a_mapping_or_a_config_with_dotted_overrides() -> None:
    import orchestrator

    quick = ROOT / "jobs/configs/quickstart.yaml"
    from_path = orchestrator.load_config(quick, {"train.lr": 0.01, "model.hidden": (8, 8)})
    assert isinstance(from_path, Config) and from_path.train.lr == 0.01
    assert from_path.model.hidden == [8, 8] and from_path.experiment == "digits-quickstart"
    from_dict = orchestrator.load_config({"data": {"path": "x.parquet"}}, {"sweep.num_samples": 3})
    assert from_dict.sweep.num_samples == 3
    again = orchestrator.load_config(
        from_dict, {"model.kind": "jobs.factories:residual_mlp", "model.args.depth": 3}
    )
    assert again.model.args == {"depth": 3} and from_dict.model.kind == "mlp"  # a new config
    with pytest.raises(ConfigError) as e:
        orchestrator.load_config({"data": {"path": "x"}}, {"train.lrr": 1})
    assert e.value.key == "train.lrr"
    with pytest.raises(ConfigError) as e:
        orchestrator.load_config(None)
    assert e.value.key == "data.path"


def test_sweep_is_both_the_package_and_the_function() -> None:
    import orchestrator
    import orchestrator.sweep as package

    assert orchestrator.sweep is package and callable(package)
    assert package.run.__module__ == "orchestrator.sweep.driver"


def test_curve_is_in_the_api_and_fails_by_name_before_any_work(tmp_path: Path) -> None:
    import orchestrator

    assert "curve" in orchestrator.__all__
    with pytest.raises(ConfigError) as e:  # no sweep of that name: nothing started
        orchestrator.curve("never-ran", str(tmp_path))
    assert e.value.key == "EXPERIMENT"


def test_autopilot_is_in_the_api_and_a_small_budget_fails_by_name_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orchestrator

    monkeypatch.chdir(tmp_path)  # where the default storage path (results) would be made

    assert "autopilot" in orchestrator.__all__
    with pytest.raises(ConfigError) as e:  # refused before the data is read or Ray starts
        orchestrator.autopilot(
            {"data": {"path": str(tmp_path / "nowhere.parquet")}},
            {"autopilot.budget_trials": 10},
        )
    assert e.value.key == "autopilot.budget_trials"
    assert not (tmp_path / "results").exists()
