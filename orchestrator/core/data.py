"""Parquet in, checked arrays and reproducible splits out. Plain pyarrow/NumPy: no Ray here."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.config import ConfigError, DataConfig

MIN_ROWS_PER_CLASS = 3  # one each for train, validation and test after a stratified split
MIN_CLASSES = 2  # with one label value there is nothing to tell apart


@dataclass
class Dataset:
    """A whole checked table in memory: float32 features, class indices and what they mean."""

    features: np.ndarray  # float32, (rows, features)
    labels: np.ndarray  # int64 class indices 0..C-1
    classes: list  # original label values, index -> value
    feature_names: list[str]
    fingerprint: str  # sha256 of the table's content: same data, same fingerprint


@dataclass
class Splits:
    """The train, validation and test arrays of one data set, with its classes and columns."""

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
        """How many classes the model's output layer scores."""
        return len(self.classes)

    @property
    def num_features(self) -> int:
        """How many feature columns the model's input takes."""
        return int(self.x_train.shape[1])

    def sizes(self) -> dict[str, int]:
        """Rows in each split, by name."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


# Real sets scikit-learn ships (no download) plus a synthetic one with label noise: what
# `orchestrator data export NAME` writes and the diagnosis corpus (jobs/curves.py) learns.
EXPORTS = {
    "digits": "scikit-learn digits: 1,797 real 8x8 images, 64 pixel columns, 10 classes",
    "breast_cancer": "scikit-learn breast cancer: 569 rows, 30 measurements, 2 classes",
    "wine": "scikit-learn wine: 178 rows, 13 measurements, 3 classes",
    "iris": "scikit-learn iris: 150 rows, 4 measurements, 3 classes",
    "noisy": "synthetic make_classification: 2,000 rows, 20 columns (6 informative), "
    "3 classes, 20% of the labels flipped at random",
}


def sample(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features, integer labels and column names of one of ``EXPORTS``."""
    from sklearn import datasets

    if name == "noisy":
        # flip_y relabels 20% of the rows at random: no model can beat that noise, so a big
        # model overfits it while a small one still underfits the 6 informative columns
        x, y = datasets.make_classification(
            n_samples=2000,
            n_features=20,
            n_informative=6,
            n_redundant=4,
            n_classes=3,
            n_clusters_per_class=2,
            flip_y=0.2,
            class_sep=0.8,
            random_state=0,
        )
        return x, y, [f"x_{i}" for i in range(x.shape[1])]
    loaders = {
        "digits": datasets.load_digits,
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "iris": datasets.load_iris,
    }
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}: one of {', '.join(EXPORTS)}")
    bunch = loaders[name]()
    names = (
        [f"pixel_{i}" for i in range(bunch.data.shape[1])]
        if name == "digits"
        else [re.sub(r"[^0-9a-zA-Z]+", "_", str(n)).strip("_") for n in bunch.feature_names]
    )
    return bunch.data, bunch.target, names


def export(name: str, path: str | Path) -> Path:
    """Write one of ``EXPORTS`` as Parquet: float32 feature columns and an int64 ``label``."""
    x, y, names = sample(name)
    columns: dict[str, Any] = {n: x[:, i].astype(np.float32) for i, n in enumerate(names)}
    columns["label"] = np.asarray(y, dtype=np.int64)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    pq.write_table(pa.table(columns), tmp)
    tmp.replace(out)  # never leave a half-written file under the real name
    return out


def export_digits(path: str | Path) -> Path:
    """Write scikit-learn's digits (1,797 real 8x8 images, 10 classes) as Parquet."""
    return export("digits", path)


def absolute(path: str) -> str:
    """Local relative paths made absolute (Ray workers run in other folders); URIs as they are."""
    return path if "://" in path else str(Path(path).absolute())


def _open(path: str) -> tuple[pafs.FileSystem, str]:
    try:
        fs, inner = pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, ValueError):
        fs, inner = pafs.LocalFileSystem(), str(Path(path).absolute())
    return fs, inner


def _exists(cfg: DataConfig) -> tuple[pafs.FileSystem, str]:
    fs, inner = _open(cfg.path)
    if fs.get_file_info(inner).type == pafs.FileType.NotFound:
        raise ConfigError(
            "data.path",
            f"{cfg.path!r} does not exist",
            "export a sample with `orchestrator data export digits` or fix the path",
        )
    return fs, inner


