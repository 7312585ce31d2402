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

from orchestrator.config import Config, ConfigError, DataConfig
from orchestrator.core import features
from orchestrator.core import task as task_mod

Source = Config | DataConfig  # a whole config says the task; a data section alone: auto


@dataclass
class Dataset:
    """A whole checked table in memory: its feature columns and label, typed, and the task."""

    table: pa.Table  # the feature columns and the label, checked
    kinds: dict[str, str]  # feature column -> features.NUMBER / BOOLEAN / CATEGORY / LIST
    kind: str  # the task
    classes: list  # class values (classification), index -> value
    fingerprint: str  # sha256 of the table's content: same data, same fingerprint
    words: np.ndarray  # each row's hash words (features.row_words)
    class_counts: list[int] = field(default_factory=list)

    @property
    def feature_names(self) -> list[str]:
        """The feature columns, in input order."""
        return list(self.kinds)


@dataclass
class Splits:
    """The train, validation and test arrays of one data set (encoded features, targets),
    with the fitted encoders and the task."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    encoding: features.Encoding
    task: task_mod.Task
    fingerprint: str

    @property
    def classes(self) -> list:
        """Class values of a classification task (empty otherwise)."""
        return self.task.class_values

    @property
    def num_classes(self) -> int:
        """How many classes the model's output layer scores (0: not classes)."""
        return self.task.num_classes

    @property
    def feature_names(self) -> list[str]:
        """The feature columns, in input order."""
        return self.encoding.names

    @property
    def num_features(self) -> int:
        """Numbers per row of the encoded input."""
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
    "hastie": "synthetic make_hastie_10_2 (Hastie et al., The Elements of Statistical "
    "Learning, 10.2): 4,000 rows, 10 standard normal columns, 2 classes split by a sphere: "
    "no label noise, a boundary a small model cannot draw",
    "diabetes": "scikit-learn diabetes: 442 rows, 10 measurements, a number to predict "
    "(disease progression after a year): regression",
    "penguins": "palmerpenguins: 344 penguins, species from island (text), sex (text, 11 "
    "missing), year and 4 measurements (2 rows missing): data.missing: impute",
}
TABLES = ("diabetes", "penguins")  # exported as tables of their own (not class labels)


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
    if name == "hastie":
        # a noise-free nonlinear boundary (the sum of the squares above the chi-square
        # median): capacity and training length, not noise, set the best loss
        x, y = datasets.make_hastie_10_2(n_samples=4000, random_state=0)
        return x, (y > 0).astype(np.int64), [f"x_{i}" for i in range(x.shape[1])]
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


def table(name: str) -> pa.Table:
    """One of ``EXPORTS`` as an Arrow table with a ``label`` column: classes as int64
    (the scikit-learn sets), a float target (diabetes), text species (penguins)."""
    if name == "diabetes":
        from sklearn import datasets

        bunch = datasets.load_diabetes()  # scaled features, as scikit-learn ships them
        columns: dict[str, Any] = {
            str(n): bunch.data[:, i].astype(np.float32) for i, n in enumerate(bunch.feature_names)
        }
        columns["label"] = bunch.target.astype(np.float64)
        return pa.table(columns)
    if name == "penguins":
        import palmerpenguins

        df = palmerpenguins.load_penguins()  # the CSV the package ships: no download
        out = pa.Table.from_pandas(df, preserve_index=False)
        out = out.append_column("label", out.column("species")).drop(["species"])
        return out
    x, y, names = sample(name)
    columns = {n: x[:, i].astype(np.float32) for i, n in enumerate(names)}
    columns["label"] = np.asarray(y, dtype=np.int64)
    return pa.table(columns)


