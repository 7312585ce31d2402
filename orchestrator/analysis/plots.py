"""The pictures logged to MLflow: a trial's learning curves, and the sweep's view of the
searched space (validation metric over weight decay x dropout, parallel coordinates).

Pure functions from plain rows to PNG bytes (matplotlib's Agg backend, no display), so they
are tested without Ray or MLflow.
"""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

from orchestrator.core import diagnosis

matplotlib.use("Agg")  # no display on cluster nodes; set before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CMAP = "viridis_r"  # for a loss: bright = low = good (and drawn on top)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def by_epoch(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """One row per epoch, the latest kept (a PBT move or a retry may report an epoch again)."""
    rows = {int(r["epoch"]): r for r in history if "epoch" in r}
    return [rows[e] for e in sorted(rows)]


def learning_curves(history: list[dict[str, float]], title: str) -> bytes:
    """Train vs validation loss and accuracy per epoch: the bias/variance picture of a trial
    (both high: underfit; validation rising above its minimum or far above training:
    overfit; both at once: both)."""
    rows = by_epoch(history)
    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, kind in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            ys = [r.get(f"{split}_{kind}", math.nan) for r in rows]
            ax.plot(
                epochs,
                ys,
                style,
                marker="o",
                markersize=3,
                label=f"{'training' if split == 'train' else 'validation'} {kind}",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(kind)
        ax.grid(alpha=0.3)
        ax.legend()
    if rows and "val_loss" in rows[0]:
        best = min(rows, key=lambda r: r.get("val_loss", math.inf))
        axes[0].axvline(best["epoch"], color="grey", lw=0.8, ls=":")
        axes[0].annotate(
            "best val",
            (best["epoch"], best["val_loss"]),
            fontsize=8,
            textcoords="offset points",
            xytext=(4, 6),
        )
    fig.suptitle(title)
    return _png(fig)


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _axis(values: list[Any], log: bool) -> tuple[list[float], list[str] | None]:
    """Positions on an axis: numbers (log10 for log-scaled ranges) or category indices."""
    if _numeric(values):
        pos = [math.log10(v) if log and v > 0 else float(v) for v in values]
        return pos, None
    labels = list(dict.fromkeys(str(v) for v in values))
    return [float(labels.index(str(v))) for v in values], labels


MAP_AXES = 2  # the regularization map puts one searched key on each axis


def regularization_map(
    points: list[dict[str, Any]],
    x: str,
    y: str,
    metric: str,
    log_x: bool = False,
    log_y: bool = False,
    champion: int | None = None,
) -> bytes:
    """Each trial at its (x, y) values, coloured by its best ``metric``: where along the
    regularization axes the sweet spot lies."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    xs, xl = _axis([p[x] for p in points], log_x)
    ys, yl = _axis([p[y] for p in points], log_y)
    cs = [p[metric] for p in points]
    sc = ax.scatter(
        xs,
        ys,
        c=cs,
        cmap=CMAP if "loss" in metric else "viridis",
        s=60,
        edgecolors="black",
        linewidths=0.4,
    )
    if champion is not None:
        ax.scatter(
            [xs[champion]],
            [ys[champion]],
            marker="*",
            s=260,
            facecolors="none",
            edgecolors="red",
            linewidths=1.5,
            label="champion",
        )
        ax.legend(loc="best")
    fig.colorbar(sc, ax=ax, label=f"best {metric}")
    for axis, labels, name, log in ((ax.xaxis, xl, x, log_x), (ax.yaxis, yl, y, log_y)):
        if labels:
            axis.set_ticks(range(len(labels)), labels)
        axis.set_label_text(f"log10 {name}" if log and not labels else name)
    ax.grid(alpha=0.3)
    ax.set_title(f"best {metric} per trial")
    return _png(fig)


def parallel_coordinates(
    points: list[dict[str, Any]], keys: list[str], metric: str, logs: set[str] | None = None
) -> bytes:
    """One line per trial across every searched key (each axis scaled to its own range) and
    the metric, coloured by the metric: which combinations the good trials share."""
    logs = logs or set()
    axes_keys = [*keys, metric]
    columns, ticks = [], []
    for k in axes_keys:
        pos, labels = _axis([p[k] for p in points], k in logs)
        finite = [v for v in pos if math.isfinite(v)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        span = hi - lo or 1.0
        columns.append([(v - lo) / span if math.isfinite(v) else 1.0 for v in pos])
        ticks.append(labels if labels else [f"{lo:.3g}", f"{hi:.3g}"])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(axes_keys)), 4.8))
    values = [p[metric] for p in points]
    finite = [v for v in values if math.isfinite(v)] or [0.0]
    norm = matplotlib.colors.Normalize(min(finite), max(finite))
    cmap = matplotlib.colormaps[CMAP if "loss" in metric else "viridis"]
    order = sorted(
        range(len(points)), key=lambda i: -values[i] if "loss" in metric else values[i]
    )  # the best drawn last, on top
    for i in order:
        color = cmap(norm(values[i])) if math.isfinite(values[i]) else "lightgrey"
        ax.plot(range(len(axes_keys)), [c[i] for c in columns], color=color, alpha=0.8, lw=1.4)
    ax.set_xticks(
        range(len(axes_keys)), [f"log10 {k}" if k in logs else k for k in axes_keys], rotation=20
    )
    for j, t in enumerate(ticks):
        ax.annotate(t[0], (j, 0), textcoords="offset points", xytext=(3, -12), fontsize=7)
        ax.annotate(t[-1], (j, 1), textcoords="offset points", xytext=(3, 4), fontsize=7)
        ax.axvline(j, color="black", lw=0.6)
    ax.set_yticks([])
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"best {metric}")
    ax.set_title(f"{len(points)} trials: searched values and best {metric}")
    return _png(fig)


LABEL_COLORS = {
    "underfit": "tab:blue",
    "good_fit": "tab:green",
    "overfit": "tab:red",
    "both": "tab:purple",
    "diverged": "black",
    "undetermined": "darkgrey",
    None: "lightgrey",
}


def sweep_fit_map(
    space: dict[str, dict[str, Any]],
    keys: list[str],
    trials: list[tuple[dict[str, Any], dict[str, float], str | None]],
) -> bytes | None:
    """``fit_map`` of a sweep's trials, each given as (searched values, best epoch, label),
    over the regularizers among ``keys`` searched as a range; None when there is none, or no
    trial with both losses."""
    logs = {k for k, spec in space.items() if spec["type"] == "loguniform"}
    regs = [
        k
        for k in diagnosis.REGULARIZERS
        if k in keys and space[k]["type"] in ("uniform", "loguniform")
    ]
    fits = [
        {**values, "train_loss": best["train_loss"], "val_loss": best["val_loss"], "label": label}
        for values, best, label in trials
        if "train_loss" in best and "val_loss" in best
    ]
    return fit_map(fits, regs, logs) if regs and fits else None


def fit_map(
    points: list[dict[str, Any]],
    keys: list[str],
    logs: set[str] | None = None,
) -> bytes:
    """The underfit / sweet spot / overfit chart, from the sweep's own trials: training
    (circles) and validation (crosses) loss at each trial's best epoch against each
    regularization key, coloured by the trial's label."""
    logs = logs or set()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for p in points:
            color = LABEL_COLORS.get(p.get("label"), "lightgrey")
            ax.scatter([p[key]], [p["train_loss"]], marker="o", color=color, s=36)
            ax.scatter([p[key]], [p["val_loss"]], marker="x", color=color, s=44)
            ax.plot(
                [p[key], p[key]], [p["train_loss"], p["val_loss"]], color=color, lw=0.6, alpha=0.5
            )
        if key in logs:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("loss at the best epoch")
        ax.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], color=c, marker="s", ls="", label=str(lab))
        for lab, c in LABEL_COLORS.items()
        if lab is not None
    ]
    handles += [
        plt.Line2D([], [], color="black", marker="o", ls="", label="training loss"),
        plt.Line2D([], [], color="black", marker="x", ls="", label="validation loss"),
    ]
    axes[0][-1].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle(
        "bias/variance: high bias (underfit) <- sweet spot -> high variance (overfit);"
        " both: the two at once"
    )
    return _png(fig)


