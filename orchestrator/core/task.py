"""The task: what the label is (classes, a two-class question, several yes/no labels, or
numbers to predict), decided once from the label column and the config's ``task``, and all
that follows from it: the targets the loop trains on, the head's width, the loss, the
metrics, the trivial predictor the diagnosis measures against, and what the server returns.

Plain NumPy/pyarrow/torch: no Ray, no MLflow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.nn import functional as F

from orchestrator.config import Config, ConfigError

MULTICLASS, BINARY, MULTILABEL, REGRESSION = "multiclass", "binary", "multilabel", "regression"
TASKS = (MULTICLASS, BINARY, MULTILABEL, REGRESSION)
CLASSIFICATION = (MULTICLASS, BINARY)
MAX_FLOAT_CLASSES = 20  # floats with at most this many distinct whole values are classes
MAX_CLASSES = 100_000  # a label with more distinct values is not a set of classes
MIN_ROWS_PER_CLASS = 3  # one each for train, validation and test after a stratified split
HUBER_DELTA = 1.0  # on the standardized target: quadratic within one standard deviation

METRICS = {
    MULTICLASS: ("accuracy", "f1"),
    BINARY: ("accuracy", "f1"),
    MULTILABEL: ("f1", "macro_f1", "subset_accuracy"),
    REGRESSION: ("rmse", "mae", "r2"),
}
"""What each task reports per split every epoch, besides the loss."""
MAXIMIZE = frozenset({"accuracy", "f1", "macro_f1", "subset_accuracy", "r2"})


@dataclass
class Task:
    """What the model predicts, decided once (``decide``) and saved with the model."""

    kind: str
    classes: list[Any] = field(default_factory=list)  # class values (index -> value)
    labels: int = 0  # multilabel: labels per row; regression: targets per row
    target_mean: list[float] = field(default_factory=list)  # regression, training split
    target_std: list[float] = field(default_factory=list)
    loss: str = "cross_entropy"  # train.loss, resolved

    @property
    def outputs(self) -> int:
        """Width of the network's head: one logit for binary (a sigmoid), one per class,
        one per label, one per target."""
        if self.kind == BINARY:
            return 1
        if self.kind == MULTICLASS:
            return len(self.classes)
        return self.labels

    @property
    def class_values(self) -> list[Any]:
        """The class values of a classification task; empty for the others."""
        return self.classes if self.kind in CLASSIFICATION else []

    @property
    def num_classes(self) -> int:
        """Classes of a classification task (0 otherwise)."""
        return len(self.classes) if self.kind in CLASSIFICATION else 0

    def to_json(self) -> dict[str, Any]:
        """Plain values, for ``model.json`` and the workers' payload."""
        return asdict(self)


def from_json(raw: Any, where: str = "task") -> Task:
    """A ``Task`` from untrusted JSON, checked; ``ValueError`` names the bad field."""
    if not isinstance(raw, dict) or set(raw) - set(Task.__dataclass_fields__):
        raise ValueError(f"{where}: expected an object with the task's fields")
    t = Task(**raw)
    if t.kind not in TASKS:
        raise ValueError(f"{where}.kind: expected one of {', '.join(TASKS)}, got {t.kind!r}")
    if t.kind in CLASSIFICATION:
        if not isinstance(t.classes, list) or not 2 <= len(t.classes) <= MAX_CLASSES:  # noqa: PLR2004
            raise ValueError(f"{where}.classes: expected 2 to {MAX_CLASSES} class values")
        if (t.kind == BINARY) != (len(t.classes) == 2):  # noqa: PLR2004
            raise ValueError(f"{where}.classes: binary has exactly two classes")
        if not all(isinstance(c, str | int | float | bool) for c in t.classes):
            raise ValueError(f"{where}.classes: class values must be strings or numbers")
    elif type(t.labels) is not int or not 1 <= t.labels <= MAX_CLASSES:
        raise ValueError(f"{where}.labels: expected 1 to {MAX_CLASSES}, got {t.labels!r}")
    if t.kind == REGRESSION:
        for key in ("target_mean", "target_std"):
            vals = getattr(t, key)
            if (
                not isinstance(vals, list)
                or len(vals) != t.labels
                or not all(isinstance(v, int | float) and math.isfinite(v) for v in vals)
            ):
                raise ValueError(f"{where}.{key}: expected {t.labels} finite numbers")
    if t.loss not in ("cross_entropy", "mse", "huber"):
        raise ValueError(f"{where}.loss: expected cross_entropy, mse or huber, got {t.loss!r}")
    return t


