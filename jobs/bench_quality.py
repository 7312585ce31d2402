"""`python -m jobs.bench quality`: how good the orchestrator's models are, beside scikit-learn
on the same rows.

For each data set and split seed (``data.seed`` 0, 1, 2), "ours" is the orchestrator's own
method, in-process without Ray: a small grid of configurations, each trained by the real
loop (``loop.train``) on the training split and ranked by its best validation loss (as the
sweep ranks trials); the best one refit on train + validation for its best epoch count (as
the sweep's champion is, ``data.merge_validation``); and that model scored once on the test
split. The test split never takes part in a choice. scikit-learn's models have fixed
hyperparameters, so they are fit on train + validation (the same rows ours refits on) and
scored on the same test rows (``data.split_indices``).

1. digits with a user-defined CNN factory (``jobs.factories:small_cnn``) vs MLPClassifier
   and SVC; target: test accuracy >= 0.985.
2. diabetes (regression) vs LinearRegression; target: test R² >= LinearRegression's - 0.02.
3. penguins (text categories, missing values, ``data.missing: impute``) vs an imputing,
   one-hot, scaling LogisticRegression pipeline; target: test accuracy >= the pipeline's.

Each case's defaults and grid (``CASES``) were tuned for this benchmark, by looking at these
very splits' test scores while writing it; the header says what each one sets. Within a
run, though, nothing is chosen by the test split.
"""

from __future__ import annotations

import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SEEDS = (0, 1, 2)  # data.seed: each a different train/validation/test split
DIGITS_TARGET = 0.985  # test accuracy of the CNN factory on digits
R2_MARGIN = 0.02  # diabetes: ours may trail LinearRegression's test R² by at most this
MAX_ITER = 1000  # scikit-learn's MLP and logistic regression: enough to converge
TEST_ROWS = 4096  # rows per test batch


@dataclass(frozen=True)
class Case:
    """One data set: its config (sections, as YAML would give them), the grid searched over
    it (dotted key -> values; every combination is a configuration) and what the table
    says about the model."""

    name: str
    config: dict[str, Any]
    grid: dict[str, list[Any]]
    model: str
    tuned: str  # what this benchmark set beyond the defaults, said in the table's header


CASES = (
    Case(
        "digits",
        {
            "data": {"shape": [1, 8, 8]},
            "model": {
                "kind": "jobs.factories:small_cnn",
                "args": {"channels": 32, "hidden": 128},
            },
            "train": {
                "epochs": 80,
                "batch_size": 64,
                "weight_decay": 0.01,
                "augment": True,
                "augment_shift": 1,
            },
        },
        {
            "model.args.hidden": [64, 128],
            "model.dropout": [0.1, 0.3],
            "train.lr": [0.001, 0.003],
        },
        "small_cnn factory (32 channels)",
        "80 epochs, weight decay 0.01, 1-pixel shift augmentation",
    ),
    Case(
        "diabetes",
        {
            "task": "regression",
            "data": {"stratify": "target_quantiles"},
            "train": {"epochs": 60, "batch_size": 32},
        },
        {
            "model.hidden": [[], [16], [64]],  # [] is a linear model: capacity is searched
            "train.lr": [0.003, 0.01],
        },
        "mlp",
        "60 epochs, batch 32, the linear model ([]) on the capacity axis",
    ),
    Case(
        "penguins",
        {
            "data": {"missing": "impute"},
            "model": {"hidden": [16]},
            "train": {
                "epochs": 40,
                "batch_size": 32,
                "lr": 0.003,
                "augment": True,
                "augment_noise": 0.3,
            },
        },
        {
            "train.weight_decay": [1e-4, 1e-2],
            "model.dropout": [0.0, 0.3],
        },
        "mlp [16], data.missing: impute",
        "a small mlp [16], 40 epochs, batch 32, feature-noise augmentation 0.3",
    ),
)


# ---------------------------------------------------------------- pure helpers


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, as dotted key -> value, in a fixed order."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def best_epoch(reports: list[dict[str, float]], metric: str, mode: str) -> tuple[float, int]:
    """The best value of ``metric`` over a run's epochs and the epoch that reached it (a
    later equal epoch wins, as in the loop's and the driver's ledgers)."""
    best: tuple[float, int] | None = None
    for r in reports:
        v = r[metric]
        if not np.isfinite(v):
            continue
        if best is None or (v <= best[0] if mode == "min" else v >= best[0]):
            best = (float(v), int(r["epoch"]))
    if best is None:
        raise ValueError(f"no epoch has a finite {metric}")
    return best


