"""The outbox between the sweep and MLflow: a tracking server that goes away never stops
training, and nothing it should have received is lost or reordered (fake client)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from mlflow.entities import Metric

from orchestrator import config
from orchestrator.tracking import outbox, schema, writer


class FlakyClient:
    """A client whose server can be switched off (or goes away after ``answers`` more calls):
    calls then fail like MLflow's do. Like MLflow, it refuses writes to runs it never made."""

    def __init__(self) -> None:
        self.up = True
        self.answers: int | None = None  # calls left before the server goes away
        self.calls: list[tuple[str, tuple]] = []
        self.files: list[bytes] = []
        self.created = 0
        self.tags: dict[str, dict[str, str]] = {}  # run id -> its tags

    def _check(self, run_id: str | None = None) -> None:
        if self.answers is not None:
            self.up, self.answers = self.answers > 0 and self.up, max(self.answers - 1, 0)
        if not self.up:
            raise requests.exceptions.ConnectionError(
                "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded"
            )
        if run_id is not None and run_id not in self.tags:
            raise ValueError(f"RESOURCE_DOES_NOT_EXIST: Run '{run_id}' not found")

    def create_run(self, exp_id: str, run_name: str = "", tags: Any = None) -> Any:
        self._check()
        self.created += 1
        run_id = f"real{self.created}"
        self.tags[run_id] = dict(tags or {})
        self.calls.append(("create_run", (run_name,)))
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id))

    def search_runs(self, exp_ids: list[str], filter_string: str = "", **kw: Any) -> list:
        self._check()
        marker = filter_string.split("'")[1]  # tags.`orchestrator.outbox_id` = 'offline-...'
        return [
            SimpleNamespace(info=SimpleNamespace(run_id=r))
            for r, tags in self.tags.items()
            if tags.get(schema.OUTBOX_ID) == marker
        ]

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = ()) -> None:
        self._check(run_id)
        self.calls.append(("log_batch", (run_id, tuple((m.key, m.step) for m in metrics))))

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._check()
        if key == "bad":
            raise ValueError("INVALID_PARAMETER_VALUE: tag key 'bad'")
        self._check(run_id)
        self.calls.append(("set_tag", (run_id, key, value)))

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str = "") -> None:
        self._check(run_id)
        self.files.append(Path(local_path).read_bytes())
        self.calls.append(("log_artifact", (run_id, artifact_path)))

    def get_run(self, run_id: str) -> str:
        self._check()
        return run_id


def _metric(step: int) -> list[Metric]:
    return [Metric("val_loss", 1.0 / step, 0, step)]


def test_writes_go_straight_through_while_the_server_answers() -> None:
    client = FlakyClient()
    box = outbox.Outbox(client, out=lambda _: None)
    run = box.create_run("0", run_name="trial-a")
    box.log_batch(run.info.run_id, metrics=_metric(1))
    assert client.calls == [
        ("create_run", ("trial-a",)),
        ("log_batch", ("real1", (("val_loss", 1),))),
    ]
    assert box.queue == [] and box.kept == 0


def test_an_outage_keeps_writes_in_order_and_they_land_once_it_is_over(tmp_path: Path) -> None:
    client, said = FlakyClient(), []
    box = outbox.Outbox(client, out=said.append)
    box.use_journal(tmp_path)
    first = box.create_run("0", run_name="trial-a").info.run_id
    box.log_batch(first, metrics=_metric(1))
    client.up = False
    box.log_batch(first, metrics=_metric(2))  # no exception: training goes on
    second = box.create_run("0", run_name="trial-b").info.run_id  # made while away
    assert second.startswith(outbox.PLACEHOLDER)
    box.log_batch(second, metrics=_metric(1))
    box.set_tag(second, "orchestrator.status", "finished")
    assert len(box.queue) == 4 and len(outbox.load_journal(tmp_path)) == 4
    assert sum("unreachable" in line for line in said) == 1
    client.up = True
    box.log_batch(first, metrics=_metric(3))  # queued behind the others, not before them
    assert box.drain(block=True, patience=10)
    assert client.calls[2:] == [
        ("log_batch", ("real1", (("val_loss", 2),))),
        ("create_run", ("trial-b",)),
        ("log_batch", ("real2", (("val_loss", 1),))),
        ("set_tag", ("real2", "orchestrator.status", "finished")),
        ("log_batch", ("real1", (("val_loss", 3),))),
    ]
    assert box.run_id(second) == "real2"
    box.set_tag(second, "late", "1")  # the ledger still holds the placeholder
    assert client.calls[-1] == ("set_tag", ("real2", "late", "1"))
    assert box.get_run(second) == "real2"  # reads too
    assert not (tmp_path / outbox.JOURNAL).exists()  # all sent: nothing to replay
    assert any("answers again: 5 kept" in line for line in said)


def test_a_wrong_write_still_raises() -> None:
    box = outbox.Outbox(FlakyClient(), out=lambda _: None)
    with pytest.raises(ValueError, match="INVALID_PARAMETER_VALUE"):
        box.set_tag("real1", "bad", "x")
    assert box.queue == []