def _feature_names(schema: pa.Schema, cfg: DataConfig) -> list[str]:
    if cfg.label not in schema.names:
        raise ConfigError(
            "data.label",
            f"column {cfg.label!r} is not in {cfg.path}",
            f"use one of: {', '.join(schema.names[:12])}",
        )
    names = [c for c in schema.names if c != cfg.label]
    if not names:
        raise ConfigError("data.path", "the table has no feature columns", "add numeric columns")
    for name in names:
        t = schema.field(name).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise ConfigError(
                "data.path",
                f"feature column {name!r} is {t}, not numeric",
                "drop or encode it as numbers before training",
            )
    return names


def features_of(table: pa.Table | pa.RecordBatch, names: list[str]) -> np.ndarray:
    """The named columns of a table or batch as one float32 (rows, features) array."""
    return np.column_stack(
        [table.column(n).to_numpy(zero_copy_only=False).astype(np.float32) for n in names]
    )


def _bad_values(names: list[str], bad_per_column: np.ndarray) -> None:
    if bad_per_column.any():
        col = int(np.argmax(bad_per_column > 0))
        raise ConfigError(
            "data.path",
            f"column {names[col]!r} has {int(bad_per_column[col])} rows with NaN, null or infinity",
            "clean or impute them first",
        )


def _label_type(schema: pa.Schema, cfg: DataConfig) -> pa.DataType:
    """The label column's value type when a classifier can take its values as classes:
    integers, text, booleans, or floats (whose values ``_label_counts`` checks are whole).
    Anything else (dates, bytes, decimals, lists) would pass training and fail only when the
    champion's classes are written out, after the whole sweep."""
    t = schema.field(cfg.label).type
    inner = t.value_type if pa.types.is_dictionary(t) else t  # pandas categoricals
    if not any(check(inner) for check in LABEL_TYPES):
        raise ConfigError(
            "data.label",
            f"column {cfg.label!r} is {t}, which cannot be "
            "class labels (integers, text, booleans or whole-number floats)",
            "cast it to integers or text before training (a date: its ISO text)",
        )
    return inner


LABEL_TYPES = (
    pa.types.is_integer,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_boolean,
    pa.types.is_floating,
)


def _label_counts(labels: pa.Array | pa.ChunkedArray, kind: pa.DataType) -> tuple[int, int, Any]:
    """Rows of a float label column that are NaN or infinite, rows that are not whole
    numbers, and one such value: a NaN would be a class of its own (NaN != NaN) and 0.5
    is a regression target, not a class."""
    if not pa.types.is_floating(kind):
        return 0, 0, None
    values = labels.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
    finite = np.isfinite(values)
    fractional = finite & (values != np.floor(values))
    example = values[fractional][0].item() if fractional.any() else None
    return int((~finite).sum()), int(fractional.sum()), example


def _label_values(
    cfg: DataConfig, nulls: int, not_finite: int, fractional: int, example: Any
) -> None:
    if nulls:
        raise ConfigError(
            "data.label",
            f"column {cfg.label!r} has {nulls} empty rows",
            "drop the rows without a label",
        )
    if not_finite:
        raise ConfigError(
            "data.label",
            f"column {cfg.label!r} has {not_finite} rows with NaN or infinity",
            "drop those rows, or give each its class",
        )
    if fractional:
        raise ConfigError(
            "data.label",
            f"column {cfg.label!r} has {fractional} rows that are "
            f"not whole numbers (e.g. {example!r}): a class label must be",
            "map the values to classes (regression labels are not supported)",
        )


def _class_counts(cfg: DataConfig, classes: np.ndarray, counts: np.ndarray) -> None:
    if len(classes) < MIN_CLASSES:
        raise ConfigError(
            "data.label",
            f"column {cfg.label!r} has only one class",
            "a classifier needs at least two label values",
        )
    if counts.min() < MIN_ROWS_PER_CLASS:
        rare = classes[int(np.argmin(counts))]
        raise ConfigError(
            "data.label",
            f"class {rare!r} has only {counts.min()} rows",
            f"every class needs at least {MIN_ROWS_PER_CLASS} rows for the splits",
        )


