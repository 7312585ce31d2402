"""The live view of a running sweep: what every running trial is doing, how far the sweep
is and how long it has left, built from the ledger alone.

``frame`` reads the trial records (and Tune's status of each, where the driver has it) into
a ``Frame``; ``render`` draws a frame with rich (a header, a row per running or paused trial,
the phase that is not trials, the warnings that matter); ``plain_line`` says the same in one
line for logs and CI. All three are pure: the screen that refreshes them lives in
``orchestrator.sweep.screen``.

Time left is read from epochs, not trials: the epochs still to come (the trials not yet
ended, each expected to train as long as the ended ones did on average, or its whole
budget while none has ended) at the pace of the epochs done so far.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.ledger import TrialRecord

MAX_ROWS = 12  # running trials shown; more are counted in a last row
MINUTE, HOUR = 60, 3600
VALUES_WIDTH = 48  # characters of a trial's searched values before they are cut
SHOWN = ("RUNNING", "PAUSED", "PENDING")  # Tune's statuses a row is shown for


@dataclass(frozen=True)
class Row:
    """One running (or paused) trial as the view shows it."""

    trial_id: str
    values: str
    epoch: int
    planned: int
    train_loss: float
    val_loss: float
    best: float
    status: str  # running, paused, pending


@dataclass(frozen=True)
class Frame:
    """Everything one refresh of the view shows (see ``frame``)."""

    title: str  # "sweep ap-digits-0", "round 2", "confirm"
    key: str  # the ranking metric
    done: int  # trials ended
    total: int  # trials planned
    running: int
    best: str | None  # "trial X val_loss 0.1055 (epoch 8)"
    elapsed: float  # seconds since the view started
    left: float | None  # seconds, estimated; None until an epoch is done
    rows: list[Row] = field(default_factory=list)
    hidden: int = 0  # running trials past MAX_ROWS
    phase: str | None = None  # a stage that is not trials: refit, test, registration...
    phase_elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)  # warnings that matter, in words


def frame(
    records: Sequence[TrialRecord],
    total: int,
    key: str,
    mode: str,
    planned: int,
    elapsed: float,
    statuses: dict[str, str] | None = None,
    active: float | None = None,
) -> Frame:
    """The view (titled ``sweep``: replace ``title`` for a round or a confirmation) of
    ``records`` (the ledger) for a run of ``total`` trials of up to
    ``planned`` epochs each, ``elapsed`` seconds in; ``statuses``: Tune's status of each
    trial (RUNNING, PAUSED, PENDING, TERMINATED, ERROR), when the driver has them;
    ``active``: seconds since the first epoch arrived (the pace of the epochs is read over
    them; default ``elapsed``)."""
    statuses = statuses or {}
    ended = [r for r in records if _status(r, statuses) not in SHOWN]
    live = [r for r in records if _status(r, statuses) in SHOWN]
    live.sort(key=lambda r: (_status(r, statuses) != "RUNNING", -r.epochs, r.trial_id))
    rows = [
        Row(
            r.trial_id,
            _values(r.values),
            r.epochs,
            planned,
            _last(r, "train_loss"),
            _last(r, key),
            (r.best or {}).get(key, math.nan),
            _status(r, statuses).lower(),
        )
        for r in live[:MAX_ROWS]
    ]
    scored = [r for r in records if r.best and math.isfinite(r.best.get(key, math.nan))]
    best = (min if mode == "min" else max)(scored, key=lambda r: r.best[key]) if scored else None  # type: ignore[index]
    best_text = None
    if best is not None and best.best:
        best_text = (
            f"trial {best.trial_id} {key} {best.best[key]:.4f} (epoch {int(best.best['epoch'])})"
        )
    return Frame(
        "sweep",
        key,
        len(ended),
        max(total, len(records)),
        sum(_status(r, statuses) == "RUNNING" for r in live),
        best_text,
        elapsed,
        time_left(records, total, planned, elapsed if active is None else active, statuses),
        rows,
        max(0, len(live) - MAX_ROWS),
    )


def time_left(
    records: Sequence[TrialRecord],
    total: int,
    planned: int,
    active: float,
    statuses: dict[str, str] | None = None,
) -> float | None:
    """Seconds the trials still need, estimated from the epochs (see the module); None
    before the first epoch."""
    statuses = statuses or {}
    done = sum(r.epochs for r in records)
    if done <= 0 or active <= 0:
        return None
    ended = [r for r in records if _status(r, statuses) not in SHOWN]
    per_trial = sum(r.epochs for r in ended) / len(ended) if ended else float(planned)
    still = sum(
        max(per_trial - r.epochs, 0.0) for r in records if _status(r, statuses) in SHOWN
    ) + per_trial * max(total - len(records), 0)
    return still * active / done


def render(f: Frame) -> Any:
    """The frame drawn with rich: a header, the running trials' table, the phase and the
    notes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text(header(f), style="bold")]
    if f.total == 1 and f.rows:  # one run (`orchestrator train`): a bar over its epochs
        from rich.progress_bar import ProgressBar
        from rich.table import Table as Grid

        r = f.rows[0]
        bar = Grid.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(r.planned, 1), completed=r.epoch, width=40),
            f"epoch {r.epoch}/{r.planned}  train_loss {_num(r.train_loss)}  "
            f"{f.key} {_num(r.val_loss)}  best {_num(r.best)}",
        )
        parts.append(bar)
    elif f.rows:
        table = Table(box=None, pad_edge=False, header_style="dim")
        for name, justify in (
            ("trial", "left"),
            ("values", "left"),
            ("epoch", "right"),
            ("train_loss", "right"),
            (f.key, "right"),
            (f"best {f.key}", "right"),
            ("status", "left"),
        ):
            table.add_column(name, justify=justify, no_wrap=name != "values")  # type: ignore[arg-type]
        for r in f.rows:
            table.add_row(
                r.trial_id,
                r.values,
                f"{r.epoch}/{r.planned}",
                _num(r.train_loss),
                _num(r.val_loss),
                _num(r.best),
                r.status,
            )
        if f.hidden:
            table.add_row("", f"... and {f.hidden} more", "", "", "", "", "")
        parts.append(table)
    if f.phase:
        parts.append(Text(f"{f.phase} ... {duration(f.phase_elapsed)}", style="cyan"))
    parts += [Text(f"! {n}", style="yellow") for n in f.notes]
    return Group(*parts)


