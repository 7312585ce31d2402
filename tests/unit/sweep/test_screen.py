"""The screen: plain lines without a terminal, a live view of the ledger on one."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import pytest
from rich.console import Console

from orchestrator.core.ledger import TrialRecord
from orchestrator.sweep import screen


def _book(records: list[TrialRecord], total: int = 4) -> SimpleNamespace:
    cfg = SimpleNamespace(train=SimpleNamespace(epochs=10))
    return SimpleNamespace(
        records=records, total=total, key="val_loss", mode="min", cfg=cfg, title="sweep"
    )


def _running(tid: str, epochs: int) -> TrialRecord:
    hist = [
        {"epoch": float(i + 1), "train_loss": 0.1, "val_loss": 0.5 - i / 100} for i in range(epochs)
    ]
    return TrialRecord(tid, {"train.lr": 0.01}, epochs=epochs, best=hist[-1], history=hist)


def test_live_only_on_a_terminal_and_never_in_ci_or_with_plain(monkeypatch) -> None:
    tty = SimpleNamespace(isatty=lambda: True)
    pipe = SimpleNamespace(isatty=lambda: False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("ORCHESTRATOR_PLAIN", raising=False)
    assert screen.wants_live(stream=tty) and not screen.wants_live(stream=pipe)
    assert not screen.wants_live(plain=True, stream=tty)
    monkeypatch.setenv("CI", "true")
    assert not screen.wants_live(stream=tty)
    monkeypatch.delenv("CI")
    monkeypatch.setenv("ORCHESTRATOR_PLAIN", "1")
    assert not screen.wants_live(stream=tty)


def test_plain_mode_prints_lines_and_a_progress_line_now_and_then(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = screen.Screen(live_view=False)
    s("[sweep] hello")
    book = _book([_running("t1", 3)])
    s.trials(book, {"t1": "RUNNING"})
    s.trials(book, {"t1": "RUNNING"})  # too soon for another line
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[sweep] hello"
    assert len(out) == 2 and out[1].startswith("[sweep] 0/4 trials done, 1 running")
    assert "t1 epoch 3/10 val_loss 0.4800" in out[1]
    monkeypatch.setattr(screen, "PLAIN_EVERY_S", 0.0)
    time.sleep(1 / screen.FRAMES_PER_S)
    s.trials(book, {"t1": "RUNNING"})
    assert capsys.readouterr().out.startswith("[sweep] 0/4 trials done")
    with s.phase("scoring the champion on the test split"):
        pass
    assert capsys.readouterr().out == "[sweep] scoring the champion on the test split ...\n"


def test_the_live_view_draws_the_running_trials_and_lines_above_them() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160, color_system=None)
    s = screen.Screen(live_view=True, console=console)
    book = _book([_running("t1", 3), _running("t2", 5)])
    s.trials(book, {"t1": "RUNNING", "t2": "PAUSED"})
    s("[sweep] trial t0 TERMINATED; 1/4 done")
    s.note("MLflow unreachable")
    time.sleep(2 / screen.FRAMES_PER_S)  # the refresh thread draws the frame
    s.rest()
    s.close()
    out = buf.getvalue()
    assert "[sweep] trial t0 TERMINATED; 1/4 done" in out
    assert "t1" in out and "3/10" in out and "paused" in out
    assert "[warning] MLflow unreachable" in out and "! MLflow unreachable" in out
    assert s._live is None  # taken down


def test_of_and_phase_work_with_a_plain_print_too(capsys: pytest.CaptureFixture[str]) -> None:
    assert screen.of(print) is None
    with screen.phase(print, "registering the champion in MLflow"):
        pass
    assert capsys.readouterr().out == "[sweep] registering the champion in MLflow ...\n"


def test_between_frames_and_phases_the_view_draws_nothing() -> None:
    s = screen.Screen(live_view=True, console=Console(file=io.StringIO(), force_terminal=True))
    assert str(s._renderable()) == ""
    with s.phase("refitting"):
        assert str(s._renderable()).startswith("refitting ... ")
    assert str(s._renderable()) == ""
    s.close()


def test_warnings_that_matter_stay_in_view_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    s = screen.Screen(live_view=False)
    try:
        logging.getLogger(screen.PLACEMENT_LOGGER).warning(
            "Ignore this message if the cluster is autoscaling. No trial is running and no new "
            "trial has been started within the last 60 seconds. This could be due to the "
            "cluster not having enough resources available. You asked for 3.0 cpu and 0 gpu "
            "per trial, but the cluster only has 2.0 cpu and 0 gpu. Stop the tuning and adjust"
        )
        s("[tracking] MLflow unreachable (connection refused); training goes on")
        notes = s._current().notes
        assert notes[0] == (
            "no trial could be placed for a while: You asked for 3.0 cpu and 0 gpu per trial, "
            "but the cluster only has 2.0 cpu and 0 gpu"
        )
        assert notes[1].startswith("MLflow unreachable")
        s("[tracking] MLflow answers again: 3 kept write(s) sent")
        assert len(s._current().notes) == 1  # MLflow's note goes when it is back
        assert "[warning] no trial could be placed" in capsys.readouterr().out
    finally:
        s.close()
    assert logging.getLogger(screen.PLACEMENT_LOGGER).propagate  # Ray's logging as it was


def test_a_streamed_datas_scan_is_a_phase_and_data_read_whole_is_not(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import make_cfg
    from orchestrator.core import data

    path = data.export("iris", tmp_path / "iris.parquet")
    with screen.reading(print, make_cfg(str(path), **{"data.loader": "stream"})):
        pass
    assert capsys.readouterr().out.startswith("[sweep] scanning the data")
    with screen.reading(print, make_cfg(str(path), **{"data.loader": "memory"})):
        pass
    with screen.reading(print, make_cfg(str(tmp_path / "missing.parquet"))):
        pass  # the missing file is prepare()'s to name
    assert capsys.readouterr().out == ""