def _plain(classes: np.ndarray) -> list:
    """Python values for JSON (the champion's spec): NumPy scalars unwrapped, text as is."""
    return [c.item() if isinstance(c, np.generic) else c for c in classes]


def read(cfg: DataConfig) -> Dataset:
    """Read and check the table; every problem names the column and the count of bad rows."""
    fs, inner = _exists(cfg)
    table = pq.read_table(inner, filesystem=fs)
    names = _feature_names(table.schema, cfg)
    kind = _label_type(table.schema, cfg)
    x = features_of(table, names)
    _bad_values(names, (~np.isfinite(x)).sum(axis=0))
    label_col = table.column(cfg.label)
    _label_values(cfg, label_col.null_count, *_label_counts(label_col, kind))
    classes, y = np.unique(label_col.to_numpy(zero_copy_only=False), return_inverse=True)
    _class_counts(cfg, classes, np.bincount(y))
    digest = hashlib.sha256(x.tobytes() + y.astype(np.int64).tobytes()).hexdigest()[:16]
    return Dataset(x, y.astype(np.int64), _plain(classes), names, digest)


# ---------------------------------------------------------------- data too big for memory

TRAIN, VAL, TEST = 0, 1, 2


def choose_loader(cfg: DataConfig, nbytes: int) -> str:
    """``memory`` (read once per worker, sharded by index) or ``stream`` (Ray Data)."""
    if cfg.loader != "auto":
        return cfg.loader
    return "stream" if nbytes > cfg.stream_above_mb * 2**20 else "memory"


def size_bytes(cfg: DataConfig) -> int:
    """Bytes of ``data.path`` on its file system (a folder: all its files), to choose a loader."""
    fs, inner = _exists(cfg)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.File:
        return int(info.size or 0)
    files = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    return sum(int(f.size or 0) for f in files if f.type == pafs.FileType.File)


