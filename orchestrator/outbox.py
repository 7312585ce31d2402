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

Errors that are not about reaching the server (a bad parameter, a missing run) still raise.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

JOURNAL = "mlflow-journal.jsonl"
FIRST_PAUSE, MAX_PAUSE = 2.0, 30.0
LINGER = 0.5  # seconds a write may wait for others to share its call
PLACEHOLDER = "offline-"
WRITES = ("create_run", "log_batch", "set_tag", "set_terminated", "update_run",
          "log_artifact", "log_text", "log_inputs", "delete_run")


def unreachable(exc: BaseException) -> bool:
    """Whether an error means "the tracking server did not answer" (worth keeping the write
    for later), not "the write was wrong"."""
    import requests

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                        ConnectionError, TimeoutError)):
        return True
    text = str(exc)
    return any(s in text for s in (
        "failed with exception", "failed with error code 5", "Max retries exceeded",
        "Connection refused", "Connection aborted", "timed out", "TEMPORARILY_UNAVAILABLE",
        "database is locked"))


# ---------------------------------------------------------------- encoding writes as JSON


def _encode(method: str, args: tuple, kw: dict[str, Any]) -> dict[str, Any]:
    """A write as JSON: MLflow entities become plain fields."""
    kw = dict(kw)
    if method == "log_batch":
        kw["metrics"] = [[m.key, m.value, m.timestamp, m.step] for m in kw.get("metrics", ())]
        kw["params"] = [[p.key, p.value] for p in kw.get("params", ())]
        kw["tags"] = [[t.key, t.value] for t in kw.get("tags", ())]
    if method == "log_inputs":
        kw["datasets"] = [{"dataset": dict(d.dataset.to_dictionary()),
                           "tags": [[t.key, t.value] for t in d.tags]}
                          for d in kw.get("datasets", ())]
    return {"method": method, "args": list(args), "kw": kw}


def _decode(entry: dict[str, Any]) -> tuple[str, tuple, dict[str, Any]]:
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    method, args, kw = entry["method"], tuple(entry["args"]), dict(entry["kw"])
    if method == "log_batch":
        kw["metrics"] = [Metric(k, v, ts, step) for k, v, ts, step in kw["metrics"]]
        kw["params"] = [Param(k, v) for k, v in kw["params"]]
        kw["tags"] = [RunTag(k, v) for k, v in kw["tags"]]
    if method == "log_inputs":
        kw["datasets"] = [DatasetInput(Dataset(**d["dataset"]),
                                       tags=[InputTag(k, v) for k, v in d["tags"]])
                          for d in kw["datasets"]]
    return method, args, kw


def _coalesce(queue: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
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
            (e["args"][0] if e["args"] else e["kw"].get("run_id")) == run)
        sizes = {k: len(kw[k]) + len(e["kw"].get(k, []))
                 for k in ("metrics", "params", "tags")}
        if not same or sizes["metrics"] > 1000 or sizes["params"] > 100 or sizes["tags"] > 100:
            break
        for k in ("metrics", "params", "tags"):
            kw[k] += e["kw"].get(k, [])
        taken += 1
    return merged, taken


