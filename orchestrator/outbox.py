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
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

JOURNAL = "mlflow-journal.jsonl"
FIRST_PAUSE, MAX_PAUSE = 2.0, 30.0
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


class Outbox:
    """An MlflowClient whose writes survive the tracking server going away (see above)."""

    def __init__(self, client: Any, out: Callable[[str], None] = print) -> None:
        self.client, self.out = client, out
        self.queue: list[dict[str, Any]] = []
        self.ids: dict[str, str] = {}  # placeholder run id -> real one
        self.journal: Path | None = None
        self.kept = self.replayed = 0
        self._pause, self._next_try = FIRST_PAUSE, 0.0

    # -- the client's interface: reads go straight through, writes through the outbox

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr
        if name not in WRITES:  # a read: straight through, with real run ids
            return lambda *args, **kw: attr(*self._real_ids(args, kw)[0],
                                            **self._real_ids(args, kw)[1])
        return lambda *args, **kw: self._write(name, args, kw)

    def use_journal(self, folder: Path) -> None:
        """Keep a copy of every queued write in ``folder`` (the sweep's), for a replay after
        this process is gone. Writes already queued are written there too."""
        self.journal = folder / JOURNAL
        folder.mkdir(parents=True, exist_ok=True)
        if self.queue:
            self._rewrite()

    def _write(self, method: str, args: tuple, kw: dict[str, Any]) -> Any:
        args, kw = self._real_ids(args, kw)
        if not self.queue:
            try:
                return getattr(self.client, method)(*args, **kw)
            except Exception as e:  # noqa: BLE001 - only an unreachable server is kept
                if not unreachable(e):
                    raise
                self.out(f"[tracking] MLflow unreachable ({_short(e)}); training goes on, "
                         "writes are kept and sent when it answers")
                self._next_try = time.monotonic() + self._pause
        placeholder = self._keep(method, args, kw)
        self.drain(block=False)
        if method == "create_run":
            real = self.ids.get(placeholder, placeholder)
            return SimpleNamespace(info=SimpleNamespace(run_id=real))
        return None

    def _keep(self, method: str, args: tuple, kw: dict[str, Any]) -> str:
        entry = _encode(method, args, kw)
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
        self.queue.append(entry)
        self.kept += 1
        if self.journal is not None:
            with self.journal.open("a") as f:
                f.write(json.dumps(entry) + "\n")
        return placeholder

    def _real_ids(self, args: tuple, kw: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        def swap(v: Any) -> Any:
            return self.ids.get(v, v) if isinstance(v, str) and v.startswith(PLACEHOLDER) else v
        return tuple(swap(a) for a in args), {k: swap(v) for k, v in kw.items()}

    def drain(self, block: bool = False, patience: float = 0.0) -> bool:
        """Send queued writes, oldest first; True when none is left. Without ``block`` it
        tries only when the back-off allows; with it, it keeps trying for ``patience`` s."""
        deadline = time.monotonic() + patience
        while self.queue:
            now = time.monotonic()
            if block:  # waiting anyway: try every FIRST_PAUSE s, not the long back-off
                self._next_try = min(self._next_try, now + FIRST_PAUSE)
            if now < self._next_try:
                if not block or now >= deadline:
                    return False
                time.sleep(min(self._next_try, deadline) - now)
                continue
            entry = self.queue[0]
            method, args, kw = _decode(entry)
            args, kw = self._real_ids(args, kw)
            try:
                result = getattr(self.client, method)(*args, **kw)
            except Exception as e:  # noqa: BLE001
                if not unreachable(e):
                    raise
                self._next_try = time.monotonic() + self._pause
                self._pause = min(self._pause * 2, MAX_PAUSE)
                continue
            if method == "create_run":
                self.ids[entry["placeholder"]] = result.info.run_id
            self.queue.pop(0)
            self.replayed += 1
            self._pause = FIRST_PAUSE
            if not self.queue:
                self.out(f"[tracking] MLflow answers again: {self.replayed} kept write(s) sent")
            if self.journal is not None:
                self._rewrite()
        return True

    def _rewrite(self) -> None:
        assert self.journal is not None
        tmp = self.journal.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in self.queue))
        tmp.replace(self.journal)  # atomic: a kill leaves the old or the new journal
        if not self.queue:
            self.journal.unlink()
            shutil.rmtree(self.journal.parent / "mlflow-journal-files", ignore_errors=True)

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
