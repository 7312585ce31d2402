"""Parquet in, checked arrays and reproducible splits out. Plain pyarrow/NumPy: no Ray here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.config import ConfigError, DataConfig

MIN_ROWS_PER_CLASS = 3  # one each for train, validation and test after a stratified split


@dataclass
class Dataset:
    features: np.ndarray  # float32, (rows, features)
    labels: np.ndarray  # int64 class indices 0..C-1
    classes: list  # original label values, index -> value
    feature_names: list[str]
    fingerprint: str  # sha256 of the table's content: same data, same fingerprint


@dataclass
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list
    feature_names: list[str]
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def export_digits(path: str | Path) -> Path:
    """Write scikit-learn's digits (1,797 real 8x8 images, 10 classes) as Parquet."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    columns = {f"pixel_{i}": digits.data[:, i].astype(np.float32) for i in range(64)}
    columns["label"] = digits.target.astype(np.int64)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    pq.write_table(pa.table(columns), tmp)
    tmp.replace(out)  # never leave a half-written file under the real name
    return out


def absolute(path: str) -> str:
    """Local relative paths made absolute (Ray workers run in other folders); URIs as they are."""
    return path if "://" in path else str(Path(path).absolute())


def _open(path: str) -> tuple[pafs.FileSystem, str]:
    try:
        fs, inner = pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, ValueError):
        fs, inner = pafs.LocalFileSystem(), str(Path(path).absolute())
    return fs, inner


def read(cfg: DataConfig) -> Dataset:
    """Read and check the table; every problem names the column and the count of bad rows."""
    fs, inner = _open(cfg.path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError("data.path", f"{cfg.path!r} does not exist",
                          "export a sample with `orchestrator data export digits` or fix the path")
    table = pq.read_table(inner, filesystem=fs)
    if cfg.label not in table.column_names:
        raise ConfigError("data.label", f"column {cfg.label!r} is not in {cfg.path}",
                          f"use one of: {', '.join(table.column_names[:12])}")
    names = [c for c in table.column_names if c != cfg.label]
    if not names:
        raise ConfigError("data.path", "the table has no feature columns", "add numeric columns")
    for name in names:
        t = table.schema.field(name).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise ConfigError("data.path", f"feature column {name!r} is {t}, not numeric",
                              "drop or encode it as numbers before training")
    x = np.column_stack(
        [table.column(n).to_numpy(zero_copy_only=False).astype(np.float32) for n in names]
    )
    bad = ~np.isfinite(x)
    if bad.any():
        col = int(np.argmax(bad.any(axis=0)))
        raise ConfigError("data.path", f"column {names[col]!r} has {int(bad[:, col].sum())} "
                          "rows with NaN, null or infinity", "clean or impute them first")
    label_col = table.column(cfg.label)
    if label_col.null_count:
        raise ConfigError("data.label", f"column {cfg.label!r} has {label_col.null_count} "
                          "empty rows", "drop the rows without a label")
    raw_labels = label_col.to_numpy(zero_copy_only=False)
    classes, y = np.unique(raw_labels, return_inverse=True)
    if len(classes) < 2:
        raise ConfigError("data.label", f"column {cfg.label!r} has only one class",
                          "a classifier needs at least two label values")
    counts = np.bincount(y)
    if counts.min() < MIN_ROWS_PER_CLASS:
        rare = classes[int(np.argmin(counts))]
        raise ConfigError("data.label", f"class {rare!r} has only {counts.min()} rows",
                          f"every class needs at least {MIN_ROWS_PER_CLASS} rows for the splits")
    digest = hashlib.sha256(x.tobytes() + y.astype(np.int64).tobytes()).hexdigest()[:16]
    return Dataset(x, y.astype(np.int64), [c.item() for c in classes], names, digest)


def split(ds: Dataset, cfg: DataConfig) -> Splits:
    """Stratified train/validation/test split, fixed by ``cfg.seed``."""
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(
        ds.features, ds.labels, test_size=cfg.test_fraction, stratify=ds.labels,
        random_state=cfg.seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=cfg.val_fraction, stratify=y_rest, random_state=cfg.seed)
    if cfg.max_train_rows is not None and cfg.max_train_rows < len(y_train):
        x_train, y_train = x_train[: cfg.max_train_rows], y_train[: cfg.max_train_rows]
    return Splits(x_train, y_train, x_val, y_val, x_test, y_test,
                  ds.classes, ds.feature_names, ds.fingerprint)


def load_splits(cfg: DataConfig) -> Splits:
    return split(read(cfg), cfg)


def merge_validation(s: Splits) -> Splits:
    """Train on train + validation (the champion's refit); validation stays for the record."""
    return Splits(np.concatenate([s.x_train, s.x_val]), np.concatenate([s.y_train, s.y_val]),
                  s.x_val, s.y_val, s.x_test, s.y_test, s.classes, s.feature_names,
                  s.fingerprint)