def export(name: str, path: str | Path) -> Path:
    """Write one of ``EXPORTS`` as Parquet (``table``)."""
    if name not in EXPORTS:
        raise ValueError(f"unknown data set {name!r}: one of {', '.join(EXPORTS)}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    pq.write_table(table(name), tmp)
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
    duplicate rows never straddle train and test. ``x``: a row's words
    (``features.row_words``, uint32), or numbers (hashed by their float32 bits)."""
    raw = x if x.dtype == np.uint32 else np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    words = raw.astype(np.uint64)
    h = np.full(len(x), (2166136261 ^ (cfg.seed * 2654435761)) & 0xFFFFFFFF, dtype=np.uint64)
    for j in range(words.shape[1]):  # FNV-1a over the row's 32-bit words
        h = ((h ^ words[:, j]) * np.uint64(16777619)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)  # murmur3's finalizer spreads the low bits
    h = (h * np.uint64(0x85EBCA6B)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(13)
    u = h.astype(np.float64) / 2**32
    val_edge = cfg.test_fraction + (1 - cfg.test_fraction) * cfg.val_fraction
    return np.where(u < cfg.test_fraction, TEST, np.where(u < val_edge, VAL, TRAIN)).astype(np.int8)


# ---------------------------------------------------------------- checking every row


def _parts(cfg: Source) -> tuple[DataConfig, str, str]:
    if isinstance(cfg, Config):
        return cfg.data, cfg.task, cfg.train.loss
    return cfg, "auto", "auto"


def _columns(schema: pa.Schema, cfg: DataConfig) -> dict[str, str]:
    kinds = features.kinds(schema, cfg)
    task_mod.check_label_type(schema.field(cfg.label).type, cfg.label)
    return kinds


@dataclass
class _Check:
    """The checks of every row, batch by batch: each feature column's bad rows (missing
    values under ``missing: error``, infinities always) and the label's facts."""

    cfg: DataConfig
    kinds: dict[str, str]
    label: task_mod.LabelFacts
    bad: dict[str, int] = field(default_factory=dict)

    def add(self, batch: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Count one batch; returns its rows' hash words."""
        error = self.cfg.missing == "error"
        for name, kind in self.kinds.items():
            col = batch.column(name)
            if kind == features.CATEGORY:
                n = col.null_count if error else 0
            else:
                x = (
                    features.list_numbers(name, col, None)
                    if kind == features.LIST
                    else features.numbers(col)[:, None]
                )
                rows_bad = np.isinf(x).any(axis=1)
                if error:
                    rows_bad |= np.isnan(x).any(axis=1)
                    if x.shape[1] == 0:  # only null lists in this batch
                        rows_bad |= np.asarray(col.is_null().to_numpy(zero_copy_only=False))
                n = int(rows_bad.sum())
            self.bad[name] = self.bad.get(name, 0) + n
        self.label.add(batch.column(self.cfg.label))
        return features.row_words(batch, self.kinds)

    def finish(self) -> None:
        """A ``ConfigError`` for the first column with bad rows."""
        for name, n in self.bad.items():
            if n:
                impute = self.cfg.missing == "impute"
                raise ConfigError(
                    "data.path",
                    f"column {name!r} has {n} rows with "
                    + ("infinity" if impute else "NaN, null or infinity"),
                    "clean them first"
                    if impute
                    else "clean them, or set data.missing: impute (the training median and "
                    "a was-missing indicator; categories get a missing category)",
                )


def _row_bytes(words: np.ndarray, batch: pa.Table | pa.RecordBatch, label: str) -> bytes:
    """Each row's feature and label words, row by row: the fingerprint's input, the same
    however the rows are batched."""
    return np.hstack([words, _label_words(batch, label)]).tobytes()


def _label_words(batch: pa.Table | pa.RecordBatch, label: str) -> np.ndarray:
    col = features.category_values(batch.column(label))
    kind = features.LIST if features.is_list(col.type) else features.CATEGORY
    if kind == features.CATEGORY and (
        pa.types.is_integer(col.type)
        or pa.types.is_floating(col.type)
        or pa.types.is_boolean(col.type)
    ):
        kind = features.NUMBER
    return features.row_words(pa.table({label: col}), {label: kind})


def read(cfg: Source, say: Any = None) -> Dataset:
    """Read and check the table; every problem names the column and the count of bad rows."""
    dcfg, asked, _ = _parts(cfg)
    fs, inner = _exists(dcfg)
    table = pq.read_table(inner, filesystem=fs)
    kinds = _columns(table.schema, dcfg)
    table = table.select([*kinds, dcfg.label])
    check = _Check(dcfg, kinds, task_mod.LabelFacts(table.schema.field(dcfg.label).type))
    words = check.add(table)
    check.finish()
    kind, classes = task_mod.decide(asked, dcfg.label, check.label, say)
    digest = hashlib.sha256(_row_bytes(words, table, dcfg.label)).hexdigest()[:16]
    counts = [int(check.label.counts[c]) for c in classes] if classes else []
    return Dataset(table, kinds, kind, classes, digest, words, counts)


# ---------------------------------------------------------------- splitting and encoding


def _stratify(ds: Dataset, cfg: DataConfig) -> np.ndarray | None:
    """What the in-memory split stratifies on: classes, target quantiles, or nothing."""
    if cfg.stratify == "target_quantiles":
        if ds.kind != task_mod.REGRESSION:
            raise ConfigError(
                "data.stratify",
                f"target_quantiles stratifies a regression target; this task is {ds.kind}",
                "use auto",
            )
        y = task_mod.target_matrix(ds.table.column(cfg.label))[:, 0]
        edges = np.quantile(y, [0.2, 0.4, 0.6, 0.8])
        return np.searchsorted(edges, y)
    if cfg.stratify == "auto" and ds.kind in task_mod.CLASSIFICATION:
        classes = np.asarray(ds.classes)
        values = np.asarray(
            features.category_values(ds.table.column(cfg.label)).to_numpy(zero_copy_only=False)
        )
        if classes.dtype.kind in "iufb" and values.dtype.kind in "iufb":
            values = values.astype(classes.dtype)
        return np.searchsorted(classes, values)
    return None


def split_indices(ds: Dataset, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the train, validation and test splits ``split`` makes (seeded by
    ``data.seed``; stratified as ``data.stratify`` says). The training rows are all of
    them: ``data.max_train_rows`` caps what trains, not what the encoders are fitted on."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(ds.table.num_rows)
    strata = _stratify(ds, cfg)
    try:
        rest, test = train_test_split(
            rows, test_size=cfg.test_fraction, stratify=strata, random_state=cfg.seed
        )
        train, val = train_test_split(
            rest,
            test_size=cfg.val_fraction,
            stratify=None if strata is None else strata[rest],
            random_state=cfg.seed,
        )
    except ValueError as e:
        raise ConfigError(
            "data.path",
            f"too few rows for the splits ({len(rows)} rows): {e}",
            "add rows or lower data.test_fraction / data.val_fraction",
        ) from None
    return train, val, test


def _encode(enc: features.Encoding, part: pa.Table, split_name: str) -> np.ndarray:
    """``features.encode`` with a refused value as a ``ConfigError`` naming the column."""
    try:
        return features.encode(enc, part)
    except features.Unseen as e:
        key = "data.unknown_category" if "never seen" in e.problem else "data.missing"
        raise ConfigError(
            key,
            f"{split_name} split: column {e.column!r}: {e.problem}",
            "set data.unknown_category: unknown (an unknown slot)"
            if key == "data.unknown_category"
            else "set data.missing: impute",
        ) from None


def split(ds: Dataset, cfg: Source) -> Splits:
    """Train/validation/test split fixed by ``data.seed`` (stratified by class, or as
    ``data.stratify`` says), the encoders and the task fitted on the training split only,
    every split encoded with them."""
    return split_at(ds, cfg, *split_indices(ds, _parts(cfg)[0]))


def split_at(
    ds: Dataset, cfg: Source, train: np.ndarray, val: np.ndarray, test: np.ndarray
) -> Splits:
    """The splits of the rows at the given indices, fitted and encoded as ``split`` does.
    The encoders and the task are fitted on the whole training split, before
    ``data.max_train_rows`` caps it: a sweep that searches the cap has one encoding, the one
    its champion is registered with (as on the streamed path)."""
    dcfg, _, loss = _parts(cfg)
    parts = {
        name: ds.table.take(idx) for name, idx in (("train", train), ("val", val), ("test", test))
    }
    enc = features.fit([parts["train"].select(list(ds.kinds))], dcfg, ds.kinds)
    task = task_mod.fit(
        ds.kind,
        ds.classes,
        task_mod.resolve_loss(loss, ds.kind),
        [parts["train"].column(dcfg.label)],
    )
    if dcfg.max_train_rows is not None and dcfg.max_train_rows < len(train):
        parts["train"] = parts["train"].slice(0, dcfg.max_train_rows)
    xy = {
        name: (_encode(enc, part, name), task_mod.targets(task, part.column(dcfg.label)))
        for name, part in parts.items()
    }
    return Splits(
        *xy["train"], *xy["val"], *xy["test"], encoding=enc, task=task, fingerprint=ds.fingerprint
    )


def load_splits(cfg: Source, say: Any = None) -> Splits:
    """Read, check and split ``data.path`` in memory."""
    return split(read(cfg, say), cfg)


def merge_validation(s: Splits) -> Splits:
    """Train on train + validation (the champion's refit); validation stays for the record.
    The encoders stay the training split's (the searched trials' and the champion's are one)."""
    return Splits(
        np.concatenate([s.x_train, s.x_val]),
        np.concatenate([s.y_train, s.y_val]),
        s.x_val,
        s.y_val,
        s.x_test,
        s.y_test,
        s.encoding,
        s.task,
        s.fingerprint,
    )


# ---------------------------------------------------------------- data too big for memory: one pass

TARGET_SAMPLE = 1 << 20  # training targets kept for the regression baseline's Huber loss


@dataclass
class Summary:
    """What one streaming pass over the data tells the driver, in O(batch) memory."""

    kinds: dict[str, str]
    encoding: features.Encoding
    task: task_mod.Task
    fingerprint: str
    rows: dict[str, int]
    class_counts: list[int] = field(default_factory=list)  # all rows, in ``classes`` order
    baseline_loss: float = float("nan")

    @property
    def classes(self) -> list:
        """Class values of a classification task (empty otherwise)."""
        return self.task.class_values

    @property
    def feature_names(self) -> list[str]:
        """The feature columns, in input order."""
        return self.encoding.names

    def sizes(self) -> dict[str, int]:
        """Rows in each split, by name (as ``Splits.sizes``)."""
        return dict(self.rows)


@dataclass
class _Unseen:
    """Category values of the validation and test rows, to check against the training
    split's once the pass is over (``unknown_category: error`` refuses them up front)."""

    seen: dict[str, set[Any]] = field(default_factory=dict)

    def add(self, batch: pa.Table | pa.RecordBatch, kinds: dict[str, str]) -> None:
        for name, kind in kinds.items():
            if kind == features.CATEGORY:
                values = features.category_values(batch.column(name)).drop_null()
                self.seen.setdefault(name, set()).update(values.unique().to_pylist())

    def check(self, enc: features.Encoding) -> None:
        for c in enc.columns:
            extra = self.seen.get(c.name, set()) - set(c.values)
            if extra:
                raise ConfigError(
                    "data.unknown_category",
                    f"column {c.name!r}: {len(extra)} categories of the validation or test "
                    f"rows never occur in training (e.g. {sorted(map(str, extra))[0]!r})",
                    "set data.unknown_category: unknown (an unknown slot)",
                )


def scan(cfg: Source, batch_rows: int = 65_536, say: Any = None) -> Summary:
    """Check every row batch by batch (the same checks as ``read``), split each row by its
    hash, and fit the encoders and the task on the training rows, in one pass."""
    import pyarrow.dataset as pads

    dcfg, asked, loss = _parts(cfg)
    fs, inner = _exists(dcfg)
    dataset = pads.dataset(inner, filesystem=fs, format="parquet")
    kinds = _columns(dataset.schema, dcfg)
    check = _Check(dcfg, kinds, task_mod.LabelFacts(dataset.schema.field(dcfg.label).type))
    fitter = features.Fitter(dcfg, kinds)
    unseen = _Unseen()
    train_labels: list[pa.Array] = []  # the first TARGET_SAMPLE: the Huber baseline's
    target: features.Moments | None = None
    kept = 0
    rows = {"train": 0, "val": 0, "test": 0}
    digest = hashlib.sha256()
    for batch in dataset.to_batches(batch_size=batch_rows, columns=[*kinds, dcfg.label]):
        words = check.add(batch)
        digest.update(_row_bytes(words, batch, dcfg.label))
        split_of = assign_split(words, dcfg)
        for name, code in (("train", TRAIN), ("val", VAL), ("test", TEST)):
            rows[name] += int((split_of == code).sum())
        train = pa.Table.from_batches([batch]).filter(pa.array(split_of == TRAIN))
        if any(check.bad.values()):
            continue  # keep counting; report once the pass is over
        fitter.add(train)
        if dcfg.unknown_category == "error":
            unseen.add(pa.Table.from_batches([batch]).filter(pa.array(split_of != TRAIN)), kinds)
        if train.num_rows and _numeric_label(train, dcfg.label):  # every row's target
            y = task_mod.target_matrix(train.column(dcfg.label))
            target = target or features.Moments(y.shape[1], 0)
            if target.width == y.shape[1]:  # lists of other lengths: decide() refuses them
                target.add(y)
        if kept < TARGET_SAMPLE:
            col = features.category_values(train.column(dcfg.label))
            train_labels.append(col.slice(0, TARGET_SAMPLE - kept))
            kept += len(train_labels[-1])
    check.finish()
    kind, classes = task_mod.decide(asked, dcfg.label, check.label, say)
    if min(rows.values()) == 0:
        raise ConfigError(
            "data.path",
            f"too few rows for the splits: {rows}",
            "add rows or lower data.test_fraction / data.val_fraction",
        )
    enc = fitter.finish()
    unseen.check(enc)
    moments = None
    if target is not None and kind == task_mod.REGRESSION:
        _, mean, std = target.finish(impute=False)
        moments = (np.asarray(mean), np.asarray(std))
    task = task_mod.fit(kind, classes, task_mod.resolve_loss(loss, kind), train_labels, moments)
    counts = [int(check.label.counts[c]) for c in classes] if classes else []
    base_targets = (
        np.vstack([task_mod.targets(task, a) for a in train_labels])
        if task.kind not in task_mod.CLASSIFICATION and train_labels
        else None
    )
    return Summary(
        kinds,
        enc,
        task,
        digest.hexdigest()[:16],
        rows,
        counts,
        task_mod.baseline_loss(task, base_targets, counts),
    )


def _numeric_label(batch: pa.Table, label: str) -> bool:
    """Whether the label holds numbers (a regression or multilabel target can)."""
    t = features.category_values(batch.column(label)).type
    t = t.value_type if features.is_list(t) else t
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))


def encode_batch(
    cfg: DataConfig,
    kinds: dict[str, str],
    enc: features.Encoding,
    task: task_mod.Task,
    batch: pa.Table,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch of raw rows as (encoded features, targets, split code per row): what the
    streamed loaders (``split_batches``, Ray Data's map) do to every batch."""
    split_of = assign_split(features.row_words(batch, kinds), cfg)
    return features.encode(enc, batch), task_mod.targets(task, batch.column(cfg.label)), split_of


def split_batches(
    cfg: DataConfig, summary: Summary, code: int, batch_rows: int = 65_536
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The rows of one split (``TRAIN``, ``VAL`` or ``TEST``) as (features, targets)
    batches, read batch by batch as ``scan`` read them (the data checks already passed)."""
    import pyarrow.dataset as pads

    fs, inner = _exists(cfg)
    dataset = pads.dataset(inner, filesystem=fs, format="parquet")
    columns = [*summary.kinds, cfg.label]
    for batch in dataset.to_batches(batch_size=batch_rows, columns=columns):
        x, y, split_of = encode_batch(
            cfg, summary.kinds, summary.encoding, summary.task, pa.Table.from_batches([batch])
        )
        keep = split_of == code
        if keep.any():
            yield x[keep], y[keep]