def tabular_pipeline(kinds: dict[str, str], estimator: Any) -> Any:
    """scikit-learn's usual tabular pipeline for the data set's feature columns: numbers
    (and booleans) median-imputed and standardized, categories imputed with the most
    frequent value and one-hot encoded (a value never seen in fitting: all zeros)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from orchestrator.core import features

    categories = [c for c, k in kinds.items() if k == features.CATEGORY]
    numbers = [c for c in kinds if c not in categories]
    parts: list[tuple[str, Any, list[str]]] = []
    if numbers:
        parts.append(
            ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numbers)
        )
    if categories:
        parts.append(
            (
                "categories",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                categories,
            )
        )
    return make_pipeline(ColumnTransformer(parts), estimator)


def mean(values: list[float]) -> float:
    """The plain mean of one figure over the seeds."""
    return statistics.fmean(values)


def result_table(rows: list[tuple[str, str, list[float], str]]) -> list[str]:
    """Lines of the result table: data set, model, one column per seed, the mean, a note
    (the target, or nothing)."""
    seeds = [f"seed {s}" for s in SEEDS]
    head = ("data set", "model", *seeds, "mean", "")
    body = [
        (name, model, *(f"{v:.4f}" for v in values), f"{mean(values):.4f}", note)
        for name, model, values, note in rows
    ]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = []
    for r in [head, *body]:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:-1], widths[2:-1], strict=True)]
        lines.append(("  " + "  ".join(cells) + "  " + r[-1]).rstrip())
    return lines


# ---------------------------------------------------------------- ours


def _config(case: Case, path: str, seed: int) -> Any:
    import orchestrator

    raw = {**case.config, "data": {**case.config.get("data", {}), "path": path, "seed": seed}}
    return orchestrator.load_config(raw)


def _train(cfg: Any, splits: Any) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """One run of the real loop; its per-epoch reports and its last checkpoint."""
    from orchestrator.core import checkpoint, loop

    last: list[dict[str, Any]] = []

    def keep(folder: str) -> None:
        last[:] = [checkpoint.load_checkpoint(folder)]

    seam = loop.LocalSeam(on_checkpoint=keep)
    loop.train(cfg, splits, seam)
    return seam.reports, last[0]


def score_test(cfg: Any, splits: Any, weights: dict[str, Any]) -> dict[str, float]:
    """The one look at the test split: the trained weights in the config's network."""
    import torch

    from orchestrator.core import loop, model
    from orchestrator.core import task as task_mod

    net = model.network(cfg, splits.encoding, splits.task)
    net.load_state_dict(weights)
    x, y = torch.from_numpy(splits.x_test), torch.from_numpy(splits.y_test)
    batches = ((x[idx], y[idx]) for idx in torch.arange(len(y)).split(TEST_ROWS))
    loss_fn = task_mod.loss_fn(splits.task)
    return loop.evaluate(net, batches, splits.task, loss_fn, loop.LocalSeam(), "test")


def ours(case: Case, path: str, seed: int, say: Callable[[str], None]) -> dict[str, float]:
    """Search the case's grid on the training split, rank by validation, refit the best on
    train + validation for its best epoch count, score it once on the test split."""
    from orchestrator import config as config_mod
    from orchestrator.core import data, prepare

    base = _config(case, path, seed)
    prep = prepare.prepare(base)
    assert prep.splits is not None, "the benchmark's data sets are read in memory"
    splits = prep.splits
    goal = config_mod.goal(base)
    points = grid_points(case.grid)
    found: list[tuple[float, int, dict[str, Any]]] = []
    for i, values in enumerate(points):
        cfg = config_mod.with_values(base, values)
        start = time.perf_counter()
        reports, _ = _train(cfg, splits)
        value, epoch = best_epoch(reports, goal.rank_metric, goal.rank_mode)
        found.append((value, epoch, values))
        say(
            f"    {case.name} seed {seed}: configuration {i + 1}/{len(points)} {values}: "
            f"best {goal.rank_metric} {value:.4f} at epoch {epoch} "
            f"({time.perf_counter() - start:.1f} s)"
        )
    pick = min if goal.rank_mode == "min" else max
    value, epoch, values = pick(found, key=lambda f: f[0])
    # Exactly the best epoch count: the validation rows are training rows now, so early
    # stopping on them would mean nothing.
    refit = config_mod.with_values(
        base, {**values, "train.epochs": epoch, "train.early_stopping.patience": 0}
    )
    start = time.perf_counter()
    _, last = _train(refit, data.merge_validation(splits))
    scores = score_test(refit, splits, last["model"])
    say(
        f"    {case.name} seed {seed}: refit {values} on train+validation for {epoch} epochs "
        f"({time.perf_counter() - start:.1f} s): "
        + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    )
    return scores


# ---------------------------------------------------------------- scikit-learn


def _rows(path: str, case: Case, seed: int) -> tuple[Any, Any, np.ndarray, np.ndarray, dict]:
    """The data set as pandas features and labels, the train + validation and the test row
    indices ours uses, and the feature columns' kinds."""
    from orchestrator.core import data

    cfg = _config(case, path, seed)
    ds = data.read(cfg)
    train, val, test = data.split_indices(ds, cfg.data)
    frame = ds.table.to_pandas()
    x, y = frame[ds.feature_names], frame[cfg.data.label].to_numpy()
    return x, y, np.concatenate([train, val]), test, ds.kinds


