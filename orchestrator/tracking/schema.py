"""Every key this orchestrator writes to MLflow, in one place: run tags, the per-epoch metric
names, the roles of its runs. The names are those 0.1 wrote (runs it logged are still read
by ``diagnose`` and ``report``); a new key is added here, never spelled where it is used.
No MLflow import."""

from __future__ import annotations

import re

# ---------------------------------------------------------------- every run
ROLE = "orchestrator.role"
"""What a run is: one of ``ROLES``."""
ROLES = ("autopilot", "sweep", "trial", "confirm", "train", "curve", "curve_point")
TRIAL_ID = "orchestrator.trial_id"
GIT_COMMIT = "orchestrator.git_commit"
CONFIG_HASH = "orchestrator.config_hash"
"""Of the redacted config (see ``config.config_hash``)."""
DATASET_FINGERPRINT = "orchestrator.dataset_fingerprint"
VERSIONS = "orchestrator.versions"
"""ray, torch, mlflow and python versions of the driver."""
HOST = "orchestrator.host"
OUTBOX_ID = "orchestrator.outbox_id"
"""The placeholder id a run was created with by the outbox: a replay finds a run it already
created by it (and a registered version, on the version's tags)."""

# ---------------------------------------------------------------- the sweep's run
SWEEP_DIR = "orchestrator.sweep_dir"
BASELINE = "orchestrator.baseline"
EXPERIMENT_KIND = "mlflow.experimentKind"  # which view MLflow's UI opens an experiment in
MODEL_TRAINING = "custom_model_development"  # (the other: genai_development, traces)
"""Prose for people: ``loss=0.1234 accuracy=0.1234 (predicting ...)``; the numbers are also
in ``BASELINE_LOSS`` and ``BASELINE_ACCURACY`` (runs of 0.1 have only this one)."""
BASELINE_LOSS = "orchestrator.baseline_loss"
BASELINE_ACCURACY = "orchestrator.baseline_accuracy"
RESUMED = "orchestrator.resumed"
ERROR = "orchestrator.error"
"""Why a run (a sweep or a trial) failed, its last 5000 characters."""
CHAMPION_TRIAL = "orchestrator.champion_trial"
CHAMPION_VERSION = "orchestrator.champion_version"
CHAMPION_VALUE = "orchestrator.champion."
"""Prefix: ``orchestrator.champion.<dotted key>`` = the champion's value of that key."""
CONFIRM = "orchestrator.confirm."
"""Prefix: ``orchestrator.confirm.<trial id>`` = that configuration's seed reruns."""
ROWS = "orchestrator.rows."
"""Prefix: ``orchestrator.rows.<split>`` = rows in that split."""
REFINED_FROM = "orchestrator.refined_from"
REFINED_FROM_SWEEP = "orchestrator.refined_from_sweep"
REFINE_REASONS = "orchestrator.refine_reasons"
CURVE_SIZES = "orchestrator.curve_sizes"
"""On a ``curve`` run: the training-set sizes measured, comma-separated."""
CURVE_VERDICT = "orchestrator.curve_verdict"
"""On a ``curve`` run: ``helps``, ``little``, ``flat`` or ``unreliable`` (``core.curve``)."""
CURVE_SUMMARY = "orchestrator.curve_summary"
ROUND = "orchestrator.round"
"""On an autopilot round's ``sweep`` run: its number, from 1."""
ROUND_SPACE = "orchestrator.round_space"
"""On a round's run: the space it searched (JSON)."""
ROUND_REASONS = "orchestrator.round_reasons"
"""On a round's run: why its space is what it is (round 1: the broad space, key by key;
later: the steering that made it), one reason per line."""
ROUND_LABEL = "orchestrator.round_label"
"""On a round's run: the label most of the best quarter of every trial so far carry (what
steered the next round)."""
STEER_REASONS = "orchestrator.steer_reasons"
"""On a round's run: why the next round's space is what it is, one reason per line."""
AUTOPILOT_BUDGET = "orchestrator.autopilot_budget"
"""On the ``autopilot`` run: how the budget is split (``autopilot.Budget.describe``)."""
AUTOPILOT_STOP = "orchestrator.autopilot_stop"
"""On the ``autopilot`` run: why it stopped searching."""

# ---------------------------------------------------------------- a trial's run
CHAMPION = "orchestrator.champion"
"""``true`` on the trial run whose configuration became the champion."""
STATUS = "orchestrator.status"
EPOCHS_RUN = "orchestrator.epochs_run"
BEST_CHECKPOINT = "orchestrator.best_checkpoint"
DIAGNOSIS = "orchestrator.diagnosis"
"""One of ``orchestrator.core.diagnosis.LABELS``."""
DIAGNOSIS_REASONS = "orchestrator.diagnosis_reasons"
DIAGNOSIS_FIXES = "orchestrator.diagnosis_fixes"
"""The fixes, joined by ``"; "``."""
VALUES_AT_EPOCH = "orchestrator.values.epoch"
"""Prefix: ``orchestrator.values.epoch<N>`` = the values PBT moved a trial to at epoch N."""

# ---------------------------------------------------------------- metrics
METRIC_KEYS = (
    "train_loss",
    "train_accuracy",
    "train_f1",
    "val_loss",
    "val_accuracy",
    "val_f1",
    "gap",
    "objective",
    *(f"{split}_{m}" for split in ("train", "val") for m in ("rmse", "mae", "r2")),
    *(f"{split}_{m}" for split in ("train", "val") for m in ("macro_f1", "subset_accuracy")),
)
"""What every epoch logs (step = the epoch): the losses and each task's metrics (accuracy
and F1 for classes; RMSE, MAE, R² for regression; micro and macro F1, subset accuracy for
multilabel)."""


def baseline_tags(loss: float, accuracy: float) -> dict[str, str]:
    """The sweep run's baseline: the prose tag for people and the two numbers for code."""
    return {
        BASELINE: f"loss={loss:.4f} accuracy={accuracy:.4f} (the trivial predictor: the "
        "training split's class frequencies, mean target or label frequencies)",
        BASELINE_LOSS: repr(float(loss)),
        BASELINE_ACCURACY: repr(float(accuracy)),
    }


def read_baseline(tags: dict[str, str]) -> tuple[float, float]:
    """(loss, accuracy) of a sweep run's baseline: the number tags, or for a run logged by
    0.1 (which wrote only the prose), the numbers in the prose."""
    if BASELINE_LOSS in tags and BASELINE_ACCURACY in tags:
        return float(tags[BASELINE_LOSS]), float(tags[BASELINE_ACCURACY])
    found = dict(re.findall(r"(loss|accuracy)=([0-9.eE+-]+)", tags.get(BASELINE, "")))
    return float(found.get("loss", "nan")), float(found.get("accuracy", "nan"))
