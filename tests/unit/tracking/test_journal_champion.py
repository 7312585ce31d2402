"""A champion kept for a replay (a real MLflow SQLite store, no Ray, no server): registered
once however often the replay dies on the way, and under the real id of a run that had only
a placeholder when the sweep kept it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import make_cfg, numeric_spec
from orchestrator.core import model, storage
from orchestrator.tracking import champions, outbox, registry


class _Dies(BaseException):
    """The replaying process killed at this point."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating one takes MLflow seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def _setup(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    uri: str,
    name: str,
    parent: str | None = None,
    trial: str | None = None,
) -> tuple[MlflowClient, str, str, Path]:
    """A sweep run and a trial run in experiment and model ``name``, and a champion kept in a
    sweep folder for them (under the ids given, e.g. placeholders); (client, parent id,
    trial id, folder)."""
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment(name)
    parent_id, trial_id = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    cfg = make_cfg(
        "x.parquet", **{"model.hidden": [4], "tracking.register_as": name, "tracking.uri": uri}
    )
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    net = model.from_data(cfg, x, num_classes=3)
    folder = tmp_path / "sweep"
    folder.mkdir()
    champions.keep_champion(
        folder,
        cfg,
        parent or parent_id,
        net,
        x,
        numeric_spec(cfg, x, [0, 1, 2]),
        {"test_accuracy": 0.5},
        trial or trial_id,
    )
    return client, parent_id, trial_id, folder


def _versions(client: MlflowClient, name: str) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'"))


def test_a_replay_killed_after_registering_registers_no_second_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    client, parent, trial, folder = _setup(tmp_path, monkeypatch, store, "killed")
    uri = store

    def dies(*a: Any, **kw: Any) -> None:
        raise _Dies

    with monkeypatch.context() as m:  # registered; killed as the first alias moves
        m.setattr(MlflowClient, "set_registered_model_alias", dies)
        with pytest.raises(_Dies):
            champions.replay(folder, uri, out=lambda _: None)
    assert _versions(client, "killed") == ["1"]
    kept = json.loads((folder / champions.PENDING / champions.CHAMPION_FILE).read_text())
    assert kept["version"] == "1"  # recorded before any alias moved
    real_register = mlflow.register_model

    def registers_then_dies(*a: Any, **kw: Any) -> str:
        real_register(*a, **kw)
        raise _Dies

    with monkeypatch.context() as m:  # a second version's registration, not yet recorded
        kept.pop("version")
        (folder / champions.PENDING / champions.CHAMPION_FILE).write_text(json.dumps(kept))
        client.delete_model_version("killed", "1")  # as if the first try had never registered
        m.setattr(mlflow, "register_model", registers_then_dies)
        with pytest.raises(_Dies):
            champions.replay(folder, uri, out=lambda _: None)
    assert _versions(client, "killed") == ["2"]
    said: list[str] = []
    assert champions.replay(folder, uri, out=said.append) == "2"  # found by its marker
    assert _versions(client, "killed") == ["2"]
    assert registry.champion_version(client, "killed") == "2"
    assert client.get_run(parent).data.tags["orchestrator.champion_version"] == "2"
    assert client.get_run(trial).data.tags["orchestrator.champion"] == "true"
    assert not (folder / champions.PENDING).exists()
    assert any("version 2" in line for line in said)
    # the test score was logged by each try that got that far, with the kept time: one point
    assert len(client.get_metric_history(parent, "test_accuracy")) == 1


def test_a_champion_kept_under_a_placeholder_registers_under_the_real_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    """The trial's run was made while MLflow was away; the sweep learnt its real id and lost
    it again (a second outage) before keeping the champion; the journal knows it."""
    placeholder = outbox.PLACEHOLDER + "0123456789ab"
    client, parent, trial, folder = _setup(tmp_path, monkeypatch, store, "kept", trial=placeholder)
    kept = json.loads((folder / champions.PENDING / champions.CHAMPION_FILE).read_text())
    assert kept["trial_run_id"] == placeholder  # nothing journaled yet: resolved on replay
    storage.Folder(str(folder)).write_atomic(outbox.IDS, json.dumps({placeholder: trial}))
    assert champions.replay(folder, store, out=lambda _: None) == "1"
    assert client.get_run(trial).data.tags["orchestrator.champion"] == "true"
    assert client.get_model_version("kept", "1").tags["trial_run_id"] == trial
    # and a champion kept after the id was journaled is stored resolved
    folder2 = tmp_path / "sweep2"
    folder2.mkdir()
    storage.Folder(str(folder2)).write_atomic(outbox.IDS, json.dumps({placeholder: trial}))
    cfg = make_cfg("x.parquet", **{"model.hidden": [4]})
    x = np.ones((2, 3), dtype=np.float32)
    champions.keep_champion(
        folder2,
        cfg,
        parent,
        model.from_data(cfg, x, num_classes=3),
        x,
        numeric_spec(cfg, x, [0, 1, 2]),
        {},
        placeholder,
    )
    kept = json.loads((folder2 / champions.PENDING / champions.CHAMPION_FILE).read_text())
    assert kept["trial_run_id"] == trial
    assert sorted(p.name for p in folder2.iterdir()) == sorted([outbox.IDS, champions.PENDING])