def assign_split(x: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """TRAIN / VAL / TEST for each row from a hash of its values and ``cfg.seed``: the same
    row lands in the same split in every batch, worker and run, with no global shuffle, and
    duplicate rows never straddle train and test."""
    words = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    h = np.full(len(x), (2166136261 ^ (cfg.seed * 2654435761)) & 0xFFFFFFFF, dtype=np.uint64)
    for j in range(words.shape[1]):  # FNV-1a over the row's 32-bit words
        h = ((h ^ words[:, j]) * np.uint64(16777619)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)  # murmur3's finalizer spreads the low bits
    h = (h * np.uint64(0x85EBCA6B)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(13)
    u = h.astype(np.float64) / 2**32
    val_edge = cfg.test_fraction + (1 - cfg.test_fraction) * cfg.val_fraction
    return np.where(u < cfg.test_fraction, TEST, np.where(u < val_edge, VAL, TRAIN)).astype(np.int8)


@dataclass
class Summary:
    """What one streaming pass over the data tells the driver, in O(batch) memory."""

    classes: list
    feature_names: list[str]
    fingerprint: str
    rows: dict[str, int]
    col_mean: dict[str, np.ndarray]  # per split group: "train", "train+val"
    col_std: dict[str, np.ndarray]
    class_counts: list[int] = field(default_factory=list)  # all rows, in ``classes`` order

    def sizes(self) -> dict[str, int]:
        """Rows in each split, by name (as ``Splits.sizes``)."""
        return dict(self.rows)


def scan(cfg: DataConfig, batch_rows: int = 65_536) -> Summary:
    """Check every row batch by batch (the same checks as ``read``) and gather the split
    sizes, the classes and the training split's feature moments for the model's stem."""
    import pyarrow.dataset as pads

    fs, inner = _exists(cfg)
    dataset = pads.dataset(inner, filesystem=fs, format="parquet")
    names = _feature_names(dataset.schema, cfg)
    kind = _label_type(dataset.schema, cfg)  # the same label checks as ``read``
    d = len(names)
    bad = np.zeros(d, dtype=np.int64)
    nulls = not_finite = fractional = 0
    example = None
    label_counts: dict[Any, int] = {}
    sums = {g: np.zeros(d) for g in ("train", "train+val")}
    squares = {g: np.zeros(d) for g in ("train", "train+val")}
    rows = {"train": 0, "val": 0, "test": 0}
    digest = hashlib.sha256()
    for batch in dataset.to_batches(batch_size=batch_rows):
        x = features_of(batch, names)
        finite = np.isfinite(x)
        bad += (~finite).sum(axis=0)
        labels = batch.column(cfg.label)
        nulls += labels.null_count
        n_bad, n_frac, ex = _label_counts(labels, kind)
        not_finite, fractional = not_finite + n_bad, fractional + n_frac
        example = example if example is not None else ex
        if bad.any() or nulls or not_finite or fractional:
            continue  # keep counting; report once the pass is over
        values, counts = np.unique(labels.to_numpy(zero_copy_only=False), return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist(), strict=True):
            label_counts[v] = label_counts.get(v, 0) + c
        split = assign_split(x, cfg)
        for name, code in (("train", TRAIN), ("val", VAL), ("test", TEST)):
            rows[name] += int((split == code).sum())
        for group, mask in (("train", split == TRAIN), ("train+val", split != TEST)):
            sums[group] += x[mask].sum(axis=0, dtype=np.float64)
            squares[group] += np.square(x[mask], dtype=np.float64).sum(axis=0)
        digest.update(x.tobytes())
    _bad_values(names, bad)
    _label_values(cfg, nulls, not_finite, fractional, example)
    classes = np.array(sorted(label_counts))
    _class_counts(cfg, classes, np.array([label_counts[c] for c in classes.tolist()]))
    if min(rows.values()) == 0:
        raise ConfigError(
            "data.path",
            f"too few rows for the splits: {rows}",
            "add rows or lower data.test_fraction / data.val_fraction",
        )
    means, stds = {}, {}
    for group, n in (("train", rows["train"]), ("train+val", rows["train"] + rows["val"])):
        means[group] = sums[group] / n
        stds[group] = np.sqrt(np.maximum(squares[group] / n - means[group] ** 2, 0.0))
    return Summary(
        _plain(classes),
        names,
        digest.hexdigest()[:16],
        rows,
        means,
        stds,
        [int(label_counts[c]) for c in classes.tolist()],
    )


def split_batches(
    cfg: DataConfig, summary: Summary, code: int, batch_rows: int = 65_536
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The rows of one split (``TRAIN``, ``VAL`` or ``TEST``) as (features, class index)
    batches, read batch by batch as ``scan`` read them (the data checks already passed)."""
    import pyarrow.dataset as pads

    fs, inner = _exists(cfg)
    classes = np.asarray(summary.classes)
    dataset = pads.dataset(inner, filesystem=fs, format="parquet")
    for batch in dataset.to_batches(batch_size=batch_rows):
        x = features_of(batch, summary.feature_names)
        keep = assign_split(x, cfg) == code
        if keep.any():
            labels = batch.column(cfg.label).to_numpy(zero_copy_only=False)
            yield x[keep], np.searchsorted(classes, labels[keep]).astype(np.int64)


def split(ds: Dataset, cfg: DataConfig) -> Splits:
    """Stratified train/validation/test split, fixed by ``cfg.seed``."""
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(
        ds.features,
        ds.labels,
        test_size=cfg.test_fraction,
        stratify=ds.labels,
        random_state=cfg.seed,
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=cfg.val_fraction, stratify=y_rest, random_state=cfg.seed
    )
    if cfg.max_train_rows is not None and cfg.max_train_rows < len(y_train):
        x_train, y_train = x_train[: cfg.max_train_rows], y_train[: cfg.max_train_rows]
    return Splits(
        x_train, y_train, x_val, y_val, x_test, y_test, ds.classes, ds.feature_names, ds.fingerprint
    )


def load_splits(cfg: DataConfig) -> Splits:
    """Read, check and split ``data.path`` in memory."""
    return split(read(cfg), cfg)


def merge_validation(s: Splits) -> Splits:
    """Train on train + validation (the champion's refit); validation stays for the record."""
    return Splits(
        np.concatenate([s.x_train, s.x_val]),
        np.concatenate([s.y_train, s.y_val]),
        s.x_val,
        s.y_val,
        s.x_test,
        s.y_test,
        s.classes,
        s.feature_names,
        s.fingerprint,
    )