def confusion_matrix(cm: list[list[float]], classes: list, title: str) -> bytes:
    """Counts of (true class, predicted class), the diagonal being the right answers."""
    fig, ax = plt.subplots(figsize=(0.55 * len(classes) + 2.5, 0.55 * len(classes) + 2))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max((v for row in cm for v in row), default=0)
    for i, row in enumerate(cm):
        for j, v in enumerate(row):
            if v:
                ax.text(
                    j,
                    i,
                    f"{int(v)}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > top / 2 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    return _png(fig)


def data_curve(result: Any, points: list[tuple[int, int, float]], title: str) -> bytes:
    """Validation loss against training rows (``core.curve``): each seed's run, the mean at
    each size, the fitted power law carried on to the largest prediction, and each
    prediction with its interval. A curve with no reliable extrapolation shows its points
    and says so, with no line drawn past them."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter([p[0] for p in points], [p[2] for p in points], s=14, alpha=0.5, label="each seed")
    ax.plot(result.sizes, result.means, "o", color="C0", label="mean over seeds")
    if result.fit is not None and result.predictions:
        top = max(p.rows for p in result.predictions)
        xs = [result.sizes[0] * (top / result.sizes[0]) ** (i / 100) for i in range(101)]
        ax.plot(xs, [result.fit.predict(x) for x in xs], "-", color="C1", label="fitted a·n^-b + c")
        for p in result.predictions:
            ax.errorbar(
                [p.rows],
                [p.loss],
                # the fit may sit just outside its bootstrap interval: no negative bar
                yerr=[[max(0.0, p.loss - p.low)], [max(0.0, p.high - p.loss)]],
                fmt="s",
                color="C3",
                capsize=4,
            )
            ax.annotate(f"{p.factor:g}x: {p.loss:.3g}", (p.rows, p.high), ha="center", va="bottom")
        ax.axhline(result.fit.c, ls=":", color="grey", label=f"floor c = {result.fit.c:.3g}")
    else:
        ax.text(
            0.5,
            0.95,
            "no reliable extrapolation",
            transform=ax.transAxes,
            ha="center",
            va="top",
            color="C3",
        )
    ax.set_xscale("log")
    ax.set_xlabel("training rows")
    ax.set_ylabel("best validation loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def rounds(rows: list[dict[str, Any]], metric: str) -> bytes:
    """An autopilot's rounds (``progress.round_rows``): every trial's best ``metric`` in
    each round, the round's best and the best so far, each point labelled with what
    steered the next round."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs = [r["round"] for r in rows]
    for r in rows:
        scores = [s for s in r.get("scores", []) if math.isfinite(s)]
        ax.scatter([r["round"]] * len(scores), scores, s=12, alpha=0.4, color="grey")
    best = [r["best"] if r["best"] is not None else math.nan for r in rows]
    so_far = [r["so_far"] if r["so_far"] is not None else math.nan for r in rows]
    ax.plot(xs, best, "o-", color="C0", label="round's best")
    ax.plot(xs, so_far, "s--", color="C1", label="best so far")
    for r, y in zip(rows, best, strict=True):
        if r["label"] and math.isfinite(y):
            color = LABEL_COLORS.get(r["label"], "black")
            ax.annotate(
                r["label"],
                (r["round"], y),
                (0, 8),
                "data",
                "offset points",
                ha="center",
                fontsize=8,
                color=color,
            )
    ax.set_xticks(xs)
    ax.set_xlabel("round")
    ax.set_ylabel(f"best {metric}")
    ax.set_title("autopilot: the search round by round")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)
