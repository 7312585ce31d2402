"""What the terminal shows: the sweep ledger, progress lines and the final table. Pure code."""

from __future__ import annotations

import math
from typing import Any

from orchestrator.core.ledger import TrialRecord, best_trial

FIXED_MIN = 1e-2  # smaller floats (but 0) show in 3 significant digits: 4 decimals lose them
FIXED_MAX = 1e4  # larger floats too: 4 decimals would make the columns too wide


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if (abs(v) < FIXED_MIN and v != 0) or abs(v) >= FIXED_MAX else f"{v:.4f}"
    return str(v)


SCORES = ("accuracy", "r2", "f1")  # a task's headline score: classes, regression, multilabel


def score_key(values: dict[str, Any], split: str = "val") -> str:
    """The task's headline score among ``values`` (``val_accuracy`` for classes,
    ``val_r2`` for regression, ``val_f1`` (micro) for multilabel)."""
    for score in SCORES:
        if f"{split}_{score}" in values:
            return f"{split}_{score}"
    return f"{split}_accuracy"


def test_summary(t: dict[str, float]) -> str:
    """The champion's test scores in words, as fits its task."""
    if "test_accuracy" in t:
        return f"test accuracy {t['test_accuracy']:.4f}, macro F1 {t['test_f1']:.4f}"
    if "test_r2" in t:
        return f"test RMSE {t['test_rmse']:.4g}, MAE {t['test_mae']:.4g}, R² {t['test_r2']:.4f}"
    return (
        f"test micro F1 {t.get('test_f1', math.nan):.4f}, macro F1 "
        f"{t.get('test_macro_f1', math.nan):.4f}, subset accuracy "
        f"{t.get('test_subset_accuracy', math.nan):.4f}"
    )


def epoch_line(result: dict[str, Any]) -> str:
    """The ``[train]`` line of one reported epoch: its losses and scores, and how it ended."""
    keys = (
        "train_loss",
        "val_loss",
        "train_accuracy",
        "val_accuracy",
        "val_f1",
        "val_rmse",
        "val_r2",
        "val_subset_accuracy",
    )
    flags = " ".join(k for k in ("early_stopped", "diverged") if result.get(k))
    return (
        f"[train] epoch {int(result['epoch'])}: "
        + " ".join(f"{k}={float(result[k]):.4f}" for k in keys if k in result)
        + (f" ({flags})" if flags else "")
    )


def progress_line(records: list[TrialRecord], total: int, metric: str, mode: str) -> str:
    """The ``[sweep]`` line: trials done and running, and the best trial so far with its values."""
    done = sum(r.status in ("TERMINATED", "ERROR") for r in records)
    running = sum(r.status == "RUNNING" for r in records)
    best = best_trial(records, metric, mode)
    head = f"[sweep] trials done {done}/{total}, in progress {running}"
    if best is None or best.best is None:
        return head
    values = ", ".join(f"{k}={_fmt(v)}" for k, v in best.values.items())
    score = score_key(best.best)
    return (
        f"{head} | best {metric}={best.best[metric]:.4f} "
        f"({score}={best.best.get(score, float('nan')):.4f}; {values})"
    )


def status_of(r: TrialRecord, planned_epochs: int) -> str:
    """How a trial ended, in the table's words (diverged, early stopping, pruned, finished,
    failed), or its Tune status in lower case while it has not."""
    last = r.history[-1] if r.history else {}
    if last.get("diverged"):
        return "diverged"
    if last.get("early_stopped"):
        return "early stopping"
    if r.status == "TERMINATED" and r.epochs < planned_epochs:
        return "pruned"  # stopped by the scheduler (ASHA)
    return {"TERMINATED": "finished", "ERROR": "failed"}.get(r.status, r.status.lower())


