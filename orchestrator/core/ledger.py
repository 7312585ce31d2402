"""The trial ledger: one record per trial as the driver saw it, its best epoch, and the best
trial. Pure code: the sweep's Tune callback folds results in, the terminal table and the
report read it out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrialRecord:
    """One trial as the driver saw it: the sampled values, its epochs, its best epoch."""

    trial_id: str
    values: dict[str, Any]
    run_id: str | None = None
    epochs: int = 0
    best: dict[str, float] | None = None
    checkpoint: str | None = None  # the best epoch's checkpoint folder
    status: str = "RUNNING"
    error: str | None = None
    logged: int = 0  # the last epoch written to MLflow
    best_values: dict[str, Any] | None = None  # the values at the best epoch (PBT moves them)
    gap: tuple[int, int] | None = None  # epochs (lo, hi) exclusive this driver never received
    history: list[dict[str, float]] = field(default_factory=list)
    diagnosis: str | None = None  # one of orchestrator.core.diagnosis.LABELS, once it ended
    diagnosis_reasons: str = ""
    diagnosis_fixes: list[str] = field(default_factory=list)


def better(new: float, old: float | None, mode: str) -> bool:
    """At least as good: a tie moves the best to the later epoch, as the loop's checkpoint
    at every best and Tune's keep-the-best-N both do."""
    if old is None or math.isnan(old):
        return not math.isnan(new)
    return new <= old if mode == "min" else new >= old


def update(record: TrialRecord, result: dict[str, Any], metric: str, mode: str) -> bool:
    """Fold one epoch's result into the record; True when it is the trial's best so far."""
    row = {k: float(v) for k, v in result.items() if isinstance(v, (int, float))}
    record.history.append(row)
    record.epochs = int(row.get("epoch", record.epochs + 1))
    if metric in row and better(row[metric], record.best[metric] if record.best else None, mode):
        record.best, record.best_values = row, dict(record.values)
        # the relayed checkpoint (DDP trials); fast-path trials' arrives after (on_checkpoint)
        record.checkpoint = result.get("checkpoint_path")
        return True
    return False


def best_trial(records: list[TrialRecord], metric: str, mode: str) -> TrialRecord | None:
    """The trial with the best ``metric`` among those with a checkpoint that did not fail."""
    done = [r for r in records if r.best is not None and r.checkpoint and r.status != "ERROR"]
    if not done:
        return None
    return (min if mode == "min" else max)(done, key=lambda r: r.best[metric])  # type: ignore[index]