def header(f: Frame) -> str:
    """The view's first line: trials done, running, the best so far, elapsed, left."""
    left = "" if f.left is None else f", ~{duration(f.left)} left"
    best = f"; best {f.best}" if f.best else ""
    return (
        f"[{f.title}] {f.done}/{f.total} trials done, {f.running} running{best}; "
        f"{duration(f.elapsed)} elapsed{left}"
    )


def plain_line(f: Frame) -> str:
    """The frame in one line (logs, CI, ``--plain``): the header and each running trial's
    epoch and latest validation score."""
    trials = "; ".join(
        f"{r.trial_id} epoch {r.epoch}/{r.planned} {f.key} {_num(r.val_loss)}"
        for r in f.rows
        if r.status == "running"
    )
    phase = f"; {f.phase} ({duration(f.phase_elapsed)})" if f.phase else ""
    return header(f) + (f" | {trials}" if trials else "") + phase


def _status(r: TrialRecord, statuses: dict[str, str]) -> str:
    return statuses.get(r.trial_id, r.status)


def _last(r: TrialRecord, key: str) -> float:
    return float(r.history[-1].get(key, math.nan)) if r.history else math.nan


def _values(values: dict[str, Any]) -> str:
    text = ", ".join(
        f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
        for k, v in values.items()
    )
    return text if len(text) <= VALUES_WIDTH else text[: VALUES_WIDTH - 3] + "..."


def _num(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.4f}"


def duration(seconds: float) -> str:
    """Seconds as people read them: 42s, 3m 05s, 2h 07m."""
    s = max(0, int(round(seconds)))
    if s < MINUTE:
        return f"{s}s"
    if s < HOUR:
        return f"{s // MINUTE}m {s % MINUTE:02d}s"
    return f"{s // HOUR}h {s % HOUR // MINUTE:02d}m"
