"""Tracking that never stops training: MLflow writes through an outbox.

The sweep driver is MLflow's only writer, and it writes from Tune's callbacks. If the
tracking server goes away mid-sweep, a plain client would raise there (failing the sweep) or
block for minutes in MLflow's own retries. ``Outbox`` wraps the client instead: a write that
fails because the server is unreachable is kept, in order, in memory and in a journal file,
and the sweep goes on. While writes are kept, later writes queue behind them (MLflow must see
them in order), and every few seconds (backing off to ``MAX_PAUSE``) the oldest is retried;
once the server answers, the queue drains. At the end the sweep drains what it can and says
what is left; ``orchestrator tracking replay`` sends the journal later.

A run created while the server is away gets a placeholder id; the placeholder is swapped for
the real id when the creation is replayed, in every queued write and every later one.

The journal survives a crash at any point (kill -9, or the machine losing power):

- ``mlflow-journal.jsonl`` holds the kept writes, one JSON line each, and after them
  ``{"sent": N}`` lines: the first N writes of the file have been sent (or set aside). A
  kept write is fsynced before the call that made it returns (it is the only copy); a
  ``sent`` line is not (losing one only sends some writes again, and every write is
  idempotent, see below). A last line cut short by a crash is skipped with a warning; a bad
  line anywhere else is an error naming it.
- ``mlflow-journal-ids.json`` maps each placeholder to its real run id. It is written
  (atomically, fsynced) before the creation leaves the journal, and kept after the journal
  is gone, so writes, Tune's saved state and a kept champion that still name a placeholder
  resolve after any number of outages and restarts.
- Every run the outbox creates carries the tag ``orchestrator.outbox_id`` (its placeholder):
  before creating a kept run, a replay looks for a run with that tag, so a crash between
  the creation and its ``sent`` line (or a creation whose answer was lost) does not create
  a second run. Metrics keep the timestamp they were logged with, and MLflow stores a point
  (key, step, timestamp, value) once, so an epoch sent twice is still one point; tags,
  params, artifacts and run states are set to the same values again.
- ``mlflow-journal-refused.jsonl`` collects writes MLflow refused for what they are (not an
  outage), with the error, so they neither block the replay nor vanish.

Errors that are not about reaching the server (a bad parameter, a missing run) still raise
in a sweep; a replay sets such writes aside and goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # for the types only: importing MLflow takes seconds
    from mlflow.entities import DatasetInput, Experiment, Metric, Param, Run, RunTag
    from mlflow.store.entities.paged_list import PagedList

from orchestrator.core import storage
from orchestrator.tracking import schema

JOURNAL = "mlflow-journal.jsonl"
IDS = "mlflow-journal-ids.json"
REFUSED = "mlflow-journal-refused.jsonl"
FILES = "mlflow-journal-files"
FIRST_PAUSE, MAX_PAUSE = 2.0, 30.0
LINGER = 0.5  # seconds a write may wait for others to share its call
MAX_BATCH_METRICS = 1000  # MLflow's per-call cap on metrics in log_batch
MAX_BATCH_PARAMS = 100  # MLflow's per-call cap on params in log_batch
MAX_BATCH_TAGS = 100  # MLflow's per-call cap on tags in log_batch
CREATE_RUN_TAGS_ARG = 2  # create_run(experiment_id, start_time, tags, ...): tags' position
PLACEHOLDER = "offline-"
WRITES = (
    "create_run",
    "log_batch",
    "set_tag",
    "set_terminated",
    "update_run",
    "log_artifact",
    "log_text",
    "log_inputs",
    "delete_run",
)
# Tests only: die (SIGKILL, no clean-up) right after this many successful sends, to crash a
# replay at a chosen point between a write reaching MLflow and the journal saying so.
KILL_AFTER = "ORCHESTRATOR_TEST_KILL_AFTER_SENDS"
_sends = 0


class JournalError(RuntimeError):
    """A journal file is damaged in a way a crash cannot explain (not at its end)."""


def unreachable(exc: BaseException) -> bool:
    """Whether an error means "the tracking server did not answer" (worth keeping the write
    for later), not "the write was wrong"."""
    import requests

    if isinstance(
        exc,
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            ConnectionError,
            TimeoutError,
        ),
    ):
        return True
    text = str(exc)
    return any(
        s in text
        for s in (
            "failed with exception",
            "failed with error code 5",
            "Max retries exceeded",
            "Connection refused",
            "Connection aborted",
            "timed out",
            "TEMPORARILY_UNAVAILABLE",
            "database is locked",
        )
    )


def count_send() -> None:
    """One more write reached MLflow (the crash point of ``KILL_AFTER``, tests only)."""
    global _sends
    limit = os.environ.get(KILL_AFTER)
    if not limit:
        return
    _sends += 1
    if _sends >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- durable files


def load_ids(folder: Path | storage.Folder) -> dict[str, str]:
    """The placeholder -> real run id mapping journaled in ``folder`` (empty if none)."""
    folder = storage.as_folder(folder)
    path = f"{folder}/{IDS}"
    if not folder.is_file(IDS):
        return {}
    try:
        ids = json.loads(folder.read_text(IDS))
    except ValueError as e:  # written atomically: damage is not a crash's doing
        raise JournalError(
            f"{path}: not valid JSON ({e}); it maps placeholder run ids "
            "(offline-...) to real ones, restore it from a backup"
        ) from None
    if not isinstance(ids, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in ids.items()
    ):
        raise JournalError(f"{path}: expected an object of placeholder -> run id strings")
    return ids


def load_journal(
    folder: Path | storage.Folder, out: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """The writes in ``folder``'s journal not yet sent, oldest first. A last line cut short
    (the writer died mid-line) is skipped with a warning; any other bad line raises
    ``JournalError`` naming it."""
    folder = storage.as_folder(folder)
    path = f"{folder}/{JOURNAL}"
    lines = folder.read_lines(JOURNAL).split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    entries: list[dict[str, Any]] = []
    done = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problem = _check_record(record, len(entries))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            problem = f"not valid JSON ({e})"
        if problem and i == last:
            out(
                f"[tracking] warning: {path} line {i + 1} is cut short (the process writing "
                f"it died); skipped: {line[:80]!r}"
            )
            continue
        if problem:
            raise JournalError(
                f"{path} line {i + 1} of {last + 1}: {problem}. Only the last line can be cut "
                "short by a crash, so the file was changed by something else: fix or delete "
                "that line by hand (each line is one MLflow write) and replay again"
            )
        if "sent" in record:
            done = record["sent"]
        else:
            entries.append(record)
    return entries[done:]


def _check_record(record: Any, entries: int) -> str:
    """What is wrong with a journal line ("" if nothing)."""
    if not isinstance(record, dict):
        return "expected a JSON object"
    if "sent" in record:
        sent = record["sent"]
        if type(sent) is not int or not 0 <= sent <= entries:
            return f"sent: expected a count of at most {entries} writes, got {sent!r}"
        return ""
    if record.get("method") not in WRITES:
        return f"method: expected one of {', '.join(WRITES)}, got {record.get('method')!r}"
    if not isinstance(record.get("args"), list):
        return "args: expected a list"
    if not isinstance(record.get("kw"), dict):
        return "kw: expected an object"
    if record["method"] == "create_run" and not str(record.get("placeholder", "")).startswith(
        PLACEHOLDER
    ):
        return f"placeholder: expected {PLACEHOLDER}..., got {record.get('placeholder')!r}"
    return ""


# ---------------------------------------------------------------- encoding writes as JSON


def encode(method: str, args: tuple, kw: dict[str, Any]) -> dict[str, Any]:
    """A write as JSON: MLflow entities become plain fields."""
    kw = dict(kw)
    if method == "log_batch":
        kw["metrics"] = [[m.key, m.value, m.timestamp, m.step] for m in kw.get("metrics", ())]
        kw["params"] = [[p.key, p.value] for p in kw.get("params", ())]
        kw["tags"] = [[t.key, t.value] for t in kw.get("tags", ())]
    if method == "log_inputs":
        kw["datasets"] = [
            {"dataset": dict(d.dataset.to_dictionary()), "tags": [[t.key, t.value] for t in d.tags]}
            for d in kw.get("datasets", ())
        ]
    return {"method": method, "args": list(args), "kw": kw}


def decode(entry: dict[str, Any]) -> tuple[str, tuple, dict[str, Any]]:
    """A journalled write back as (method, args, kwargs), MLflow entities rebuilt."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    method, args, kw = entry["method"], tuple(entry["args"]), dict(entry["kw"])
    if method == "log_batch":
        kw["metrics"] = [Metric(k, v, ts, step) for k, v, ts, step in kw["metrics"]]
        kw["params"] = [Param(k, v) for k, v in kw["params"]]
        kw["tags"] = [RunTag(k, v) for k, v in kw["tags"]]
    if method == "log_inputs":
        kw["datasets"] = [
            DatasetInput(Dataset(**d["dataset"]), tags=[InputTag(k, v) for k, v in d["tags"]])
            for d in kw["datasets"]
        ]
    return method, args, kw