# ---------------------------------------------------------------- deciding it


@dataclass
class LabelFacts:
    """What one pass over the label column tells: its type, nulls, and its values."""

    type: pa.DataType
    rows: int = 0
    nulls: int = 0  # rows without a label (a null, or a null inside a list)
    not_finite: int = 0  # NaN or infinite numbers
    counts: dict[Any, int] = field(default_factory=dict)  # value -> rows (classes)
    whole: bool = True  # every number is a whole number (floats only)
    example: Any = None  # a number that is not whole
    list_width: int | None = None  # a list label: its length (-1: lengths differ)
    binary_lists: bool = True  # every list element is 0 or 1
    label_sums: np.ndarray | None = None  # list labels: sum per element (label frequencies)
    many: bool = False  # more distinct values than any class set has

    def add(self, col: pa.Array | pa.ChunkedArray) -> None:
        """Count one batch of the label column."""
        from orchestrator.core import features

        arr = features.category_values(col)
        self.rows += len(arr)
        self.nulls += arr.null_count
        t = arr.type
        if features.is_list(t):
            present = arr.drop_null()
            if len(present) == 0:
                return
            try:
                x = features.list_numbers("label", present, None)
            except ConfigError:  # lists of different lengths: said by ``decide``
                self.list_width = -1
                return
            width = x.shape[1]
            if self.list_width not in (None, width):
                self.list_width = -1
                return
            self.list_width = width
            self.not_finite += int((~np.isfinite(x)).any(axis=1).sum())
            self.binary_lists &= bool(np.isin(x[np.isfinite(x)], (0.0, 1.0)).all())
            sums = np.nansum(x, axis=0)
            self.label_sums = sums if self.label_sums is None else self.label_sums + sums
            return
        present = arr.drop_null()
        if pa.types.is_floating(t):
            v = np.asarray(present.to_numpy(zero_copy_only=False), dtype=np.float64)
            finite = np.isfinite(v)
            self.not_finite += int((~finite).sum())
            frac = finite & (v != np.floor(v))
            if frac.any():
                self.whole = False
                self.example = self.example if self.example is not None else float(v[frac][0])
            if not self.whole or self.many:
                return
            values, counts = np.unique(v[finite], return_counts=True)
            self._count(values.tolist(), counts.tolist())
            return
        if self.many:
            return
        import pyarrow.compute as pc

        vc = pc.value_counts(present)
        self._count(vc.field("values").to_pylist(), vc.field("counts").to_pylist())

    def _count(self, values: list[Any], counts: list[int]) -> None:
        for v, c in zip(values, counts, strict=True):
            self.counts[v] = self.counts.get(v, 0) + c
        if len(self.counts) > MAX_CLASSES:
            self.many, self.counts = True, {}


def _label_kind_ok(t: pa.DataType) -> bool:
    from orchestrator.core import features

    inner = t.value_type if pa.types.is_dictionary(t) else t
    if features.is_list(t):
        return (
            pa.types.is_integer(t.value_type)
            or pa.types.is_floating(t.value_type)
            or (pa.types.is_boolean(t.value_type))
        )
    return (
        pa.types.is_integer(inner)
        or pa.types.is_floating(inner)
        or pa.types.is_boolean(inner)
        or pa.types.is_string(inner)
        or pa.types.is_large_string(inner)
    )


def check_label_type(t: pa.DataType, label: str) -> None:
    """A label type no task takes (dates, bytes, decimals, structs) is a ``ConfigError``
    before anything is read."""
    if not _label_kind_ok(t):
        raise ConfigError(
            "data.label",
            f"column {label!r} is {t}, which fits no task (class labels are integers, text, "
            "booleans or whole-number floats; regression targets are numbers; multilabel "
            "targets are fixed-size lists of 0/1)",
            "cast it to integers or text (a date: its ISO text), or to float for regression",
        )