def test_a_journal_outlives_the_process_and_its_temporary_files(tmp_path: Path) -> None:
    client = FlakyClient()
    client.up = False
    box = outbox.Outbox(client, out=lambda _: None)
    box.use_journal(tmp_path)
    run = box.create_run("0", run_name="trial-a").info.run_id
    box.log_batch(run, metrics=_metric(1))
    with tempfile.TemporaryDirectory() as d:  # as log_png does
        png = Path(d) / "learning_curves.png"
        png.write_bytes(b"\x89PNG-picture")
        box.log_artifact(run, str(png), artifact_path="plots")
    # the driver is gone; later, with the server back, a new process replays the journal
    client.up = True
    later = outbox.Outbox.from_journal(client, tmp_path, out=lambda _: None)
    assert later.drain(block=True, patience=10)
    assert [c[0] for c in client.calls] == ["create_run", "log_batch", "log_artifact"]
    assert client.calls[1][1][0] == "real1" and client.files == [b"\x89PNG-picture"]
    assert not (tmp_path / "mlflow-journal-files").exists()


def test_unreachable_is_about_the_server_not_the_request() -> None:
    from mlflow.exceptions import MlflowException

    assert outbox.unreachable(requests.exceptions.ConnectionError("refused"))
    assert outbox.unreachable(
        MlflowException(
            "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with "
            "exception HTTPConnectionPool(host='127.0.0.1', port=5000)"
        )
    )
    assert outbox.unreachable(
        MlflowException("API request to endpoint /x failed with error code 503 != 200")
    )
    assert not outbox.unreachable(MlflowException("INVALID_PARAMETER_VALUE: bad metric"))
    assert not outbox.unreachable(MlflowException("failed with error code 404 != 200"))


def test_consecutive_metric_writes_of_a_run_share_one_call() -> None:
    def batch(run: str, step: int) -> dict:
        return outbox.encode("log_batch", (run,), {"metrics": _metric(step)})

    queue = [batch("a", 1), batch("a", 2), batch("b", 1), batch("a", 3)]
    merged, taken = outbox.coalesce(queue)
    assert taken == 2 and [m[3] for m in merged["kw"]["metrics"]] == [1, 2]
    assert outbox.coalesce(queue[2:])[1] == 1  # b's write does not jump over a's
    big = [
        outbox.encode(
            "log_batch", ("a",), {"metrics": [Metric("m", 0.0, 0, s) for s in range(600)]}
        )
    ] * 2
    assert outbox.coalesce(big)[1] == 1  # MLflow takes at most 1000 metrics a call


def test_dataset_inputs_survive_the_journal() -> None:
    cfg = config.from_dict({"data": {"path": "data/digits.parquet"}})
    inputs = writer.dataset_inputs(cfg, "f" * 64, {"train": 10, "val": 2, "test": 3})
    entry = outbox.encode("log_inputs", ("run1",), {"datasets": inputs})
    import json

    method, args, kw = outbox.decode(json.loads(json.dumps(entry)))
    assert method == "log_inputs" and args == ("run1",)
    assert [d.dataset.name for d in kw["datasets"]] == [d.dataset.name for d in inputs]
    assert kw["datasets"][0].tags[0].value == "training"


def test_the_background_sender_keeps_order_and_reads_see_earlier_writes(tmp_path: Path) -> None:
    client, said = FlakyClient(), []
    box = outbox.Outbox(client, out=said.append, background=True)
    box.use_journal(tmp_path)
    run = box.create_run("0", run_name="trial-a").info.run_id  # synchronous: a real id
    assert run == "real1"
    for step in range(1, 51):
        box.log_batch(run, metrics=_metric(step))  # returns at once; the sender sends
    assert box.get_run(run) == "real1"  # a read waits for the writes before it
    sent = [step for c in client.calls[1:] for _, step in c[1][1]]
    assert sent == list(range(1, 51))  # all, in order
    assert len(client.calls) - 1 < 50  # several epochs share a call
    client.up = False
    box.log_batch(run, metrics=_metric(51))
    deadline = time.time() + 10
    while not box.down:
        assert time.time() < deadline
        time.sleep(0.05)
    assert (tmp_path / outbox.JOURNAL).is_file()
    box.log_batch(run, metrics=_metric(52))
    assert not box.drain(block=True, patience=0.5)  # still away
    client.up = True
    assert box.drain(block=True, patience=10)
    assert [step for c in client.calls[-2:] for _, step in c[1][1]][-2:] == [51, 52]
    assert [step for c in client.calls[1:] for _, step in c[1][1]] == list(range(1, 53))
    assert not (tmp_path / outbox.JOURNAL).exists()
    assert any("answers again" in line for line in said)


def test_a_single_metric_is_a_kept_write_too() -> None:
    # log_metric used to pass straight through as a "read": an outage raised in the sweep
    client = FlakyClient()
    box = outbox.Outbox(client, out=lambda _: None)
    run = box.create_run("0", run_name="sweep").info.run_id
    client.up = False
    box.log_metric(run, "confirm_val_loss_mean", 0.25)  # no exception
    assert len(box.queue) == 1
    client.up = True
    assert box.drain(block=True, patience=10)
    assert client.calls[-1] == ("log_batch", ("real1", (("confirm_val_loss_mean", 0),)))


def test_the_outbox_offers_only_the_calls_it_knows() -> None:
    # typed methods, no __getattr__: a call the outbox does not know is an AttributeError
    # (and a mypy error), never an untyped pass-through that would skip the journal
    box = outbox.Outbox(FlakyClient(), out=lambda _: None)
    assert not hasattr(outbox.Outbox, "__getattr__")
    with pytest.raises(AttributeError):
        box.rename_experiment("0", "x")  # type: ignore[attr-defined]
    assert set(outbox.WRITES) <= {n for n in dir(outbox.Outbox) if not n.startswith("_")}
