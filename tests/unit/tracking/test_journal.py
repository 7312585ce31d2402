"""The outbox's journal under crashes and a flapping server (fake client, fast): the
placeholder -> run id mapping outlives the process, a cut-short last line is skipped, a bad
line elsewhere is named, kept writes are fsynced, and a replay that dies between a write
reaching MLflow and the journal saying so does not create a run twice."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow.entities import Metric
from test_outbox import FlakyClient

from orchestrator.tracking import outbox, schema


def _metric(step: int) -> list[Metric]:
    return [Metric("val_loss", 1.0 / step, 1000 + step, step)]


def _quiet(_: str) -> None:
    pass


def test_a_second_outage_right_after_a_creation_is_replayed_leaves_its_writes_resolvable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flapping server: a run made while away, the server back for two answers (the
    replay's look for the run, its creation), away again; the process ends. A replay must
    still find that run's real id."""
    monkeypatch.setattr(outbox, "FIRST_PAUSE", 0.05)  # retry at once, not in 2 s
    client = FlakyClient()
    box = outbox.Outbox(client, out=_quiet)
    box.use_journal(tmp_path)
    parent = box.create_run("0", run_name="sweep").info.run_id
    client.up = False
    trial = box.create_run("0", run_name="trial-a").info.run_id
    assert trial.startswith(outbox.PLACEHOLDER)
    box.log_batch(trial, metrics=_metric(1))
    box.set_tag(trial, "orchestrator.status", "finished")
    client.up, client.answers = True, 2  # back for two calls, then away again
    assert not box.drain(block=True, patience=1)
    assert client.created == 2 and len(box.queue) == 2  # the trial's writes still name it
    del box  # the driver is gone; its in-memory mapping with it

    client.up, client.answers = True, None
    later = outbox.Outbox.from_journal(client, tmp_path, out=_quiet)
    assert later.drain(block=True, patience=10)
    assert later.refused == 0 and client.created == 2  # not created again
    assert client.calls[-2:] == [
        ("log_batch", ("real2", (("val_loss", 1),))),
        ("set_tag", ("real2", "orchestrator.status", "finished")),
    ]
    assert outbox.load_ids(tmp_path) == {trial: "real2"}  # for Tune's state, a kept champion
    assert not (tmp_path / outbox.JOURNAL).exists()
    assert client.tags["real1"][schema.OUTBOX_ID] != client.tags["real2"][schema.OUTBOX_ID]
    assert parent == "real1"


def test_a_refused_write_is_set_aside_and_the_replay_goes_on(tmp_path: Path) -> None:
    client, said = FlakyClient(), []
    box = outbox.Outbox(client, out=_quiet)
    box.use_journal(tmp_path)
    run = box.create_run("0").info.run_id
    client.up = False
    box.set_tag(run, "bad", "x")  # MLflow will refuse this one for what it is
    box.set_tag(run, "good", "y")
    client.up = True
    later = outbox.Outbox.from_journal(client, tmp_path, out=said.append)
    assert later.drain(block=True, patience=10)  # no exception: the replay goes on
    assert later.refused == 1 and client.calls[-1] == ("set_tag", ("real1", "good", "y"))
    assert not (tmp_path / outbox.JOURNAL).exists()  # not kept forever
    aside = [json.loads(x) for x in (tmp_path / outbox.REFUSED).read_text().splitlines()]
    assert [(e["args"][1], "INVALID_PARAMETER_VALUE" in e["error"]) for e in aside] == [
        ("bad", True)
    ]
    assert any(outbox.REFUSED in line for line in said)
    again = outbox.Outbox.from_journal(client, tmp_path, out=_quiet)
    assert again.queue == [] and again.drain()


def _journal(folder: Path, n: int) -> list[str]:
    lines = [json.dumps(outbox.encode("set_tag", ("real1", f"k{i}", "v"), {})) for i in range(n)]
    (folder / outbox.JOURNAL).write_text("".join(x + "\n" for x in lines))
    return lines