def decide(asked: str, label: str, facts: LabelFacts, say: Any = None) -> tuple[str, list[Any]]:
    """The task kind and (for classes) the sorted class values, from the config's ``task``
    (``asked``) and the label column; a label that fits no task, or not the one asked for,
    is a ``ConfigError`` naming ``task`` or ``data.label``."""
    if facts.nulls:
        raise ConfigError(
            "data.label",
            f"column {label!r} has {facts.nulls} empty rows",
            "drop the rows without a label",
        )
    if facts.not_finite:
        raise ConfigError(
            "data.label",
            f"column {label!r} has {facts.not_finite} rows with NaN or infinity",
            "drop those rows, or give each its value",
        )
    is_list = facts.list_width is not None
    if is_list:
        if facts.list_width == -1:
            raise ConfigError(
                "data.label",
                f"list column {label!r} has lists of different lengths",
                "every row needs the same number of labels or targets",
            )
        natural = MULTILABEL if facts.binary_lists else REGRESSION
        kind = natural if asked == "auto" else asked
        if kind not in (MULTILABEL, REGRESSION) or (kind == MULTILABEL and not facts.binary_lists):
            raise ConfigError(
                "task",
                f"{asked} does not fit the list label {label!r}"
                + ("" if facts.binary_lists else " (its values are not all 0 or 1)"),
                "use task: multilabel for lists of 0/1, regression for lists of numbers",
            )
        return kind, []
    numeric = pa.types.is_floating(facts.type) or pa.types.is_integer(facts.type)
    if asked == REGRESSION:
        if not numeric:
            raise ConfigError(
                "task",
                f"regression needs a numeric label, but {label!r} is {facts.type}",
                "use task: auto (classes), or cast the label to numbers",
            )
        return REGRESSION, []
    if asked == MULTILABEL:
        raise ConfigError(
            "task",
            f"multilabel needs a list label (one 0/1 per label), but {label!r} is {facts.type}",
            "use task: auto, or store the labels as a fixed-size list of 0/1",
        )
    if pa.types.is_floating(facts.type) and asked == "auto":
        if not facts.whole or facts.many or len(facts.counts) > MAX_FLOAT_CLASSES:
            return REGRESSION, []
        if say:
            say(
                f"[data] {label!r} holds floats with {len(facts.counts)} distinct whole values: "
                "treated as classes (set task: regression to predict them as numbers)"
            )
    elif pa.types.is_floating(facts.type) and not facts.whole:
        raise ConfigError(
            "data.label",
            f"column {label!r} has rows that are not whole numbers (e.g. {facts.example!r}): "
            "a class label must be",
            "set task: regression (or auto) to predict numbers, or map the values to classes",
        )
    if facts.many:
        raise ConfigError(
            "data.label",
            f"column {label!r} has more than {MAX_CLASSES:,} distinct values: not classes",
            "set task: regression for a numeric target, or group the values",
        )
    classes = sorted(facts.counts)
    if len(classes) < 2:  # noqa: PLR2004
        raise ConfigError(
            "data.label",
            f"column {label!r} has only one class",
            "a classifier needs at least two label values",
        )
    rare = min(classes, key=lambda c: facts.counts[c])
    if facts.counts[rare] < MIN_ROWS_PER_CLASS:
        raise ConfigError(
            "data.label",
            f"class {rare!r} has only {facts.counts[rare]} rows",
            f"every class needs at least {MIN_ROWS_PER_CLASS} rows for the splits"
            + (
                "; or set task: regression to predict the numbers"
                if pa.types.is_integer(facts.type) or pa.types.is_floating(facts.type)
                else ""
            ),
        )
    kind = BINARY if len(classes) == 2 else MULTICLASS  # noqa: PLR2004
    if asked == BINARY and kind != BINARY:
        raise ConfigError(
            "task", f"binary needs two classes, {label!r} has {len(classes)}", "use task: auto"
        )
    if asked == MULTICLASS and kind == BINARY:
        kind = MULTICLASS  # two logits and a softmax, as asked
    return kind, [c.item() if isinstance(c, np.generic) else c for c in classes]


def resolve_loss(asked: str, kind: str) -> str:
    """``train.loss`` (``asked``) for this task (``auto``: cross-entropy, or MSE for
    regression); a loss the task cannot use is a ``ConfigError``."""
    if asked == "auto":
        return "mse" if kind == REGRESSION else "cross_entropy"
    fits = asked in ("mse", "huber") if kind == REGRESSION else asked == "cross_entropy"
    if not fits:
        raise ConfigError(
            "train.loss",
            f"{asked} does not fit a {kind} task",
            "use auto, or cross_entropy for classes and mse/huber for regression",
        )
    return asked


