"""The diagnosis corpus: learning curves the project makes itself, each built to land on one
side of the bias/variance chart, for tuning and scoring ``orchestrator.core.diagnosis``.

    python -m jobs.curves generate   # train every recipe (core loop, one process, no Ray)
    python -m jobs.curves plot       # tests/curves/corpus.png: every curve, for a person
    python -m jobs.curves tune       # grid-search the thresholds on the two tuning sets
    python -m jobs.curves score      # confusion matrix of built labels vs the diagnosis

Each recipe names a data set (``orchestrator data export`` writes them), a configuration
built to underfit (tiny capacity, heavy L1/L2/dropout, too small a learning rate), overfit
(wide, unregularized, few training rows, many epochs), both (label noise the model memorizes
while it still cannot fit the signal) or sit at the sweet spot, and how the run ended:
completed, early-stopped (``train.early_stopping``) or pruned (the first N epochs of a full
run; the cosine schedule follows the planned epochs, so that prefix is exactly what a run an
ASHA scheduler stopped at epoch N reports). The label a recipe was built for is checked by a
person reading the plotted curve (``review`` in the corpus: ``agree`` or why it was dropped);
a curve nobody can call is dropped, not relabelled.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "curves" / "corpus.json"
PNG = ROOT / "tests" / "curves" / "corpus.png"
TUNE_SETS = ("digits", "wine")  # thresholds are tuned on these; the rest are held out
COLUMNS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")

# Validation fractions: sets under 300 rows get 0.35 so a validation curve is not mostly noise
VAL = {"iris": 0.35, "wine": 0.35, "breast_cancer": 0.3, "digits": 0.2, "noisy": 0.25}

WIDE = {"model.hidden": [512, 512], "model.dropout": 0.0, "train.weight_decay": 0.0}
SWEET = {"model.hidden": [64], "model.dropout": 0.2, "train.weight_decay": 1e-3}


def _r(
    name: str, label: str, what: str, over: dict[str, Any], cut: int | None = None, **more: Any
) -> dict[str, Any]:
    return {"set": name, "built": label, "what": what, "over": over, "cut": cut, **more}


# (set, label built for, what it is, overrides, pruned at epoch)
RECIPES: list[dict[str, Any]] = [
    # ---------------------------------------------------------------- underfit: high bias
    *[
        _r(
            s,
            "underfit",
            "a one-unit bottleneck, dropout 0.5",
            {"model.hidden": [1], "model.dropout": 0.5, "train.epochs": 40},
        )
        for s in ("digits", "wine", "noisy", "iris")
    ],
    *[
        _r(
            s,
            "underfit",
            "heavy L1 (0.03) zeroes the weights",
            {"model.hidden": [64], "train.l1": 0.03, "train.epochs": 40},
        )
        for s in ("digits", "wine", "breast_cancer", "iris", "noisy")
    ],
    *[
        _r(
            s,
            "underfit",
            "learning rate 3e-5: too few steps to learn",
            {"model.hidden": [16], "train.lr": 3e-5, "train.epochs": 30},
        )
        for s in ("digits", "wine", "breast_cancer", "iris")
    ],
    *[
        _r(
            s,
            "underfit",
            "heavy L2 (weight decay 30 at lr 3e-3)",
            {
                "model.hidden": [64],
                "train.weight_decay": 30.0,
                "train.lr": 3e-3,
                "train.epochs": 40,
            },
        )
        for s in ("digits", "wine", "breast_cancer")
    ],
    *[
        _r(
            s,
            "underfit",
            "heavy L1, pruned at epoch 15 on its plateau",
            {"model.hidden": [64], "train.l1": 0.03, "train.epochs": 40},
            cut=15,
        )
        for s in ("digits", "breast_cancer")
    ],
    *[
        _r(
            s,
            "underfit",
            "a one-unit bottleneck, early-stopped (patience 5)",
            {
                "model.hidden": [1],
                "model.dropout": 0.5,
                "train.epochs": 100,
                "train.early_stopping.patience": 5,
            },
        )
        for s in ("wine", "noisy")
    ],
    # ---------------------------------------------------------------- overfit: high variance
    *[
        _r(
            s,
            "overfit",
            f"wide (2x512), unregularized, {rows} training rows, 150 epochs",
            {**WIDE, "data.max_train_rows": rows, "train.epochs": 150, "train.lr": 3e-3},
        )
        for s, rows in (
            ("digits", 150),
            ("wine", 30),
            ("noisy", 300),
            ("breast_cancer", 60),
            ("iris", 30),
        )
    ],
    *[
        _r(
            s,
            "overfit",
            f"wide, unregularized, {rows} rows, early-stopped (patience 10)",
            {
                **WIDE,
                "data.max_train_rows": rows,
                "train.epochs": 150,
                "train.lr": 3e-3,
                "train.early_stopping.patience": 10,
            },
        )
        for s, rows in (("digits", 150), ("wine", 30), ("noisy", 300), ("breast_cancer", 60))
    ],
    *[
        _r(
            s,
            "overfit",
            f"wide, unregularized, {rows} rows, pruned at epoch 40",
            {**WIDE, "data.max_train_rows": rows, "train.epochs": 150, "train.lr": 3e-3},
            cut=40,
        )
        for s, rows in (("digits", 150), ("noisy", 300), ("wine", 30))
    ],
    _r(
        "noisy",
        "overfit",
        "2x32 hidden, unregularized, 600 rows: memorizes the flipped labels",
        {
            **WIDE,
            "model.hidden": [32, 32],
            "data.max_train_rows": 600,
            "train.epochs": 120,
            "train.lr": 3e-3,
        },
    ),
    _r(
        "noisy",
        "overfit",
        "256 hidden, unregularized, 800 rows, lr 1e-3",
        {**WIDE, "model.hidden": [256], "data.max_train_rows": 800, "train.epochs": 150},
    ),
    _r(
        "digits",
        "overfit",
        "wide, unregularized, 300 rows, 120 epochs, lr 1e-3",
        {**WIDE, "data.max_train_rows": 300, "train.epochs": 120},
    ),
    # ---------------------------------------------------------------- both
    *[
        _r(
            "noisy",
            "both",
            f"20% flipped labels, {h} hidden, {rows} rows, unregularized: "
            "fits some noise, still cannot fit the signal",
            {
                **WIDE,
                "model.hidden": h,
                "data.max_train_rows": rows,
                "train.epochs": ep,
                "train.lr": 3e-3,
            },
            cut=cut,
            **more,
        )
        for h, rows, ep, cut, more in (
            ([8], 300, 120, None, {}),
            ([8], 600, 120, None, {}),
            ([16], 600, 80, None, {}),
            ([4], 200, 150, None, {}),
            ([16], 300, 60, None, {}),
            ([12], 400, 100, None, {}),
            ([16], 300, 120, None, {}),
            ([12], 400, 100, 50, {}),
        )
    ],
    _r(
        "noisy",
        "both",
        "20% flipped labels, 16 hidden, 600 rows, early-stopped (patience 10)",
        {
            **WIDE,
            "model.hidden": [16],
            "data.max_train_rows": 600,
            "train.epochs": 120,
            "train.lr": 3e-3,
            "train.early_stopping.patience": 10,
        },
    ),
    *[
        _r(
            "digits",
            "both",
            f"a {h}-unit bottleneck after 512, {rows} rows, unregularized",
            {
                **WIDE,
                "model.hidden": [512, h],
                "data.max_train_rows": rows,
                "train.epochs": 120,
                "train.lr": 3e-3,
            },
        )
        for h, rows in ((2, 200), (2, 400), (2, 300), (2, 150), (1, 300), (2, 250))
    ],
    # ---------------------------------------------------------------- good_fit: the sweet spot
    *[
        _r(
            s,
            "good_fit",
            f"64 hidden, weight decay 1e-3, dropout 0.2, all rows, lr {lr:g}",
            {**SWEET, "train.epochs": e, "train.lr": lr},
        )
        for s, e, lr in (
            ("digits", 40, 1e-3),
            ("wine", 60, 1e-2),
            ("breast_cancer", 40, 1e-2),
            ("iris", 100, 1e-2),
            ("noisy", 30, 1e-3),
        )
    ],
    *[
        _r(
            s,
            "good_fit",
            "the sweet spot, early-stopped (patience 5)",
            {**SWEET, "train.epochs": 100, "train.lr": lr, "train.early_stopping.patience": 5},
        )
        for s, lr in (("digits", 1e-3), ("wine", 1e-2), ("breast_cancer", 1e-2), ("iris", 1e-2))
    ],
    *[
        _r(
            s,
            "good_fit",
            "the sweet spot, pruned at epoch 30 of 60",
            {**SWEET, "train.epochs": 60, "train.lr": lr},
            cut=30,
        )
        for s, lr in (("digits", 1e-3), ("breast_cancer", 1e-2), ("iris", 1e-2))
    ],
    # ---------------------------------------------------------------- never steer
    *[
        _r(
            s,
            "undetermined",
            f"pruned at epoch {cut} while still learning",
            {**SWEET, "train.epochs": 60},
            cut=cut,
        )
        for s, cut in (("digits", 3), ("wine", 3), ("breast_cancer", 3), ("digits", 6), ("iris", 8))
    ],
    _r(
        "iris",
        "undetermined",
        "heavy L1, pruned at epoch 6 while still learning",
        {"model.hidden": [64], "train.l1": 0.03, "train.epochs": 40},
        cut=6,
    ),
    *[
        _r(
            s,
            "diverged",
            "SGD at learning rate 30",
            {
                "train.optimizer": "sgd",
                "train.lr": 30.0,
                "model.dropout": 0.0,
                "train.weight_decay": 0.0,
                "train.epochs": 30,
            },
        )
        for s in ("digits", "noisy", "wine")
    ],
    _r(
        "noisy",
        "diverged",
        "AdamW at learning rate 3: validation loss blows up",
        {"train.lr": 3.0, "model.dropout": 0.0, "train.weight_decay": 0.0, "train.epochs": 20},
    ),
]

# What a person reading corpus.png said, where it was not "agree": these are dropped from
# scoring (kept in the corpus so the record shows them), never relabelled.
REVIEWS = {
    "breast_cancer-underfit-17": "drop: validation loss still falling steeply when pruned at "
    "epoch 15; nobody can say where it would have ended",
    "digits-overfit-34": "drop: training accuracy 1.0 but validation loss flat at 0.1 of the "
    "baseline and accuracy 0.95; mild overfit or the sweet spot",
    "noisy-good_fit-54": "drop: with 20% of the labels flipped the best model's losses sit at "
    "0.7 of the baseline, which reads exactly like high bias",
}


def _config(path: str, name: str, over: dict[str, Any]) -> Any:
    from orchestrator import config

    raw: dict[str, Any] = {
        "data": {"path": path, "val_fraction": VAL[name]},
        "train": {"batch_size": 32, "checkpoint_every": 1000},
    }
    for dotted, v in over.items():
        config.set_dotted(raw, dotted, v)
    return config.from_dict(raw)


def run(recipe: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Train one recipe in this process and return its corpus entry."""
    import torch

    from orchestrator.core import data, diagnosis, loop

    torch.set_num_threads(1)
    name = recipe["set"]
    path = folder / f"{name}.parquet"
    if not path.exists():
        data.export(name, path)
    cfg = _config(str(path), name, recipe["over"])
    splits = data.load_splits(cfg.data)
    seam = loop.LocalSeam()
    outcome = loop.train(cfg, splits, seam)
    rows = seam.reports
    if recipe["cut"] is not None:
        rows, outcome = rows[: recipe["cut"]], "pruned"
    columns = {
        k: [round(float(r[k]), 5) if math.isfinite(r[k]) else None for r in rows] for k in COLUMNS
    }
    base = diagnosis.baseline(np.bincount(splits.y_train, minlength=splits.num_classes))
    return {
        "set": name,
        "built": recipe["built"],
        "what": recipe["what"],
        "over": recipe["over"],
        "outcome": outcome,
        "planned_epochs": cfg.train.epochs,
        "classes": splits.num_classes,
        "train_rows": int(len(splits.y_train)),
        "baseline_loss": round(base.loss, 5),
        "baseline_accuracy": round(base.accuracy, 5),
        **columns,
    }