def table(
    records: list[TrialRecord],
    keys: list[str],
    champion_id: str | None,
    planned_epochs: int,
    rank: tuple[str, str] = ("val_loss", "min"),
) -> str:
    """The final trial table, best first: searched values, epochs run, the ranking metric,
    val loss and accuracy, and the generalization gap at the best epoch."""
    key, mode = rank
    score = score_key(next((r.best for r in records if r.best), {}))
    shown = [k for k in dict.fromkeys((key, "val_loss", score, "gap"))]
    header = ["trial", *keys, "epochs", *shown, "status", "fit"]
    sign = 1 if mode == "min" else -1
    rows = []
    for r in sorted(records, key=lambda r: sign * (r.best or {}).get(key, sign * math.inf)):
        best = r.best or {}
        mark = " *" if r.trial_id == champion_id else ""
        rows.append(
            [
                r.trial_id + mark,
                *(_fmt(r.values.get(k, "")) for k in keys),
                str(r.epochs),
                *(_fmt(best.get(k, float("nan"))) for k in shown),
                status_of(r, planned_epochs),
                r.diagnosis or "-",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def round_rows(rounds: list[Any], metric: str, mode: str) -> list[dict[str, Any]]:
    """An autopilot's rounds (each with ``number``, ``records``, ``best``, ``label``, as the
    state file keeps them) as rows: trials run, the round's best and the best so far, the
    label that steered the next round, and where the round's best trial sat (the sweet spot
    as each round found it)."""
    rows: list[dict[str, Any]] = []
    so_far: float | None = None
    for r in rounds:
        r = r if isinstance(r, dict) else vars(r)
        scored = [t for t in r["records"] if (t.get("best") or {}).get(metric) is not None]
        top = sorted(scored, key=lambda t: t["best"][metric], reverse=mode == "max")[:1]
        best = r.get("best")
        if best is not None and math.isfinite(best):
            better = so_far is None or (best < so_far if mode == "min" else best > so_far)
            so_far = best if better else so_far
        rows.append(
            {
                "round": r["number"],
                "trials": len(r["records"]),
                "best": best,
                "so_far": so_far,
                "label": r.get("label"),
                "at": top[0]["values"] if top else {},
                "space": r.get("space", {}),
                "steer": r.get("steer", []),
                "done": r.get("done", True),
                "scores": [float(t["best"][metric]) for t in scored],
            }
        )
    return rows


def rounds_table(rounds: list[Any], metric: str, mode: str) -> list[str]:
    """The autopilot's rounds for the terminal (nothing for a plain sweep)."""
    rows = round_rows(rounds, metric, mode)
    if not rows:
        return []
    header = ["round", "trials", f"best {metric}", "so far", "steered by", "round's best trial"]
    cells = [
        [
            str(r["round"]),
            str(r["trials"]),
            "-" if r["best"] is None else _fmt(float(r["best"])),
            "-" if r["so_far"] is None else _fmt(float(r["so_far"])),
            r["label"] or "-",
            ", ".join(f"{k}={_fmt(v)}" for k, v in r["at"].items()) or "-",
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *cells, strict=False)]
    line = lambda c: "  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths]), *map(line, cells), ""]


class SweepStalled(RuntimeError):
    """A running trial reported nothing for ``sweep.stall_timeout`` seconds."""


def stalled(last_seen: dict[str, float], now: float, timeout: float) -> tuple[str, float] | None:
    """The running trial that has been silent longest, with its silence in seconds, when that
    is more than ``timeout``; else None. ``last_seen``: trial id -> when it last started or
    reported, for the trials running now."""
    if not last_seen:
        return None
    trial_id = min(last_seen, key=lambda t: last_seen[t])
    silent = now - last_seen[trial_id]
    return (trial_id, silent) if silent > timeout else None


def stall_message(
    trial_id: str, values: dict[str, Any], epoch: int, planned: int, silent: float, timeout: float
) -> str:
    """Why the sweep was stopped: which trial went silent, for how long, and where it was."""
    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()) or "no searched values"
    last = f"last result: epoch {epoch} of {planned}" if epoch else "no result yet"
    return (
        f"trial {trial_id} ({shown}) has reported nothing for {silent / 60:.1f} min "
        f"({last}; sweep.stall_timeout is {timeout:g} s): the sweep was stopped instead "
        "of waiting on it"
    )