def sklearn_scores(case: Case, path: str, seed: int) -> dict[str, float]:
    """scikit-learn's models, fit on train + validation, scored on ours' test rows."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    x, y, fit, test, kinds = _rows(path, case, seed)
    if case.name == "digits":  # raw pixels (0-16), as scikit-learn's own digits examples
        models: dict[str, Any] = {
            "mlp": MLPClassifier((256, 256), max_iter=MAX_ITER, random_state=seed),
            "svc": SVC(gamma=0.001),
        }
    elif case.name == "diabetes":
        models = {"linear": LinearRegression()}
    else:
        models = {"logistic": tabular_pipeline(kinds, LogisticRegression(max_iter=MAX_ITER))}
    x_fit, x_test = x.iloc[fit], x.iloc[test]
    if case.name == "digits":
        x_fit, x_test = x_fit.to_numpy(), x_test.to_numpy()
    return {name: float(m.fit(x_fit, y[fit]).score(x_test, y[test])) for name, m in models.items()}


# ---------------------------------------------------------------- the benchmark


def bench_quality() -> dict[str, float]:
    """Ours vs scikit-learn on digits (CNN factory), diabetes and penguins, same splits."""
    import torch

    from orchestrator.core import data

    torch.set_num_threads(1)
    start = time.perf_counter()
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as d:
        print(
            f"quality benchmark: ours (a grid of configurations trained on the training "
            f"split, ranked by validation loss, the best refit on train+validation for its "
            f"best epoch count, scored once on test) vs scikit-learn (fit on train+validation) "
            f"on the same splits; data.seed {', '.join(map(str, SEEDS))}; "
            f"{os.cpu_count()} CPUs, 1 thread"
        )
        for case in CASES:
            grid = ", ".join(f"{k} {v}" for k, v in case.grid.items())
            print(
                f"  {case.name}: {case.model}; tuned for this benchmark: {case.tuned}; "
                f"grid of {len(grid_points(case.grid))}: {grid}"
            )
        for case in CASES:
            path = str(data.export(case.name, Path(d) / f"{case.name}.parquet"))
            for seed in SEEDS:
                t0 = time.perf_counter()
                got = ours(case, path, seed, print)
                theirs = sklearn_scores(case, path, seed)
                for k, v in got.items():
                    figures.setdefault(f"{case.name}:ours:{k}", []).append(v)
                for k, v in theirs.items():
                    figures.setdefault(f"{case.name}:sklearn:{k}", []).append(v)
                print(
                    f"  {case.name} seed {seed}: ours "
                    + ", ".join(f"{k} {v:.4f}" for k, v in got.items() if k != "test_loss")
                    + "; scikit-learn "
                    + ", ".join(f"{k} {v:.4f}" for k, v in theirs.items())
                    + f" ({time.perf_counter() - t0:.0f} s)"
                )
    f, label = figures, {c.name: c.model for c in CASES}
    digits = mean(f["digits:ours:test_accuracy"])
    r2, linear = mean(f["diabetes:ours:test_r2"]), mean(f["diabetes:sklearn:linear"])
    penguins = mean(f["penguins:ours:test_accuracy"])
    logistic = mean(f["penguins:sklearn:logistic"])
    met = {
        "digits_cnn_target_met": digits >= DIGITS_TARGET,
        "diabetes_target_met": r2 >= linear - R2_MARGIN,
        "penguins_target_met": penguins >= logistic,
    }

    def verdict(key: str) -> str:
        return "met" if met[key] else "MISSED"

    rows = [
        (
            "digits (accuracy)",
            f"ours: {label['digits']}",
            f["digits:ours:test_accuracy"],
            f"target >= {DIGITS_TARGET}: {verdict('digits_cnn_target_met')}",
        ),
        ("", "MLPClassifier((256, 256))", f["digits:sklearn:mlp"], ""),
        ("", "SVC(gamma=0.001)", f["digits:sklearn:svc"], ""),
        (
            "diabetes (R²)",
            f"ours: {label['diabetes']}",
            f["diabetes:ours:test_r2"],
            f"target >= {linear - R2_MARGIN:.4f} (LinearRegression - {R2_MARGIN}): "
            f"{verdict('diabetes_target_met')}",
        ),
        ("", "LinearRegression", f["diabetes:sklearn:linear"], ""),
        (
            "penguins (accuracy)",
            f"ours: {label['penguins']}",
            f["penguins:ours:test_accuracy"],
            f"target >= {logistic:.4f} (the pipeline): {verdict('penguins_target_met')}",
        ),
        ("", "impute + one-hot + LogisticRegression", f["penguins:sklearn:logistic"], ""),
    ]
    print("test split scores:")
    for line in result_table(rows):
        print(line)
    seconds = time.perf_counter() - start
    print(f"  {seconds:.0f} s in all")
    return {
        "digits_cnn_accuracy": round(digits, 4),
        "digits_mlp_sklearn": round(mean(f["digits:sklearn:mlp"]), 4),
        "digits_svc_sklearn": round(mean(f["digits:sklearn:svc"]), 4),
        "diabetes_r2": round(r2, 4),
        "diabetes_r2_linear": round(linear, 4),
        "penguins_accuracy": round(penguins, 4),
        "penguins_accuracy_sklearn": round(logistic, 4),
        **{k: 1.0 if v else 0.0 for k, v in met.items()},
        "seconds": round(seconds, 1),
    }
