"""What the driver knows of the data before anything starts: checked (a ConfigError naming
the column before Ray or MLflow start), the loader chosen (in memory, or scanned batch by
batch and streamed), the sizes, classes and fingerprint, and the test split to score the
champion on."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from orchestrator.config import Config
from orchestrator.core import data, diagnosis, loop

TEST_BATCH_ROWS = 4096  # rows per test batch: big enough to be quick, small enough for any data


@dataclass
class Prepared:
    """What the driver knows of the data, in memory or from one streaming pass."""

    cfg: Config  # with data.path made absolute
    loader: str
    fingerprint: str
    sizes: dict[str, int]
    classes: list
    num_features: int
    splits: data.Splits | None = None  # memory
    summary: data.Summary | None = None  # stream

    @property
    def baseline(self) -> diagnosis.Baseline:
        """What predicting the training split's class frequencies scores (the yardstick
        of the bias/variance labels)."""
        if self.splits is not None:
            return diagnosis.baseline(
                np.bincount(self.splits.y_train, minlength=len(self.classes)).tolist()
            )
        assert self.summary is not None
        return diagnosis.baseline(self.summary.class_counts)

    def test_batches(self) -> Iterator[loop.Batch]:
        """The test split in CPU batches; big data is read batch by batch, never whole."""
        if self.splits is not None:
            x, y = torch.from_numpy(self.splits.x_test), torch.from_numpy(self.splits.y_test)
            for idx in torch.arange(len(y)).split(TEST_BATCH_ROWS):
                yield x[idx], y[idx]
            return
        assert self.summary is not None
        rows = data.split_batches(self.cfg.data, self.summary, data.TEST, TEST_BATCH_ROWS)
        for features, labels in _rebatch(rows, TEST_BATCH_ROWS):
            yield torch.from_numpy(features), torch.from_numpy(labels)


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


def prepare(cfg: Config) -> Prepared:
    """Check the data (ConfigError on any problem, before Ray or MLflow start) and pick the
    loader: small data is read whole, big data is scanned batch by batch and streamed."""
    cfg = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"path": data.absolute(cfg.data.path)})}
    )
    loader = data.choose_loader(cfg.data, data.size_bytes(cfg.data))
    if loader == "stream":
        summary = data.scan(cfg.data)
        return Prepared(
            cfg,
            loader,
            summary.fingerprint,
            summary.sizes(),
            summary.classes,
            len(summary.feature_names),
            summary=summary,
        )
    splits = data.load_splits(cfg.data)
    return Prepared(
        cfg,
        loader,
        splits.fingerprint,
        splits.sizes(),
        splits.classes,
        splits.num_features,
        splits=splits,
    )