def _marked(args: tuple, kw: dict[str, Any], marker: str) -> tuple[tuple, dict[str, Any]]:
    """``create_run``'s arguments with the marker tag added (``tags`` is its third)."""
    if len(args) > CREATE_RUN_TAGS_ARG:
        return (*args[:2], {**(args[2] or {}), schema.OUTBOX_ID: marker}, *args[3:]), kw
    return args, {**kw, "tags": {**(kw.get("tags") or {}), schema.OUTBOX_ID: marker}}


def coalesce(queue: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """The queue's head, merged with the ``log_batch`` writes right behind it for the same
    run (within MLflow's per-call limits): (the write to send, how many entries it covers).
    Order is kept: only consecutive entries are merged."""
    head = queue[0]
    if head["method"] != "log_batch":
        return head, 1
    run = head["args"][0] if head["args"] else head["kw"].get("run_id")
    kw: dict[str, Any] = {k: list(head["kw"].get(k, [])) for k in ("metrics", "params", "tags")}
    if not head["args"]:
        kw["run_id"] = run
    merged: dict[str, Any] = {"method": "log_batch", "args": list(head["args"]), "kw": kw}
    taken = 1
    for e in queue[1:]:
        same = e["method"] == "log_batch" and (
            (e["args"][0] if e["args"] else e["kw"].get("run_id")) == run
        )
        sizes = {k: len(kw[k]) + len(e["kw"].get(k, [])) for k in ("metrics", "params", "tags")}
        if (
            not same
            or sizes["metrics"] > MAX_BATCH_METRICS
            or sizes["params"] > MAX_BATCH_PARAMS
            or sizes["tags"] > MAX_BATCH_TAGS
        ):
            break
        for k in ("metrics", "params", "tags"):
            kw[k] += e["kw"].get(k, [])
        taken += 1
    return merged, taken


class _RunInfo(Protocol):
    @property
    def run_id(self) -> str: ...


class RunHandle(Protocol):
    """What ``create_run`` answers: MLflow's ``Run``, or while the server is away a
    placeholder with only ``info.run_id``."""

    @property
    def info(self) -> _RunInfo:
        """The run's id (``info.run_id``), as on MLflow's ``Run``."""


class Outbox:
    """An MlflowClient whose writes never hold training up (see above).

    With ``background`` (the sweep's), writes are sent by one sender thread, in order, so a
    Tune callback returns at once: Tune's function trainables wait for the driver to take
    each result, so a slow write would slow training itself. ``create_run`` stays
    synchronous while nothing is queued (the run id is saved with Tune's state and must be
    real). Reads wait for queued writes first (a read sees what was written before it).

    ``strict`` (a sweep's): a write MLflow refuses raises at the next call. Without it (a
    replay), refused writes are set aside in ``REFUSED`` and counted in ``refused``."""

    def __init__(
        self,
        client: Any,
        out: Callable[[str], None] = print,
        background: bool = False,
        strict: bool = True,
    ) -> None:
        self.client, self.out, self.strict = client, out, strict
        self.queue: list[dict[str, Any]] = []
        self.ids: dict[str, str] = {}  # placeholder run id -> real one
        self.folder: storage.Folder | None = None  # where the journal is kept
        self.kept = self.replayed = self.refused = 0
        self.down = False  # the server stopped answering and has not answered since
        self.error: BaseException | None = None  # a write the server refused (not an outage)
        self._pause, self._next_try, self._hurry = FIRST_PAUSE, 0.0, False
        self._done = 0  # entries at the head of the journal file already sent
        self._cv = threading.Condition()
        self._busy = False  # the sender is sending the queue's head
        if background:
            threading.Thread(target=self._sender, name="mlflow-outbox", daemon=True).start()
        self.background = background

    # -- the client's interface: reads go straight through, writes through the outbox

    def create_run(
        self,
        experiment_id: str,
        start_time: int | None = None,
        tags: dict[str, Any] | None = None,
        run_name: str | None = None,
    ) -> RunHandle:
        """A new run (while the server is away: a placeholder id, swapped later)."""
        kw = _given(start_time=start_time, tags=tags, run_name=run_name)
        return self._write("create_run", (experiment_id,), kw)

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
    ) -> None:
        """A run's metrics, params and tags in one write (queued ones for one run share a call)."""
        kw = {"metrics": list(metrics), "params": list(params), "tags": list(tags)}
        self._write("log_batch", (run_id,), kw)

    def log_metric(self, run_id: str, key: str, value: float) -> None:
        """One value, now (as a ``log_batch``: kept like any write while the server is away)."""
        from mlflow.entities import Metric

        self.log_batch(run_id, metrics=[Metric(key, float(value), int(time.time() * 1000), 0)])

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        """Kept like every write while the server is away."""
        self._write("set_tag", (run_id, key, value), {})

    def set_terminated(self, run_id: str, status: str | None = None) -> None:
        """A run's end and its status; kept like every write while the server is away."""
        self._write("set_terminated", (run_id,), _given(status=status))

    def update_run(self, run_id: str, status: str | None = None) -> None:
        """A run's status; kept like every write while the server is away."""
        self._write("update_run", (run_id,), _given(status=status))

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """A file as a run artifact; kept, with a copy of the file, while the server is away."""
        self._write("log_artifact", (run_id, local_path), _given(artifact_path=artifact_path))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Text as a run artifact; kept like every write while the server is away."""
        self._write("log_text", (run_id, text, artifact_file), {})

    def log_inputs(self, run_id: str, datasets: Sequence[DatasetInput] = ()) -> None:
        """A run's dataset lineage; kept like every write while the server is away."""
        self._write("log_inputs", (run_id,), {"datasets": list(datasets)})

    def delete_run(self, run_id: str) -> None:
        """Kept like every write while the server is away."""
        self._write("delete_run", (run_id,), {})

    # -- reads: after the queued writes, with real run ids

    def get_run(self, run_id: str) -> Run:
        """The run, read after the queued writes (a placeholder id read as the real one)."""
        return self._read("get_run", run_id)

    def search_runs(self, experiment_ids: list[str], **kw: Any) -> PagedList[Run]:
        """The runs found, read after the queued writes."""
        return self._read("search_runs", experiment_ids, **kw)

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        """Every value of a run's metric, read after the queued writes."""
        return self._read("get_metric_history", run_id, key)

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        """The experiment of that name, if any, read after the queued writes."""
        return self._read("get_experiment_by_name", name)

    def _read(self, method: str, *args: Any, **kw: Any) -> Any:
        if not self.down:
            self.drain(block=True, patience=30.0)
        args, kw = self._real_ids(args, kw)
        return getattr(self.client, method)(*args, **kw)

    def use_journal(self, folder: Path | storage.Folder) -> None:
        """Where queued writes are journaled while the server is away (the sweep's folder,
        local or on object storage), for a replay after this process is gone. What an
        earlier driver of the same folder left there (a resumed sweep) is loaded and sent
        first."""
        with self._cv:
            self.folder = storage.as_folder(folder)
            self.folder.mkdir()
            known = load_ids(self.folder)
            if self.ids.keys() - known.keys():  # learnt before there was a folder
                self.folder.write_atomic(IDS, json.dumps({**known, **self.ids}))
            self.ids = {**known, **self.ids}
            earlier = load_journal(self.folder, self.out)
            if earlier:
                self.out(
                    f"[tracking] {len(earlier)} write(s) kept by an earlier driver in "
                    f"{self.folder}/{JOURNAL}: sending them first"
                )
                self.queue[:0] = earlier
                self.down = True  # until they are sent, every write is journaled behind them
            if self.down:
                self._rewrite()
            else:
                self._forget_journal()
            self._cv.notify_all()
        if earlier:  # before anything reads what they write (a resumed sweep's runs)
            self.drain(block=True, patience=30.0)

    def _write(self, method: str, args: tuple, kw: dict[str, Any]) -> Any:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        args, kw = self._real_ids(args, kw)
        placeholder = ""
        if method == "create_run":
            # every run is marked, so a creation whose answer is lost is not made twice
            placeholder = PLACEHOLDER + uuid.uuid4().hex[:12]
            args, kw = _marked(args, kw, placeholder)
            if self.background and not self.down:
                # the run id is saved with Tune's state (a resumed sweep finds the run by it),
                # so it must be a real one: wait for the writes ahead (normally milliseconds)
                self.drain(block=True, patience=30.0)
        with self._cv:
            direct = (
                not self.queue
                and not self._busy
                and (method == "create_run" or not self.background)
            )
        if direct:
            try:
                result = getattr(self.client, method)(*args, **kw)
                count_send()
                return result
            except Exception as e:  # noqa: BLE001 - only an unreachable server is kept
                if not unreachable(e):
                    raise
                with self._cv:
                    self._outage(e)
        self._keep(method, args, kw, placeholder)
        if not self.background:
            self.drain(block=False)
        if method == "create_run":
            return SimpleNamespace(
                info=SimpleNamespace(run_id=self.ids.get(placeholder, placeholder))
            )
        return None

    def _outage(self, e: BaseException) -> None:
        """(Under the lock.) The server stopped answering: say so once, journal the queue."""
        if not self.down:
            self.out(
                f"[tracking] MLflow unreachable ({_short(e)}); training goes on, "
                "writes are kept and sent when it answers"
            )
            if self.folder is not None:
                self._rewrite()
            self.down = True  # once the journal holds the queue (``down`` is read unlocked)
        self._next_try = time.monotonic() + self._pause

    def _keep(self, method: str, args: tuple, kw: dict[str, Any], placeholder: str) -> None:
        entry = encode(method, args, kw)
        entry["at"] = time.time()
        if placeholder:
            entry["placeholder"] = placeholder
        if method == "log_artifact":
            # the file is usually in a temporary folder that is about to go away: a copy is
            # kept beside the journal, durable before the journal names it
            index = 1 if len(entry["args"]) > 1 else None
            src = Path(entry["args"][1] if index else entry["kw"]["local_path"])
            kept = _keep_file(self.folder, src)
            if index:
                entry["args"][1] = kept
            else:
                entry["kw"]["local_path"] = kept
        with self._cv:
            self.queue.append(entry)
            if self.down:
                self.kept += 1
                if self.folder is not None:  # the only copy: durable before we return
                    self.folder.append_line(JOURNAL, entry)
            self._cv.notify_all()

    def _real_ids(self, args: tuple, kw: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        def swap(v: Any) -> Any:
            if isinstance(v, str) and v.startswith(PLACEHOLDER):
                return self.ids.get(v, v)
            if isinstance(v, dict):  # create_run's tags (mlflow.parentRunId), not the marker
                return {k: x if k == schema.OUTBOX_ID else swap(x) for k, x in v.items()}
            return v

        return tuple(swap(a) for a in args), {k: swap(v) for k, v in kw.items()}

    def _created(self, args: tuple, kw: dict[str, Any], placeholder: str) -> str | None:
        """The run a kept ``create_run`` already made (its answer, or its ``sent`` line, was
        lost), found by its marker tag."""
        from mlflow.entities import ViewType

        exp = args[0] if args else kw["experiment_id"]
        runs = self.client.search_runs(
            [exp],
            filter_string=f"tags.`{schema.OUTBOX_ID}` = '{placeholder}'",
            run_view_type=ViewType.ALL,
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _send_head(self) -> bool:
        """Send the oldest queued write (called with the lock released); False if the server
        did not answer."""
        with self._cv:
            entry, taken = coalesce(self.queue)
            self._busy = True
        try:
            method, args, kw = decode(entry)
            args, kw = self._real_ids(args, kw)
            placeholder, real = entry.get("placeholder", ""), ""
            try:
                if method == "create_run":
                    args, kw = _marked(args, kw, placeholder)  # also a journal from before marks
                    real = self.ids.get(placeholder) or self._created(args, kw, placeholder) or ""
                    if not real:
                        real = self.client.create_run(*args, **kw).info.run_id
                        count_send()
                elif method == "log_artifact":
                    with _local_artifact(args, kw) as (args, kw):
                        self.client.log_artifact(*args, **kw)
                    count_send()
                else:
                    getattr(self.client, method)(*args, **kw)
                    count_send()
            except Exception as e:  # noqa: BLE001
                with self._cv:
                    if unreachable(e):
                        self._outage(e)
                        self._pause = min(self._pause * 2, MAX_PAUSE)
                        return False
                    # refused for what it is: retrying cannot help
                    self.out(f"[tracking] MLflow refused a write ({method}): {_short(e)}")
                    self._set_aside(taken, e)
                    if self.strict:
                        self.error = e
                    self._settle(taken)
                    return True
            if method == "log_artifact":  # the outbox's own copy of the file
                _drop_file(self.folder, args[1] if len(args) > 1 else kw["local_path"])
            with self._cv:
                if method == "create_run" and self.ids.get(placeholder) != real:
                    self._learn(placeholder, real)
                self._pause = FIRST_PAUSE
                self._settle(taken)
            return True
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def _learn(self, placeholder: str, real: str) -> None:
        """(Under the lock.) A placeholder's real id, journaled before the creation leaves
        the journal: later writes, Tune's saved state and a kept champion may still name it."""
        self.ids[placeholder] = real
        if self.folder is not None:
            self.folder.write_atomic(IDS, json.dumps(self.ids))

    def _set_aside(self, taken: int, e: BaseException) -> None:
        """(Under the lock.) Refused writes, kept beside the journal with their error."""
        if self.folder is None:
            return
        for entry in self.queue[:taken]:
            self.folder.append_line(REFUSED, {**entry, "error": _short(e)})
        self.refused += taken
        self.out(f"[tracking] set aside in {self.folder}/{REFUSED}")

    def _settle(self, taken: int) -> None:
        """(Under the lock.) The queue's first ``taken`` writes are done (sent or set aside)."""
        del self.queue[:taken]
        if self.down:
            self.replayed += taken
            if not self.queue:
                self.down = False
                self.out(f"[tracking] MLflow answers again: {self.replayed} kept write(s) sent")
            if self.folder is not None:
                if self.queue:
                    self._done += taken
                    # not fsynced: a lost line only sends writes again, which changes nothing
                    self.folder.append_line(JOURNAL, {"sent": self._done}, sync=False)
                else:
                    self._forget_journal()
        self._cv.notify_all()

    def _sender(self) -> None:
        while True:
            with self._cv:
                while True:
                    if not self.queue:
                        self._cv.wait()
                        continue
                    now = time.monotonic()
                    if self._hurry:
                        self._next_try = min(self._next_try, now + FIRST_PAUSE)
                    # a short linger lets an epoch's writes of several trials, and several
                    # epochs of short ones, go as one call per run (each call costs the
                    # driver milliseconds of Python, and the driver holds up the trials)
                    ready = max(
                        self._next_try,
                        self.queue[0]["at"] - time.time() + now + (0.0 if self._hurry else LINGER),
                    )
                    if now >= ready:
                        break
                    self._cv.wait(timeout=ready - now)
            self._send_head()

    def drain(self, block: bool = False, patience: float = 0.0) -> bool:
        """Until no write is queued: True when none is left. Without ``block``, one attempt
        if the back-off allows (the caller's thread sends, when there is no sender thread);
        with it, keeps at it for up to ``patience`` seconds, retrying every FIRST_PAUSE."""
        deadline = time.monotonic() + patience
        if self.background:
            with self._cv:
                self._hurry = block
                self._cv.notify_all()
                try:
                    while self.queue or self._busy:
                        left = deadline - time.monotonic()
                        if not block or left <= 0:
                            return False
                        self._cv.wait(timeout=min(left, 0.5))
                    return True
                finally:
                    self._hurry = False
        while self.queue:
            now = time.monotonic()
            if block:  # waiting anyway: try every FIRST_PAUSE s, not the long back-off
                self._next_try = min(self._next_try, now + FIRST_PAUSE)
            if now < self._next_try:
                if not block or now >= deadline:
                    return False
                time.sleep(min(self._next_try, deadline) - now)
                continue
            self._send_head()
            if self.error is not None:
                error, self.error = self.error, None
                raise error
        return True

    def _rewrite(self) -> None:
        """(Under the lock.) The journal holds exactly the queue (and no ``sent`` lines)."""
        if self.folder is None:
            return
        if not self.queue:
            self._forget_journal()
            return
        self.folder.rewrite_lines(JOURNAL, "".join(json.dumps(e) + "\n" for e in self.queue))
        self._done = 0

    def _forget_journal(self) -> None:
        """(Under the lock.) Nothing is kept: no journal, no kept files (the ids stay)."""
        assert self.folder is not None
        self._done = 0
        self.folder.remove(JOURNAL)
        self.folder.remove_tree(FILES)

    @classmethod
    def from_journal(
        cls,
        client: Any,
        folder: Path | storage.Folder,
        out: Callable[[str], None] = print,
    ) -> Outbox:
        """An outbox holding the writes a gone process kept in ``folder``, to replay (a
        refused write is set aside, not raised)."""
        box = cls(client, out, strict=False)
        box.folder = storage.as_folder(folder)
        box.ids = load_ids(box.folder)
        box.queue = load_journal(box.folder, out)
        box.down = bool(box.queue)
        box._rewrite()  # compact: without the sent lines and a line cut short at the end
        return box

    def run_id(self, run_id: str | None) -> str | None:
        """The real id of a run created while the server was away (once replayed)."""
        return self.ids.get(run_id, run_id) if run_id else run_id


def _keep_file(folder: storage.Folder | None, src: Path) -> str:
    """A durable copy of an artifact's file for a kept ``log_artifact``: beside the journal
    (its location, a path or a URI), or in a temporary folder when there is no journal."""
    name = f"{FILES}/{uuid.uuid4().hex[:8]}/{src.name}"
    if folder is None or folder.local:
        root = Path(str(folder)) if folder is not None else Path(tempfile.gettempdir())
        keep = root / ("orchestrator-outbox" if folder is None else "") / name
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, keep)
        with keep.open("rb") as f:
            os.fsync(f.fileno())
        storage.fsync_dir(keep.parent)
        return str(keep)
    folder.write_atomic(name, src.read_bytes())  # one PUT: durable when it returns
    return f"{folder}/{name}"


@contextlib.contextmanager
def _local_artifact(args: tuple, kw: dict[str, Any]) -> Iterator[tuple[tuple, dict[str, Any]]]:
    """A kept artifact on object storage, downloaded for MLflow (which logs local files)."""
    index = 1 if len(args) > 1 else None
    kept = str(args[1] if index else kw["local_path"])
    if not storage.is_uri(kept):
        yield args, kw
        return
    folder, name = kept.rsplit("/", 1)
    with tempfile.TemporaryDirectory() as d:
        local = str(Path(d) / name)
        Path(local).write_bytes(storage.Folder(folder).read_bytes(name))
        if index:
            yield (*args[:1], local, *args[2:]), kw
        else:
            yield args, {**kw, "local_path": local}


def _drop_file(folder: storage.Folder | None, kept: str) -> None:
    """Remove the outbox's own copy of a sent artifact (its folder of one)."""
    if storage.is_uri(kept):
        if folder is not None and kept.startswith(f"{folder}/"):
            folder.remove_tree(kept[len(str(folder)) + 1 :].rsplit("/", 1)[0])
        return
    shutil.rmtree(Path(kept).parent, ignore_errors=True)


def _given(**kw: Any) -> dict[str, Any]:
    """The keyword arguments actually given: MLflow's defaults stand for the rest (and a
    journal line holds what the caller said, as before the outbox had typed methods)."""
    return {k: v for k, v in kw.items() if v is not None}


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:160]
