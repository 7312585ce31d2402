"""Where the driver's words go: the ``out`` of a sweep, as plain lines or as lines above a
live view of the running trials.

A ``Screen`` is called with a line like ``print``. On a terminal (``live=True``) it also keeps
a rich live view at the bottom of the screen: a row per running trial, the header with the
trials done, the best so far and the time left, the phase that is not trials (refit, test,
registration, MLflow) and the warnings that matter. The trial books feed it at each turn of
Tune's loop (``trials``); it builds a frame from the ledger at most ``FRAMES_PER_S`` times a
second, and the refresh thread only draws the last frame. Without a terminal (CI, a pipe,
``--plain``) the same frame is printed as one line every ``PLAIN_EVERY_S`` seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from orchestrator.analysis import live

PLACEMENT_LOGGER = "ray.tune.execution.insufficient_resources_manager"  # Tune's "cannot place"
ASKED = re.compile(r"You asked for .*? per trial, but the cluster only has [^.]*(\.\d+)?[^.]*")
MLFLOW_AWAY = ("[tracking] MLflow unreachable", "[tracking] MLflow at")  # lines kept in view
MLFLOW_BACK = "[tracking] MLflow answers again"
FRAMES_PER_S = 4  # the view is rebuilt from the ledger at most this often
PLAIN_EVERY_S = 30.0  # without a terminal: a progress line this often while trials run
NOTES = 3  # warnings kept in view


def wants_live(plain: bool = False, stream: Any = None) -> bool:
    """A live view only on a terminal, never in CI or with ``--plain`` (or
    ``ORCHESTRATOR_PLAIN=1``)."""
    stream = stream or sys.stdout
    if plain or os.environ.get("ORCHESTRATOR_PLAIN") == "1" or os.environ.get("CI"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


class Screen:
    """A sweep's ``out``: call it with a line; books and stages tell it more (see module)."""

    def __init__(self, live_view: bool = False, console: Any = None) -> None:
        self.live_view = live_view
        self._console = console
        self._live: Any = None  # rich.live.Live while a view is up
        self._lock = threading.Lock()
        self._frame: live.Frame | None = None
        self._book: Any = None
        self._book_started = 0.0
        self._first_epoch: float | None = None
        self._built = 0.0  # when the last frame was built
        self._printed = 0.0  # when the last plain progress line was printed
        self._phase: tuple[str, float] | None = None
        self._notes: deque[str] = deque(maxlen=NOTES)
        # Ray's own logging is at ERROR unless --verbose: Tune's warning that no trial can
        # be placed would be lost, so it is taken here and kept in view, in words
        self._placement = _Placement(self)
        placement = logging.getLogger(PLACEMENT_LOGGER)
        placement.addHandler(self._placement)
        placement.setLevel(logging.WARNING)
        placement.propagate = False

    # ------------------------------------------------------------ lines

    def __call__(self, line: str) -> None:
        """One line, above the live view when there is one (MLflow away: kept in view)."""
        if line.startswith(MLFLOW_AWAY):
            self._notes.append(line.removeprefix("[tracking] "))
        elif line.startswith(MLFLOW_BACK):
            kept = [n for n in self._notes if not n.startswith("MLflow")]
            self._notes.clear()
            self._notes.extend(kept)
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, flush=True)

    def note(self, text: str) -> None:
        """A warning that matters to the user (a trial that cannot be placed, a node lost,
        MLflow away): a line, and kept in view while it runs."""
        self(f"[warning] {text}")
        self._notes.append(text)

    # ------------------------------------------------------------ the trials

    def trials(self, book: Any, statuses: dict[str, str] | None = None) -> None:
        """A turn of Tune's loop for ``book`` (a ``Book``): a new frame, at most
        ``FRAMES_PER_S`` times a second."""
        now = time.monotonic()
        if book is not self._book:  # a new Tune run (search, confirmation, a round): new clocks
            self._book, self._book_started, self._first_epoch = book, now, None
            self._built = 0.0
        if now - self._built < 1 / FRAMES_PER_S:
            return
        self._built = now
        records = book.records
        if self._first_epoch is None and any(r.epochs for r in records):
            self._first_epoch = now
        frame = live.frame(
            records,
            book.total,
            book.key,
            book.mode,
            book.cfg.train.epochs,
            now - self._book_started,
            statuses,
            active=None if self._first_epoch is None else now - self._first_epoch,
        )
        self._frame = dataclasses.replace(frame, title=book.title)
        if self.live_view:
            self._show()
        elif now - self._printed >= PLAIN_EVERY_S and records:
            self._printed = now
            self(live.plain_line(self._current()))

    def rest(self) -> None:
        """A Tune run ended: the view of its trials goes (the lines above it stay)."""
        self._frame, self._book = None, None
        if self._phase is None:
            self._hide()

    # ------------------------------------------------------------ the stages between

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A stage that is not trials (data scan, refit, test, registration, MLflow): shown
        with its running time while it lasts; a line when it starts."""
        self(f"[sweep] {name} ...")
        self._phase = (name, time.monotonic())
        if self.live_view:
            self._show()
        try:
            yield
        finally:
            took = time.monotonic() - self._phase[1]
            self._phase = None
            if self._frame is None:
                self._hide()
            if took >= 1:
                self(f"[sweep] {name}: done in {live.duration(took)}")

    def close(self) -> None:
        """Take the view down (the end of the command, or an error)."""
        self._frame, self._book, self._phase = None, None, None
        self._hide()
        placement = logging.getLogger(PLACEMENT_LOGGER)
        placement.removeHandler(self._placement)
        placement.propagate = True

    # ------------------------------------------------------------ drawing

    def _current(self) -> live.Frame:
        """The last frame with its clocks moved to now, the phase and the notes."""
        now = time.monotonic()
        frame = self._frame or live.Frame("sweep", "", 0, 0, 0, None, 0.0, None)
        phase, since = self._phase or (None, now)
        return dataclasses.replace(
            frame,
            elapsed=now - self._book_started if self._frame else 0.0,
            phase=phase,
            phase_elapsed=now - since,
            notes=list(self._notes),
        )

    def _renderable(self) -> Any:
        frame = self._current()
        if self._frame is None:  # a phase alone (or nothing, as the view goes down)
            from rich.text import Text

            if frame.phase is None:
                return Text("")
            return Text(f"{frame.phase} ... {live.duration(frame.phase_elapsed)}", style="cyan")
        return live.render(frame)

    def _show(self) -> None:
        with self._lock:
            if self._live is None:
                from rich.console import Console
                from rich.live import Live

                self._live = Live(
                    get_renderable=self._renderable,
                    console=self._console or Console(),
                    refresh_per_second=FRAMES_PER_S,
                    transient=True,  # the final table prints below the lines, not a frame
                    redirect_stdout=True,
                    redirect_stderr=True,
                )
                self._live.start()

    def _hide(self) -> None:
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None


class _Placement(logging.Handler):
    """Tune's "no trial could be placed" warning, as a note on the screen."""

    def __init__(self, screen: Screen) -> None:
        super().__init__(logging.WARNING)
        self.screen = screen

    def emit(self, record: logging.LogRecord) -> None:
        """A note naming what a trial asks for and what the cluster has, when Tune says."""
        found = ASKED.search(record.getMessage())
        self.screen.note(
            "no trial could be placed for a while"
            + (f": {found.group(0).strip()}" if found else " (the cluster lacks the resources)")
        )


def of(out: Any) -> Screen | None:
    """The screen behind a sweep's ``out``, when it is one (a plain ``print`` is not)."""
    return out if isinstance(out, Screen) else None


def reading(out: Any, cfg: Any) -> contextlib.AbstractContextManager[None]:
    """The data's first pass as a phase when the data is streamed (a big table: the scan
    takes a while); nothing for data read whole, which is quick."""
    from orchestrator.core import data

    try:
        loader = data.choose_loader(cfg.data, data.size_bytes(cfg.data))
    except Exception:  # prepare() names what is wrong with the data, before any work
        return contextlib.nullcontext()
    if loader != "stream":
        return contextlib.nullcontext()
    return phase(out, "scanning the data (one pass: rows, classes, encoders)")


def phase(out: Any, name: str) -> contextlib.AbstractContextManager[None]:
    """``Screen.phase`` when ``out`` is a screen; otherwise a line and nothing more."""
    screen = of(out)
    if screen is not None:
        return screen.phase(name)
    out(f"[sweep] {name} ...")
    return contextlib.nullcontext()