class Outbox:
    """An MlflowClient whose writes never hold training up (see above).

    With ``background`` (the sweep's), writes are sent by one sender thread, in order, so a
    Tune callback returns at once: Tune's function trainables wait for the driver to take
    each result, so a slow write would slow training itself. ``create_run`` stays
    synchronous while nothing is queued (the run id is saved with Tune's state and must be
    real). Reads wait for queued writes first (a read sees what was written before it)."""

    def __init__(self, client: Any, out: Callable[[str], None] = print,
                 background: bool = False) -> None:
        self.client, self.out = client, out
        self.queue: list[dict[str, Any]] = []
        self.ids: dict[str, str] = {}  # placeholder run id -> real one
        self.journal: Path | None = None
        self.kept = self.replayed = 0
        self.down = False  # the server stopped answering and has not answered since
        self.error: BaseException | None = None  # a write the server refused (not an outage)
        self._pause, self._next_try, self._hurry = FIRST_PAUSE, 0.0, False
        self._cv = threading.Condition()
        self._busy = False  # the sender is sending the queue's head
        if background:
            threading.Thread(target=self._sender, name="mlflow-outbox", daemon=True).start()
        self.background = background

    # -- the client's interface: reads go straight through, writes through the outbox

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr
        if name not in WRITES:  # a read: after the queued writes, with real run ids
            def read(*args: Any, **kw: Any) -> Any:
                if not self.down:
                    self.drain(block=True, patience=30.0)
                args, kw = self._real_ids(args, kw)
                return attr(*args, **kw)
            return read
        return lambda *args, **kw: self._write(name, args, kw)

    def use_journal(self, folder: Path) -> None:
        """Where queued writes are journaled while the server is away (the sweep's folder),
        for a replay after this process is gone."""
        with self._cv:
            self.journal = folder / JOURNAL
            folder.mkdir(parents=True, exist_ok=True)
            if self.down:
                self._rewrite()

    def _write(self, method: str, args: tuple, kw: dict[str, Any]) -> Any:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        args, kw = self._real_ids(args, kw)
        if method == "create_run" and self.background and not self.down:
            # the run id is saved with Tune's state (a resumed sweep finds the run by it), so
            # it must be a real one: wait for the writes ahead (normally a few milliseconds)
            self.drain(block=True, patience=30.0)
        with self._cv:
            direct = not self.queue and not self._busy and (
                method == "create_run" or not self.background)
        if direct:
            try:
                return getattr(self.client, method)(*args, **kw)
            except Exception as e:  # noqa: BLE001 - only an unreachable server is kept
                if not unreachable(e):
                    raise
                with self._cv:
                    self._outage(e)
        placeholder = self._keep(method, args, kw)
        if not self.background:
            self.drain(block=False)
        if method == "create_run":
            return SimpleNamespace(info=SimpleNamespace(run_id=self.ids.get(placeholder,
                                                                            placeholder)))
        return None

    def _outage(self, e: BaseException) -> None:
        """(Under the lock.) The server stopped answering: say so once, journal the queue."""
        if not self.down:
            self.down = True
            self.out(f"[tracking] MLflow unreachable ({_short(e)}); training goes on, "
                     "writes are kept and sent when it answers")
            if self.journal is not None:
                self._rewrite()
        self._next_try = time.monotonic() + self._pause

    def _keep(self, method: str, args: tuple, kw: dict[str, Any]) -> str:
        entry = _encode(method, args, kw)
        entry["at"] = time.time()
        placeholder = ""
        if method == "create_run":
            placeholder = PLACEHOLDER + uuid.uuid4().hex[:12]
            entry["placeholder"] = placeholder
        if method == "log_artifact":
            # the file is usually in a temporary folder that is about to go away
            if self.journal is not None:
                files = self.journal.parent / "mlflow-journal-files"
            else:
                files = Path(tempfile.gettempdir()) / "orchestrator-outbox"
            keep = files / uuid.uuid4().hex[:8]
            keep.mkdir(parents=True, exist_ok=True)
            src = Path(entry["args"][1] if len(entry["args"]) > 1 else entry["kw"]["local_path"])
            shutil.copy(src, keep / src.name)
            if len(entry["args"]) > 1:
                entry["args"][1] = str(keep / src.name)
            else:
                entry["kw"]["local_path"] = str(keep / src.name)
        with self._cv:
            self.queue.append(entry)
            if self.down:
                self.kept += 1
                if self.journal is not None:
                    with self.journal.open("a") as f:
                        f.write(json.dumps(entry) + "\n")
            self._cv.notify_all()
        return placeholder

    def _real_ids(self, args: tuple, kw: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        def swap(v: Any) -> Any:
            return self.ids.get(v, v) if isinstance(v, str) and v.startswith(PLACEHOLDER) else v
        return tuple(swap(a) for a in args), {k: swap(v) for k, v in kw.items()}

    def _send_head(self) -> bool:
        """Send the oldest queued write (called with the lock released); False if the server
        did not answer."""
        with self._cv:
            entry, taken = _coalesce(self.queue)
            self._busy = True
        try:
            method, args, kw = _decode(entry)
            args, kw = self._real_ids(args, kw)
            try:
                result = getattr(self.client, method)(*args, **kw)
            except Exception as e:  # noqa: BLE001
                with self._cv:
                    if unreachable(e):
                        self._outage(e)
                        self._pause = min(self._pause * 2, MAX_PAUSE)
                        return False
                    del self.queue[:taken]  # refused for what it is: retrying cannot help
                    self.error = e
                    self.out(f"[tracking] MLflow refused a write ({method}): {_short(e)}")
                    self._cv.notify_all()
                    return True
            if method == "log_artifact":  # the outbox's own copy of the file
                shutil.rmtree(Path(args[1] if len(args) > 1 else kw["local_path"]).parent,
                              ignore_errors=True)
            with self._cv:
                if method == "create_run":
                    self.ids[entry["placeholder"]] = result.info.run_id
                del self.queue[:taken]
                self._pause = FIRST_PAUSE
                if self.down:
                    self.replayed += taken
                    if not self.queue:
                        self.down = False
                        self.out(f"[tracking] MLflow answers again: {self.replayed} kept "
                                 "write(s) sent")
                    if self.journal is not None:
                        self._rewrite()
                self._cv.notify_all()
            return True
        finally:
            with self._cv:
                self._busy = False
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
                    ready = max(self._next_try, self.queue[0]["at"] - time.time() + now
                                + (0.0 if self._hurry else LINGER))
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
        """(Under the lock.) The journal holds exactly the queue."""
        if self.journal is None:
            return
        tmp = self.journal.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in self.queue))
        tmp.replace(self.journal)  # atomic: a kill leaves the old or the new journal
        if not self.queue:
            self.journal.unlink(missing_ok=True)
            shutil.rmtree(self.journal.parent / "mlflow-journal-files", ignore_errors=True)

    @classmethod
    def from_journal(cls, client: Any, folder: Path, out: Callable[[str], None] = print,
                     ) -> Outbox:
        """An outbox holding the writes a gone process kept in ``folder``, to replay."""
        box = cls(client, out)
        box.queue, box.journal = load_journal(folder), folder / JOURNAL
        box.down = bool(box.queue)
        return box

    def run_id(self, run_id: str | None) -> str | None:
        """The real id of a run created while the server was away (once replayed)."""
        return self.ids.get(run_id, run_id) if run_id else run_id


def load_journal(folder: Path) -> list[dict[str, Any]]:
    path = folder / JOURNAL
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:160]
