"""What the driver knows of the data before anything starts: checked (a ConfigError naming
the column before Ray or MLflow start), the loader chosen (in memory, or scanned batch by
batch and streamed), the sizes, classes and fingerprint, and the test split to score the
champion on."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from orchestrator.config import Config, ConfigError
from orchestrator.core import data, diagnosis, features, loop, model
from orchestrator.core import task as task_mod

TEST_BATCH_ROWS = 4096  # rows per test batch: big enough to be quick, small enough for any data


@dataclass
class Prepared:
    """What the driver knows of the data, in memory or from one streaming pass."""

    cfg: Config  # with data.path made absolute
    loader: str
    fingerprint: str
    sizes: dict[str, int]
    encoding: features.Encoding
    task: task_mod.Task
    splits: data.Splits | None = None  # memory
    summary: data.Summary | None = None  # stream

    @property
    def classes(self) -> list:
        """Class values of a classification task (empty otherwise)."""
        return self.task.class_values

    @property
    def num_features(self) -> int:
        """Numbers per row of the encoded input."""
        return self.encoding.width

    @property
    def baseline(self) -> diagnosis.Baseline:
        """What the trivial predictor scores on the training split (the yardstick of the
        bias/variance labels): class frequencies, the training mean, label frequencies."""
        t = self.task
        if self.splits is not None:
            counts = (
                np.bincount(self.splits.y_train, minlength=t.num_classes).tolist()
                if t.kind in task_mod.CLASSIFICATION
                else []
            )
            if counts:
                return diagnosis.baseline(counts)
            return diagnosis.Baseline(task_mod.baseline_loss(t, self.splits.y_train, []), np.nan)
        assert self.summary is not None
        if t.kind in task_mod.CLASSIFICATION:
            return diagnosis.baseline(self.summary.class_counts)
        return diagnosis.Baseline(self.summary.baseline_loss, np.nan)

    def describe(self) -> str:
        """The task and the inputs in a few words, as the sweep's start line shows them."""
        t, enc = self.task, self.encoding
        if t.kind in task_mod.CLASSIFICATION:
            what = f"{t.kind} ({len(t.classes)} classes)"
        else:
            unit = "label" if t.kind == task_mod.MULTILABEL else "target"
            what = f"{t.kind} ({t.labels} {unit}{'s' if t.labels > 1 else ''})"
        counts: dict[str, int] = {}
        for c in enc.columns:
            counts[c.kind] = counts.get(c.kind, 0) + 1
        plural = {"number": "numbers", "boolean": "booleans", "category": "categories"}
        cols = ", ".join(
            f"{n} {k if n == 1 else plural.get(k, k + 's')}" for k, n in counts.items()
        )
        imputed = sum(c.indicator for c in enc.columns)
        extra = f"; {imputed} with missing values imputed" if imputed else ""
        return f"task {what}; {len(enc.columns)} feature columns ({cols}){extra}"

    def test_batches(self) -> Iterator[loop.Batch]:
        """The test split in CPU batches; big data is read batch by batch, never whole."""
        if self.splits is not None:
            x, y = torch.from_numpy(self.splits.x_test), torch.from_numpy(self.splits.y_test)
            for idx in torch.arange(len(y)).split(TEST_BATCH_ROWS):
                yield x[idx], y[idx]
            return
        assert self.summary is not None
        rows = data.split_batches(self.cfg.data, self.summary, data.TEST, TEST_BATCH_ROWS)
        for xs, ys in _rebatch(rows, TEST_BATCH_ROWS):
            yield torch.from_numpy(xs), torch.from_numpy(ys)


def _rebatch(
    parts: Iterator[tuple[np.ndarray, np.ndarray]], size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x, y) pieces of any size, gathered into batches of ``size`` rows (the last smaller)."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    held = 0
    for x, y in parts:
        xs.append(x)
        ys.append(y)
        held += len(y)
        while held >= size:
            fx, fy = np.concatenate(xs), np.concatenate(ys)
            yield fx[:size], fy[:size]
            xs, ys, held = [fx[size:]], [fy[size:]], held - size
    if held:
        yield np.concatenate(xs), np.concatenate(ys)


def prepare(cfg: Config, say: Any = None) -> Prepared:
    """Check the data (ConfigError on any problem, before Ray or MLflow start) and pick the
    loader: small data is read whole, big data is scanned batch by batch and streamed. Then
    decide the task, check the metric fits it, and build the network on the meta device
    with every searched model value (a factory's refusal names the key)."""
    cfg = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"path": data.absolute(cfg.data.path)})}
    )
    loader = data.choose_loader(cfg.data, data.size_bytes(cfg.data))
    if loader == "stream":
        summary = data.scan(cfg, say=say)
        prep = Prepared(
            cfg,
            loader,
            summary.fingerprint,
            summary.sizes(),
            summary.encoding,
            summary.task,
            summary=summary,
        )
    else:
        splits = data.load_splits(cfg, say=say)
        prep = Prepared(
            cfg,
            loader,
            splits.fingerprint,
            splits.sizes(),
            splits.encoding,
            splits.task,
            splits=splits,
        )
    task_mod.check_metric(cfg, prep.task.kind)
    try:  # what a server will accept of it, checked now rather than after the sweep
        features.from_json(prep.encoding.to_json())
    except ValueError as e:
        raise ConfigError(
            "data.features",
            f"the fitted inputs could not be served: {e}",
            "select fewer or narrower columns with data.features / data.exclude",
        ) from None
    if cfg.data.shape is not None:
        shape = cfg.data.shape
        if shape[0] * shape[1] * shape[2] != prep.encoding.width:
            raise ConfigError(
                "data.shape",
                f"{shape} holds {shape[0] * shape[1] * shape[2]} values, but the feature "
                f"columns hold {prep.encoding.width} per row",
                "fix data.shape, or choose the image's columns with data.features",
            )
    model.check_buildable(cfg, prep.encoding, prep.task, cfg.sweep.space)
    return prep
