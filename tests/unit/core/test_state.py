"""The sweep folder's state file (``core.state``): finding a sweep by name or folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_cfg
from orchestrator.config import ConfigError
from orchestrator.core import state


def test_resume_finds_the_newest_sweep_or_says_what_to_pass(tmp_path: Path) -> None:
    for stamp in ("20260101-000000", "20260102-000000"):
        (tmp_path / f"exp-{stamp}").mkdir()
        (tmp_path / f"exp-{stamp}" / state.STATE_FILE).write_text("{}")
    (tmp_path / "exp-20260103-000000-confirm").mkdir()
    assert state.find_sweep("exp", str(tmp_path)).name == "exp-20260102-000000"
    given = state.find_sweep(str(tmp_path / "exp-20260101-000000"), "nowhere")
    assert given.name == "exp-20260101-000000"
    with pytest.raises(ConfigError) as e:
        state.find_sweep("other", str(tmp_path))
    assert e.value.key == "EXPERIMENT" and "--storage" in e.value.fix


def test_the_state_is_written_whole_and_read_back_with_its_secrets_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_cfg(**{"tracking.uri": "http://alice:s3cret@mlflow.internal:5000"})
    state.write(tmp_path, cfg, state.RUNNING, stamp="s", parent_run_id="p", fingerprint="f")
    assert not (tmp_path / (state.STATE_FILE + ".tmp")).exists()  # replaced, never half-written
    saved = state.read(tmp_path)
    assert saved["phase"] == state.RUNNING and saved["fingerprint"] == "f"
    assert "s3cret" not in (tmp_path / state.STATE_FILE).read_text()
    with pytest.raises(ConfigError) as e:
        state.saved_config(saved)  # the password is not in the environment: named, not guessed
    assert e.value.key == "tracking.uri"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    back = state.saved_config(saved, keys=["tracking.uri"])
    assert back.tracking.uri == "http://alice:s3cret@mlflow.internal:5000"


def test_storage_that_cannot_hold_files_is_refused_by_key(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as e:
        state.check_storage(make_cfg(**{"sweep.storage_path": str(blocker / "results")}))
    assert e.value.key == "sweep.storage_path" and "a-file" in e.value.problem
    state.check_storage(make_cfg(**{"sweep.storage_path": str(tmp_path / "new" / "results")}))
    assert not (tmp_path / "new").exists()  # probed in the nearest existing folder