def generate(only: str | None = None) -> list[dict[str, Any]]:
    """Train every recipe (with ``only``, those whose id holds it; the rest stay as they were);
    a person's review stays with a curve only while the curve comes out the same."""
    old = {c["id"]: c for c in load()} if CORPUS.exists() else {}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, recipe in enumerate(RECIPES):
            cid = f"{recipe['set']}-{recipe['built']}-{i:02d}"
            if only and only not in cid:
                if cid in old:
                    out.append(old[cid])
                continue
            t0 = time.perf_counter()
            entry = {"id": cid, **run(recipe, Path(tmp))}
            # A person's verdict stays with a curve only while the curve is the one they read
            # (training here is deterministic); a new or changed curve waits for a reader,
            # who sets "agree" in corpus.json or a "drop: why" in REVIEWS. Only "agree" scores.
            prev = old.get(cid)
            same = prev is not None and all(prev.get(k) == entry.get(k) for k in COLUMNS)
            verdict = prev["review"] if prev is not None and same else "unreviewed"
            entry["review"] = REVIEWS.get(cid) or verdict
            out.append(entry)
            print(
                f"[{i + 1}/{len(RECIPES)}] {cid}: {entry['outcome']} after "
                f"{len(entry['val_loss'])} epochs ({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
    return out


def load(path: Path = CORPUS) -> list[dict[str, Any]]:
    """Every curve in the corpus file."""
    return list(json.loads(path.read_text())["curves"])


def history(curve: dict[str, Any]) -> list[dict[str, float]]:
    """A corpus curve as the per-epoch rows the loop reports (and ``diagnose`` reads)."""
    rows = []
    for i in range(len(curve["val_loss"])):
        row = {"epoch": float(i + 1)}
        for k in COLUMNS:
            v = curve[k][i]
            row[k] = math.nan if v is None else float(v)
        rows.append(row)
    if rows and curve["outcome"] in ("early_stopped", "diverged"):
        rows[-1][curve["outcome"]] = 1.0  # the loop flags the epoch a run ended on
    return rows


def save(curves: list[dict[str, Any]], path: Path = CORPUS) -> None:
    """Write the corpus, one curve per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # one curve per line: small, and a diff shows which curves changed
    lines = ",\n".join(json.dumps(c, separators=(",", ":")) for c in curves)
    path.write_text(
        '{"what": "learning curves built to underfit, overfit, both or fit well, '
        "made by `python -m jobs.curves generate` and reviewed by a person on "
        'corpus.png; columns are per epoch from epoch 1, null where not finite",\n'
        f'"curves": [\n{lines}\n]}}\n'
    )


def plot(curves: list[dict[str, Any]], out: Path = PNG) -> Path:
    """Every curve in one grid: losses over baseline, accuracies on the right axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 6
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.2, rows * 2.5), squeeze=False)
    for ax, c in zip(axes.flat, curves, strict=False):
        b = c["baseline_loss"]

        def col(key: str, scale: float = 1.0, c: dict[str, Any] = c) -> list[float]:
            return [math.nan if v is None else v / scale for v in c[key]]

        ep = list(range(1, len(c["val_loss"]) + 1))
        ax.plot(ep, col("train_loss", b), color="tab:blue", lw=1)
        ax.plot(ep, col("val_loss", b), color="tab:orange", lw=1)
        ax.axhline(1.0, color="grey", lw=0.5, ls=":")
        top = max([1.2] + [v for v in col("val_loss", b) if math.isfinite(v)])
        ax.set_ylim(0, min(top * 1.05, 10))
        ax2 = ax.twinx()
        ax2.plot(ep, col("train_accuracy"), color="tab:blue", lw=0.6, ls="--")
        ax2.plot(ep, col("val_accuracy"), color="tab:orange", lw=0.6, ls="--")
        ax2.set_ylim(0, 1.02)
        ax2.tick_params(labelsize=5)
        ax.tick_params(labelsize=5)
        ax.set_xlim(0, c["planned_epochs"])
        dropped = c["review"].startswith("drop")
        ax.set_title(
            f"{c['id']} [{c['outcome']}]{' DROPPED' if dropped else ''}\n{c['what'][:52]}",
            fontsize=5.5,
            color="red" if dropped else "black",
        )
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    fig.suptitle(
        "loss / baseline (solid; blue train, orange val); accuracy (dashed, right)", fontsize=9
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---------------------------------------------------------------- scoring the diagnosis


def scored(curves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The curves a person agreed with (dropped ones are kept in the file, not scored)."""
    return [c for c in curves if c["review"] == "agree"]


def judge(curve: dict[str, Any], th: Any = None, spike: tuple[str, int] | None = None) -> Any:
    """The diagnosis of one corpus curve; ``spike`` = (column, epoch index) multiplies that
    one value by 1.3 (the robustness check)."""
    from orchestrator.core import diagnosis

    rows = history(curve)
    if spike is not None:
        key, i = spike
        rows[i] = {**rows[i], key: rows[i][key] * 1.3}
    base = diagnosis.Baseline(curve["baseline_loss"], curve["baseline_accuracy"])
    return diagnosis.diagnose(rows, base, None, th, planned_epochs=curve["planned_epochs"])


def score(curves: list[dict[str, Any]], th: Any = None) -> dict[str, Any]:
    """Confusion matrix (built label -> diagnosed label), accuracy on the tuning sets and on
    the held-out ones, and every miss with its reasons."""
    confusion: dict[str, dict[str, int]] = {}
    right = {"tuning": [0, 0], "held_out": [0, 0]}
    misses = []
    for c in scored(curves):
        found = judge(c, th)
        got = found.label
        confusion.setdefault(c["built"], {}).setdefault(got, 0)
        confusion[c["built"]][got] += 1
        part = right["tuning" if c["set"] in TUNE_SETS else "held_out"]
        part[0] += got == c["built"]
        part[1] += 1
        if got != c["built"]:
            misses.append(
                {"id": c["id"], "built": c["built"], "got": got, "reasons": found.reasons}
            )
    return {
        "confusion": confusion,
        "misses": misses,
        **{f"{k}_accuracy": v[0] / v[1] for k, v in right.items() if v[1]},
        **{f"{k}_curves": v[1] for k, v in right.items()},
    }


def spike_flips(
    curves: list[dict[str, Any]], th: Any = None, seed: int = 0, key: str = "val_loss"
) -> float:
    """Fraction of labels that change when one random epoch's ``key`` rises by 30%."""
    rng = np.random.default_rng(seed)
    flips = total = 0
    for c in scored(curves):
        i = int(rng.integers(len(c["val_loss"])))
        if c[key][i] is None:
            continue
        total += 1
        flips += judge(c, th).label != judge(c, th, (key, i)).label
    return flips / max(total, 1)


GRID = {
    "underfit_loss_ratio": [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5],
    "gap_ratio": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4],
    "rise_ratio": [0.025, 0.05, 0.1, 0.15, 0.2, 0.3],
    "falling_ratio": [0.01, 0.02, 0.03, 0.05, 0.075, 0.1],
}


def tune(curves: list[dict[str, Any]]) -> tuple[dict[str, float], float, int]:
    """Grid search of the main thresholds on the tuning sets only: the best accuracy there,
    and of the settings that reach it, each threshold's median (the middle of the plateau,
    as far from both kinds of mistake as the grid allows). Returns (thresholds, accuracy,
    how many settings tie)."""
    import itertools

    from orchestrator.config import DiagnosisConfig

    tuning = [c for c in scored(curves) if c["set"] in TUNE_SETS]
    keys = list(GRID)
    results = []
    for combo in itertools.product(*(GRID[k] for k in keys)):
        settings: dict[str, Any] = dict(zip(keys, combo, strict=True))
        th = DiagnosisConfig(**settings)
        results.append((sum(judge(c, th).label == c["built"] for c in tuning), combo))
    top = max(r[0] for r in results)
    best = [combo for hits, combo in results if hits == top]
    chosen = {k: float(np.median([combo[i] for combo in best])) for i, k in enumerate(keys)}

    # snap to the grid (a median of an even count may fall between two values)
    def snap(key: str, v: float) -> float:
        return min(GRID[key], key=lambda g: (abs(g - v), g))

    chosen = {k: snap(k, v) for k, v in chosen.items()}
    return chosen, top / len(tuning), len(best)


def confusion_table(result: dict[str, Any]) -> str:
    """The confusion matrix as a Markdown table (rows: built as; columns: diagnosed)."""
    from orchestrator.core.diagnosis import LABELS

    cols = [lab for lab in LABELS if any(lab in row for row in result["confusion"].values())]
    lines = ["| built as \\ diagnosed | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for built in LABELS:
        row = result["confusion"].get(built)
        if row:
            lines.append(f"| {built} | " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.curves generate|plot|tune|score`."""
    p = argparse.ArgumentParser(prog="python -m jobs.curves")
    p.add_argument("action", choices=["generate", "plot", "score", "tune"])
    p.add_argument("--only", default=None, help="regenerate the ids containing this text")
    args = p.parse_args(argv)
    if args.action == "generate":
        curves = generate(args.only)
        save(curves)
        print(f"wrote {CORPUS} ({len(curves)} curves)")
        print(f"plotted {plot(curves)}")
    elif args.action == "plot":
        print(f"plotted {plot(load())}")
    elif args.action == "tune":
        t0 = time.perf_counter()
        chosen, accuracy, ties = tune(load())
        print(
            f"tuned on {', '.join(TUNE_SETS)}: {accuracy:.1%} right; {ties} settings tie; "
            f"the middle of them: {chosen} ({time.perf_counter() - t0:.0f} s)"
        )
    else:
        curves = load()
        result = score(curves)
        print(confusion_table(result))
        for m in result["misses"]:
            print(f"- {m['id']} (built {m['built']}, diagnosed {m['got']}): {m['reasons']}")
        flips = {
            k: max(spike_flips(curves, seed=s, key=k) for s in range(20))
            for k in ("val_loss", "train_loss")
        }
        figures = {
            "curves": len(scored(curves)),
            "dropped": len(curves) - len(scored(curves)),
            "tuning_sets": list(TUNE_SETS),
            "tuning_accuracy": round(result["tuning_accuracy"], 4),
            "held_out_accuracy": round(result["held_out_accuracy"], 4),
            "worst_spike_flips_val": round(flips["val_loss"], 4),
            "worst_spike_flips_train": round(flips["train_loss"], 4),
        }
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