def check_metric(cfg: Config, kind: str) -> None:
    """``sweep.metric`` must be one this task reports."""
    metric = cfg.sweep.metric
    split, _, name = metric.partition("_")
    if name != "loss" and name not in METRICS[kind]:
        options = ", ".join(f"val_{m}" for m in ("loss", *METRICS[kind]))
        raise ConfigError(
            "sweep.metric",
            f"a {kind} task does not report {metric}",
            f"use one of: {options}",
        )
    wants = "max" if name in MAXIMIZE else "min"
    if cfg.sweep.mode != wants:
        raise ConfigError(
            "sweep.mode",
            f"{metric} is better {'higher' if wants == 'max' else 'lower'}, but sweep.mode "
            f"is {cfg.sweep.mode}",
            f"set sweep.mode: {wants}",
        )


# ---------------------------------------------------------------- targets


def targets(task: Task, col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The label column as what the loop trains on: class indices (int64), or float32
    (rows, labels) of 0/1, or standardized regression targets."""
    from orchestrator.core import features

    if task.kind in CLASSIFICATION:
        arr = features.category_values(col)
        values = np.asarray(arr.to_numpy(zero_copy_only=False))
        classes = np.asarray(task.classes)
        if classes.dtype.kind in "iufb" and values.dtype.kind in "iufb":
            values = values.astype(classes.dtype)
        return np.searchsorted(classes, values).astype(np.int64)
    y = target_matrix(col)
    if task.kind == REGRESSION:
        y = (y - np.asarray(task.target_mean)) / np.asarray(task.target_std)
    return y.astype(np.float32)


def target_matrix(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The label column's numbers as float64 (rows, targets)."""
    from orchestrator.core import features

    arr = features.category_values(col)
    if features.is_list(arr.type):
        return features.list_numbers("label", arr, None)
    return features.numbers(arr)[:, None]


def fit(
    kind: str,
    classes: list[Any],
    loss: str,
    train_labels: list[pa.Array],
    moments: tuple[np.ndarray, np.ndarray] | None = None,
) -> Task:
    """The task's fitted parts from the training split's labels: the regression target's
    mean and standard deviation (constant targets keep a scale of 1). ``moments``: the
    mean and standard deviation of every training row when ``train_labels`` is a sample
    (the streamed loader)."""
    if kind in CLASSIFICATION:
        return Task(kind, classes, loss=loss)
    y = np.vstack([target_matrix(a) for a in train_labels])
    if kind == MULTILABEL:
        return Task(kind, labels=y.shape[1], loss=loss)
    mean, std = moments if moments is not None else (y.mean(axis=0), y.std(axis=0))
    return Task(
        kind,
        labels=y.shape[1],
        target_mean=np.asarray(mean, dtype=np.float64).tolist(),
        target_std=np.where(np.asarray(std) > 1e-12, std, 1.0).tolist(),  # noqa: PLR2004
        loss=loss,
    )


# ---------------------------------------------------------------- loss, predictions, metrics


def loss_fn(task: Task) -> Any:
    """The loss of logits against ``targets``: cross-entropy (softmax), BCE on one logit
    (binary) or on each label (multilabel), MSE or Huber on standardized targets."""
    if task.kind == BINARY:
        return lambda logits, y: F.binary_cross_entropy_with_logits(
            logits.squeeze(1), y.to(logits.dtype)
        )
    if task.kind == MULTICLASS:
        return F.cross_entropy
    if task.kind == MULTILABEL:
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
    if task.loss == "huber":
        return lambda out, y: F.huber_loss(out, y.to(out.dtype), delta=HUBER_DELTA)
    return lambda out, y: F.mse_loss(out, y.to(out.dtype))


def predict(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """Class indices (classes), 0/1 per label (multilabel), or standardized values."""
    if task.kind == BINARY:
        return (logits.squeeze(1) > 0).to(torch.int64)
    if task.kind == MULTICLASS:
        return logits.argmax(dim=1)
    if task.kind == MULTILABEL:
        return (logits > 0).to(torch.int64)
    return logits


def outputs(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """What the server returns: class probabilities (rows, classes), per-label
    probabilities (rows, labels), or the targets in their own units (rows, targets)."""
    if task.kind == BINARY:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    if task.kind == MULTICLASS:
        return torch.softmax(logits, dim=1)
    if task.kind == MULTILABEL:
        return torch.sigmoid(logits)
    mean = torch.tensor(task.target_mean, dtype=logits.dtype, device=logits.device)
    std = torch.tensor(task.target_std, dtype=logits.dtype, device=logits.device)
    return logits * std + mean


def tally_size(task: Task) -> int:
    """Numbers in one split's tally (all-reduced across DDP ranks with the loss sums)."""
    if task.kind in CLASSIFICATION:
        return task.num_classes**2  # the confusion matrix
    if task.kind == MULTILABEL:
        return 3 * task.labels + 1  # TP, FP, FN per label; rows all right
    return 4 * task.labels  # per target: squared error, absolute error, sum y, sum y^2


def tally(task: Task, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One batch's additive counts (float64, on the CPU), so DDP ranks can sum theirs."""
    from orchestrator.core import metrics

    pred = predict(task, logits.detach())
    if task.kind in CLASSIFICATION:
        return metrics.confusion(pred, y, task.num_classes).flatten().cpu()
    if task.kind == MULTILABEL:
        t = y.to(torch.int64)
        tp = (pred * t).sum(dim=0)
        fp = (pred * (1 - t)).sum(dim=0)
        fn = ((1 - pred) * t).sum(dim=0)
        exact = (pred == t).all(dim=1).sum().reshape(1)
        return torch.cat([tp, fp, fn, exact]).to(torch.float64).cpu()
    std = torch.tensor(task.target_std, dtype=torch.float64, device=y.device)
    mean = torch.tensor(task.target_mean, dtype=torch.float64, device=y.device)
    err = (pred.to(torch.float64) - y.to(torch.float64)) * std
    truth = y.to(torch.float64) * std + mean
    return torch.cat(
        [err.square().sum(0), err.abs().sum(0), truth.sum(0), truth.square().sum(0)]
    ).cpu()


def scores(task: Task, counts: torch.Tensor, rows: float) -> dict[str, float]:
    """The task's metrics from a summed tally (``tally``) over ``rows`` rows."""
    from orchestrator.core import metrics

    if task.kind in CLASSIFICATION:
        cm = counts.reshape(task.num_classes, task.num_classes)
        return {"accuracy": metrics.accuracy(cm), "f1": metrics.macro_f1(cm)}
    n = max(rows, 1.0)
    k = task.labels
    if task.kind == MULTILABEL:
        tp, fp, fn, exact = counts[:k], counts[k : 2 * k], counts[2 * k : 3 * k], counts[3 * k]
        denom = 2 * tp + fp + fn
        micro = (2 * tp.sum() / denom.sum()).item() if denom.sum() > 0 else 0.0
        present = denom > 0
        macro = (2 * tp[present] / denom[present]).mean().item() if present.any() else 0.0
        return {"f1": micro, "macro_f1": macro, "subset_accuracy": exact.item() / n}
    sse, sae, sy, syy = counts[:k], counts[k : 2 * k], counts[2 * k : 3 * k], counts[3 * k :]
    sst = syy - sy.square() / n
    r2 = torch.where(sst > 0, 1 - sse / sst.clamp_min(1e-300), torch.zeros_like(sst))
    return {
        "rmse": math.sqrt(sse.sum().item() / (n * k)),
        "mae": sae.sum().item() / (n * k),
        "r2": r2.mean().item(),
    }


# ---------------------------------------------------------------- the yardstick


def baseline_loss(task: Task, train_targets: np.ndarray | None, class_counts: list[int]) -> float:
    """The loss of the trivial predictor on the training split: class frequencies
    (entropy), the training mean (MSE on standardized targets: 1; Huber: its value at the
    standardized targets), per-label frequencies (mean binary entropy)."""
    if task.kind in CLASSIFICATION:
        total = sum(class_counts)
        ps = [c / total for c in class_counts if c > 0] if total else []
        return -sum(p * math.log(p) for p in ps) if ps else math.nan
    if train_targets is None or len(train_targets) == 0:
        return math.nan
    y = np.asarray(train_targets, dtype=np.float64)
    if task.kind == MULTILABEL:
        p = np.clip(y.mean(axis=0), 1e-12, 1 - 1e-12)
        return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))
    z = y - y.mean(axis=0)  # standardized already: the mean is ~0
    if task.loss == "huber":
        a = np.abs(z)
        return float(np.mean(np.where(a <= HUBER_DELTA, 0.5 * z**2, HUBER_DELTA * (a - 0.5))))
    return float(np.mean(z**2))