def test_a_last_line_cut_short_by_a_crash_is_skipped_with_a_warning(tmp_path: Path) -> None:
    lines = _journal(tmp_path, 2)
    with (tmp_path / outbox.JOURNAL).open("a") as f:
        f.write(lines[0][:17])  # the writer died mid-line
    said: list[str] = []
    assert [e["args"][1] for e in outbox.load_journal(tmp_path, said.append)] == ["k0", "k1"]
    assert len(said) == 1 and "line 3 is cut short" in said[0]
    # a replay compacts it first, so what it appends later never follows half a line
    box = outbox.Outbox.from_journal(FlakyClient(), tmp_path, out=_quiet)
    assert len(box.queue) == 2
    assert (tmp_path / outbox.JOURNAL).read_text() == "".join(x + "\n" for x in lines)


def test_a_bad_line_before_the_last_is_an_error_naming_it(tmp_path: Path) -> None:
    lines = _journal(tmp_path, 3)
    text = "\n".join([lines[0], lines[1][:20], lines[2]]) + "\n"
    (tmp_path / outbox.JOURNAL).write_text(text)
    with pytest.raises(
        outbox.JournalError,
        match=r"mlflow-journal.jsonl line 2 of 3: not "
        r"valid JSON.*fix or delete that line",
    ):
        outbox.load_journal(tmp_path)
    (tmp_path / outbox.JOURNAL).write_text(
        lines[0] + '\n{"method": "drop_table"}\n' + lines[1] + "\n"
    )
    with pytest.raises(outbox.JournalError, match="line 2 of 3: method: expected one of"):
        outbox.load_journal(tmp_path)


def test_sent_lines_mark_progress_and_the_loader_checks_them(tmp_path: Path) -> None:
    lines = _journal(tmp_path, 3)
    with (tmp_path / outbox.JOURNAL).open("a") as f:
        f.write('{"sent": 1}\n{"sent": 2}\n')
    assert [e["args"][1] for e in outbox.load_journal(tmp_path)] == ["k2"]
    (tmp_path / outbox.JOURNAL).write_text(lines[0] + '\n{"sent": 5}\n' + lines[1] + "\n")
    with pytest.raises(outbox.JournalError, match="line 2 of 3: sent: expected a count"):
        outbox.load_journal(tmp_path)


def test_kept_writes_and_learnt_ids_are_fsynced_file_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    client = FlakyClient()
    box = outbox.Outbox(client, out=_quiet)
    box.use_journal(tmp_path)
    client.up = False
    run = box.create_run("0").info.run_id
    journal = str(tmp_path / outbox.JOURNAL)
    assert journal in synced and str(tmp_path) in synced  # the file, and its new entry
    synced.clear()
    box.log_batch(run, metrics=_metric(1))
    assert synced == [journal]  # each kept write is on disk before the call returns
    synced.clear()
    client.up = True
    assert box.drain(block=True, patience=10)
    ids = str(tmp_path / outbox.IDS)
    assert ids + ".tmp" in synced and synced.count(str(tmp_path)) >= 2  # ids, journal gone
    assert synced.index(ids + ".tmp") < len(synced) - 1  # ids before the journal goes


class _Dies(BaseException):
    """The replaying process killed right after a call reached the server."""


class DiesAfterCreating(FlakyClient):
    def __init__(self) -> None:
        super().__init__()
        self.die = False

    def create_run(self, exp_id: str, run_name: str = "", tags: Any = None) -> Any:
        run = super().create_run(exp_id, run_name, tags)
        if self.die:
            raise _Dies
        return run


