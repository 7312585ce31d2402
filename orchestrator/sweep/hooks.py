"""Tune's callbacks, thin: ``BookHooks`` passes each Tune hook to the trial ``Book``;
``Watchdog`` turns a silent trial into ``SweepStalled``.

Tune pickles a run's callbacks into the experiment folder (``tuner.pkl``), and a restored
run unpickles them: a book holds this driver's MLflow client and output, which neither
pickle nor would mean anything in the next driver. So the hooks pickle as their run's name
only, and unpickle as the live hooks this driver registered under that name (``attach``),
or fail loudly rather than become a silent no-op."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray import tune

from orchestrator.analysis import progress
from orchestrator.core import storage
from orchestrator.execution.trials import values_of
from orchestrator.sweep.book import ERROR_TAIL, Book

_LIVE: dict[str, BookHooks] = {}  # run name -> the hooks this driver attached to it


def attach(book: Book, name: str) -> BookHooks:
    """The Tune callback for ``book`` in the Tune run ``name``, registered so that a restored
    run (its pickled callbacks) gets these live hooks back."""
    hooks = BookHooks(book, name)
    _LIVE[name] = hooks
    return hooks


def detach(name: str) -> None:
    """Forget the hooks of a run that is over."""
    _LIVE.pop(name, None)


def live(name: str) -> BookHooks:
    """The hooks attached under ``name`` (what an unpickled callback becomes)."""
    if name not in _LIVE:
        raise RuntimeError(
            f"no live sweep callback for {name!r}: restore a sweep through "
            "`orchestrator resume`, which provides one"
        )
    return _LIVE[name]


class BookHooks(tune.Callback):
    """Tune's hooks, each passed to the book with the trial's id, config and what it says."""

    def __init__(self, book: Book, name: str) -> None:
        self.book, self.name = book, name

    def __reduce__(self) -> tuple:
        return (live, (self.name,))

    def get_state(self) -> dict[str, Any]:
        """The book's ledger, saved with Tune's experiment state."""
        return self.book.state()

    def set_state(self, state: dict[str, Any]) -> None:
        """The ledger back from Tune's saved state (a resumed sweep)."""
        self.book.restore(state)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """Each turn of Tune's loop: every trial's status, for the live view."""
        self.book.tick({t.trial_id: t.status for t in trials})

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune started (or restarted) a trial."""
        self.book.started(trial.trial_id, trial.config)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial crashed and is retried."""
        self.book.recovered(trial.trial_id)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        """A trial reported an epoch."""
        self.book.result(trial.trial_id, trial.config, result)

    def on_checkpoint(
        self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        """A fast-path trial's checkpoint, after the result it belongs to."""
        epoch = (trial.last_result or {}).get("epoch")
        where = storage.uri_of(checkpoint.filesystem, checkpoint.path)
        self.book.checkpointed(trial.trial_id, trial.config, where, epoch)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial ended (finished, early-stopped or pruned)."""
        self.book.ended(trial.trial_id, trial.config, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial failed for good (its retries spent)."""
        self.book.ended(trial.trial_id, trial.config, "ERROR", error_text(trial))


def error_text(trial: Any) -> str:
    """The end of a failed trial's error: its error file, else Tune's message."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text()[-ERROR_TAIL:]
    return str(getattr(trial, "error_msg", None) or "trial failed")


class Watchdog(tune.Callback):
    """Turns "a running trial has reported nothing for ``sweep.stall_timeout`` seconds" into
    ``SweepStalled`` naming it. Tune's controller loop keeps turning while a trial hangs in
    its own process (as trials did at their end with Ray's own Train-to-Tune bridge), so a
    check at each step of that loop sees any trial's silence."""

    def __init__(self, timeout: float, planned_epochs: int) -> None:
        self.timeout, self.planned = timeout, planned_epochs
        self._seen: dict[str, float] = {}  # running trial -> when it last started or reported

    def __getstate__(self) -> dict[str, Any]:
        # Tune saves its callbacks with the experiment; a resumed sweep starts its clocks anew
        return {**self.__dict__, "_seen": {}}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial's clock starts."""
        self._seen[trial.trial_id] = time.monotonic()

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        """A trial's clock restarts."""
        self._seen[trial.trial_id] = time.monotonic()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """Each turn of Tune's loop: raise ``SweepStalled`` for a trial silent too long."""
        now = time.monotonic()
        running = {t.trial_id: t for t in trials if t.status == "RUNNING"}
        # a paused, pending or ended trial is not silent; one that runs again starts anew
        self._seen = {tid: self._seen.get(tid, now) for tid in running}
        found = progress.stalled(self._seen, now, self.timeout)
        if found is None:
            return
        trial = running[found[0]]
        epoch = int((trial.last_result or {}).get("epoch", 0))
        raise progress.SweepStalled(
            progress.stall_message(
                found[0],
                values_of(trial.config),
                epoch,
                self.planned,
                found[1],
                self.timeout,
            )
        )
