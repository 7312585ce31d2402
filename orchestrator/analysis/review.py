"""After a sweep: `orchestrator diagnose EXPERIMENT`. Reads the sweep back from MLflow (its
trials' values, curves and labels), prints the bias/variance picture and proposes the next
search space, which is also written next to the sweep as ``next_space.yaml``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator import config as config_mod
from orchestrator.analysis import plots, progress
from orchestrator.config import Config, ConfigError
from orchestrator.core import diagnosis, storage
from orchestrator.core import state as state_file
from orchestrator.core.prepare import prepare
from orchestrator.tracking import location, schema, writer

NEXT_SPACE = "next_space.yaml"


@dataclass
class TrialView:
    """One trial as read back from MLflow: its searched values, curves, fit label and best epoch."""

    trial_id: str
    run_id: str
    values: dict[str, Any]
    history: list[dict[str, float]]
    label: str | None
    reasons: str
    fixes: list[str] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)  # the row of the best epoch


@dataclass
class SweepView:
    """A sweep as read back for ``diagnose`` and ``report``: its trials, baseline and the
    proposed next search space with the reasons for it."""

    folder: storage.Folder
    cfg: Config
    parent_run_id: str
    baseline: diagnosis.Baseline
    trials: list[TrialView]
    space: dict[str, dict[str, Any]]  # proposed next
    why: list[str]
    rounds: list[dict[str, Any]] = field(default_factory=list)  # an autopilot's, as saved


METRICS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "gap", "val_r2", "val_f1")
"""Read back for each trial (with the ranking metric): the losses, the gap and each task's
headline score (accuracy for classes, R² for regression, micro F1 for multilabel)."""


def load(experiment: str, storage: str = "results") -> SweepView:
    """A finished (or stopped) sweep, from its folder's state and MLflow."""
    from mlflow.tracking import MlflowClient

    folder = state_file.find_sweep(experiment, storage)
    state = state_file.read(folder)
    # saved redacted: the tracking URI's credentials come back from the environment
    cfg = state_file.saved_config(state, keys=["tracking.uri"])
    client = MlflowClient(location.resolve_uri(cfg))
    parent = client.get_run(state["parent_run_id"])
    base = diagnosis.Baseline(*schema.read_baseline(parent.data.tags))
    if not math.isfinite(base.loss):  # a sweep from before the baseline was logged
        try:
            base = prepare(cfg).baseline
        except (ConfigError, OSError):
            pass  # the data moved: the trials stay unlabelled
    key, mode = config_mod.rank_metric(cfg)
    # an autopilot's trials sit under its rounds' runs; a sweep's under its own run
    rounds = (state.get("autopilot") or {}).get("rounds", [])
    parents = [r["run_id"] for r in rounds if r.get("run_id")] or [state["parent_run_id"]]
    runs = [r for p in parents for r in writer.child_runs(client, state["experiment_id"], p)]
    views = []
    for run in runs:
        if run.data.tags.get(schema.ROLE) != "trial":
            continue
        values = {
            k: yaml.safe_load(run.data.params[k]) for k in cfg.sweep.space if k in run.data.params
        }
        rows: dict[int, dict[str, float]] = {}
        for m in dict.fromkeys((*METRICS, config_mod.rank_metric(cfg)[0])):
            for point in client.get_metric_history(run.info.run_id, m):
                rows.setdefault(point.step, {"epoch": float(point.step)})[m] = point.value
        history = [rows[e] for e in sorted(rows)]
        label = run.data.tags.get(schema.DIAGNOSIS)
        reasons = run.data.tags.get(schema.DIAGNOSIS_REASONS, "")
        fixes = [f for f in run.data.tags.get(schema.DIAGNOSIS_FIXES, "").split("; ") if f]
        if label is None and history:  # a sweep from before the labels: judge it now
            # how it ended is a tag, not a metric: put the loop's flag back on its last epoch
            status = run.data.tags.get(schema.STATUS, "")
            flag = {"early stopping": "early_stopped", "diverged": "diverged"}.get(status)
            if flag:
                history[-1] = {**history[-1], flag: 1.0}
            found = (
                diagnosis.failed(len(history))
                if status == "failed"
                else diagnosis.diagnose(
                    history, base, config_mod.with_values(cfg, values), cfg.diagnosis
                )
            )
            if found is not None:
                label, reasons, fixes = found.label, found.reasons, found.fixes
        scored = [r for r in history if key in r and math.isfinite(r[key])]
        best = (min if mode == "min" else max)(scored, key=lambda r: r[key]) if scored else {}
        views.append(
            TrialView(
                run.data.tags.get(schema.TRIAL_ID, run.info.run_id),
                run.info.run_id,
                values,
                history,
                label,
                reasons,
                fixes,
                best,
            )
        )
    if not views:
        raise ConfigError(
            "EXPERIMENT",
            f"the sweep in {folder} has no trial runs in MLflow",
            "run the sweep first, or check tracking.uri",
        )
    points = [{**v.values, key: v.best[key], "label": v.label} for v in views if v.best]
    space, why = diagnosis.propose(points, cfg.sweep.space, key, mode, cfg)
    return SweepView(folder, cfg, state["parent_run_id"], base, views, space, why, rounds)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def print_view(view: SweepView, out: Callable[[str], None] = print) -> None:
    """What ``diagnose`` prints: the label counts, the trial table, the fixes to try, the sweet
    spot and the next search space with its reasons."""
    key, mode = config_mod.rank_metric(view.cfg)
    counts = {lab: sum(t.label == lab for t in view.trials) for lab in diagnosis.LABELS}
    out(
        f"[diagnose] {view.folder.name}: {len(view.trials)} trials: "
        + ", ".join(f"{n} {lab}" for lab, n in counts.items() if n)
        + f"; {diagnosis.describe(view.baseline)}"
    )
    for line in progress.rounds_table(view.rounds, key, mode):
        out(line)
    keys = list(view.cfg.sweep.space)
    header = ["trial", *keys, key, "train_loss", "fit"]
    rows = []
    ranked = sorted(
        view.trials,
        key=lambda t: t.best.get(key, math.inf if mode == "min" else -math.inf),
        reverse=mode == "max",
    )
    for t in ranked:
        rows.append(
            [
                t.trial_id,
                *(_fmt(t.values.get(k, "")) for k in keys),
                _fmt(t.best.get(key, math.nan)),
                _fmt(t.best.get("train_loss", math.nan)),
                t.label or "-",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for cells in [header, ["-" * w for w in widths], *rows]:
        out("  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)))
    out("")
    for t in ranked:
        if t.label and t.label != "good_fit":
            out(f"{t.trial_id} {t.label}: {t.reasons}")
            for f in t.fixes[:4]:
                out(f"    try: {f}")
    best = ranked[0]
    out(
        f"\nsweet spot: trial {best.trial_id} ("
        + ", ".join(f"{k}={_fmt(v)}" for k, v in best.values.items())
        + f"), {key}={best.best.get(key, math.nan):.4f}, {best.label or 'unlabelled'}"
    )
    out(f"\nnext search space (orchestrator sweep CONFIG --refine-from {view.cfg.experiment}):")
    out(
        "  "
        + yaml.safe_dump({"sweep": {"space": view.space}}, sort_keys=False, default_flow_style=None)
        .replace("\n", "\n  ")
        .rstrip()
    )
    out("because:")
    for w in view.why:
        out(f"  - {w}")


def write(view: SweepView) -> str:
    """``next_space.yaml`` and ``fit_map.png`` in the sweep's folder; the first's location."""
    view.folder.write_atomic(
        NEXT_SPACE,
        yaml.safe_dump({"sweep": {"space": view.space}, "because": view.why}, sort_keys=False),
    )
    png = fit_map(view, view.trials)
    if png is not None:
        view.folder.write_atomic("fit_map.png", png)
    return f"{view.folder}/{NEXT_SPACE}"


def fit_map(view: SweepView, trials: list[TrialView]) -> bytes | None:
    """The fit chart of these trials over the searched regularizers; None when the sweep
    searched none of them."""
    space = view.cfg.sweep.space
    return plots.sweep_fit_map(space, list(space), [(t.values, t.best, t.label) for t in trials])