def test_a_replay_killed_between_creating_a_run_and_journaling_it_does_not_create_it_twice(
    tmp_path: Path,
) -> None:
    client = DiesAfterCreating()
    client.up = False
    box = outbox.Outbox(client, out=_quiet)
    box.use_journal(tmp_path)
    run = box.create_run("0", run_name="trial-a").info.run_id
    box.log_batch(run, metrics=_metric(1))
    client.up, client.die = True, True
    with pytest.raises(_Dies):
        outbox.Outbox.from_journal(client, tmp_path, out=_quiet).drain(block=True, patience=5)
    assert client.created == 1 and outbox.load_ids(tmp_path) == {}  # made, not journaled
    client.die = False
    later = outbox.Outbox.from_journal(client, tmp_path, out=_quiet)
    assert later.drain(block=True, patience=5)
    assert client.created == 1  # found by its marker tag, not made again
    assert later.run_id(run) == "real1" and client.calls[-1][1][0] == "real1"


class LosesTheAnswer(FlakyClient):
    """The server makes the run, but its answer never arrives (a timeout)."""

    def create_run(self, exp_id: str, run_name: str = "", tags: Any = None) -> Any:
        super().create_run(exp_id, run_name, tags)
        self.up = False
        raise requests.exceptions.ReadTimeout("Read timed out. (read timeout=10)")


def test_a_creation_whose_answer_was_lost_is_found_not_made_again(tmp_path: Path) -> None:
    client = LosesTheAnswer()
    box = outbox.Outbox(client, out=_quiet)
    box.use_journal(tmp_path)
    run = box.create_run("0", run_name="trial-a").info.run_id
    assert run.startswith(outbox.PLACEHOLDER) and client.created == 1
    box.set_tag(run, "k", "v")
    client.up = True
    client.__class__ = FlakyClient  # the server answers normally again
    assert box.drain(block=True, patience=10)
    assert client.created == 1 and client.calls[-1] == ("set_tag", ("real1", "k", "v"))


def test_a_resumed_driver_sends_what_the_dead_one_kept_first(tmp_path: Path) -> None:
    client = FlakyClient()
    dead = outbox.Outbox(client, out=_quiet)
    dead.use_journal(tmp_path)
    client.up = False
    run = dead.create_run("0", run_name="trial-a").info.run_id
    dead.log_batch(run, metrics=_metric(1))
    assert len(outbox.load_journal(tmp_path)) == 2
    del dead  # the driver died; `orchestrator resume` starts a new one on the same folder
    client.up = True
    said: list[str] = []
    box = outbox.Outbox(client, out=said.append, background=True)
    box.use_journal(tmp_path)
    assert any("kept by an earlier driver" in line for line in said)
    assert box.queue == [] and box.run_id(run) == "real1"
    box.log_batch(run, metrics=_metric(2))  # Tune's saved state still holds the placeholder
    assert box.drain(block=True, patience=10)
    assert [c[1][:2] for c in client.calls[1:]] == [
        ("real1", (("val_loss", 1),)),
        ("real1", (("val_loss", 2),)),
    ]


def test_the_replay_command_names_a_damaged_line_and_refused_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`orchestrator tracking replay` (real SQLite store): exit 1 and what to do, no
    traceback, for a journal damaged in the middle and for writes MLflow refuses."""
    from orchestrator import cli

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    lines = _journal(tmp_path, 3)
    (tmp_path / outbox.JOURNAL).write_text(f"{lines[0]}\n{lines[1][:9]}\n{lines[2]}\n")
    assert cli.main(["tracking", "replay", str(tmp_path), "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err
    assert "tracking replay:" in err and "line 2 of 3" in err and "Traceback" not in err
    _journal(tmp_path, 2)  # two tags for a run the store never had
    assert cli.main(["tracking", "replay", str(tmp_path), "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err
    assert "refused 2 of the 2 kept write(s)" in err and outbox.REFUSED in err
    assert not (tmp_path / outbox.JOURNAL).exists()
    assert len((tmp_path / outbox.REFUSED).read_text().splitlines()) == 2
    assert cli.main(["tracking", "replay", str(tmp_path), "--tracking-uri", uri]) == 0
