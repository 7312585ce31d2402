"""The user's columns as model input: each feature column typed (number, boolean, category,
fixed-size list of numbers), its encoder fitted on the training split only, and every
table, batch or request encoded the same way into one float32 matrix.

The encoded matrix is still "raw": a number is itself (NaN where it is missing), a
category is its integer code. What the network learns from it (imputation, was-missing
indicators, scaling, one-hot or embedding) is ``model.Preprocess``, built from the fitted
``Encoding`` and saved with the weights; so a checkpoint, the registered model and the
server take the same raw values. The ``Encoding`` itself is plain data, written as JSON
(never a pickle).

Codes: 0 is the unknown slot (a category never seen in training), 1 the missing slot, and
the training values follow from 2, most frequent first (ties by value), so the same rows
fit the same codes batch by batch or in one piece.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.config import ConfigError, DataConfig

NUMBER, BOOLEAN, CATEGORY, LIST = "number", "boolean", "category", "list"
KINDS = (NUMBER, BOOLEAN, CATEGORY, LIST)
UNKNOWN, MISSING, FIRST_VALUE = 0, 1, 2  # category codes
MEDIAN_VALUES = 1 << 23  # values kept for medians over all columns (64 MB), at most
MIN_MEDIAN_SAMPLE = 4096  # ...but at least this many per element (a median within ~1.5%)
MAX_COLUMNS = 1 << 20  # encoded numbers per row, at most (a 1024x1024 image)
MAX_LIST = MAX_COLUMNS  # numbers in one list cell, at most
MAX_ONE_HOT = 1024  # one-hot widths, at most: a wider category is embedded
MAX_VALUES = 1_000_000  # category values in one encoding, at most (all columns)
DTYPES = frozenset(
    {"string", "large_string", "bool", *(f"{s}int{b}" for s in ("", "u") for b in (8, 16, 32, 64))}
)
SCHEMA_VALUES = 1000  # a category's values listed in the input schema, at most
NULL_WORD = 0x7FC00000  # a missing value hashes as float32 NaN, whatever its column's type


def embed_dim(cardinality: int) -> int:
    """Width of a category's learned embedding: fastai's rule of thumb, 1.6 n^0.56, at most
    50 (a value that rare rarely carries more information than that)."""
    return int(min(50, round(1.6 * cardinality**0.56)))


@dataclass
class Column:
    """One feature column and its fitted encoder (plain values: it round-trips JSON)."""

    name: str
    kind: str  # NUMBER, BOOLEAN, CATEGORY or LIST
    width: int = 1  # numbers in the encoded matrix (a list's length; 1 otherwise)
    # numbers, booleans, lists: per element, from the training split
    median: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)  # after imputation
    std: list[float] = field(default_factory=list)
    indicator: bool = False  # training had missing values: a was-missing input is added
    # categories
    values: list[Any] = field(default_factory=list)  # code FIRST_VALUE + i is values[i]
    dtype: str = ""  # the arrow type of the values: "string", "int64", "bool"

    @property
    def cardinality(self) -> int:
        """Codes a category column has: unknown, missing, and each training value."""
        return FIRST_VALUE + len(self.values)


@dataclass
class Encoding:
    """Every feature column's encoder, in input order, and the policies they apply."""

    columns: list[Column]
    missing: str = "error"  # data.missing
    unknown_category: str = "unknown"  # data.unknown_category
    one_hot_max: int = 16

    @property
    def width(self) -> int:
        """Numbers per row of the encoded matrix."""
        return sum(c.width for c in self.columns)

    @property
    def names(self) -> list[str]:
        """The feature columns' names, in input order."""
        return [c.name for c in self.columns]

    def numeric(self) -> bool:
        """Whether every column is a number or boolean (a request may then be a matrix)."""
        return all(c.kind in (NUMBER, BOOLEAN) for c in self.columns)

    def to_json(self) -> dict[str, Any]:
        """Plain values for ``model.json`` and the workers' payload."""
        return {
            "columns": [asdict(c) for c in self.columns],
            "missing": self.missing,
            "unknown_category": self.unknown_category,
            "one_hot_max": self.one_hot_max,
        }

    def schema(self) -> list[dict[str, Any]]:
        """The input schema a request is checked against (``/metadata``, the signature)."""
        out = []
        for c in self.columns:
            entry: dict[str, Any] = {"name": c.name, "type": c.kind}
            if c.kind == LIST:
                entry["length"] = c.width
            if c.kind == CATEGORY:
                entry["categories"] = len(c.values)
                if len(c.values) <= SCHEMA_VALUES:  # a long vocabulary: its size only
                    entry["values"] = list(c.values)
            entry["nullable"] = self.missing == "impute"
            out.append(entry)
        return out


def from_json(raw: Any, where: str = "encoding") -> Encoding:
    """An ``Encoding`` from untrusted JSON (a registry's ``model.json``), checked: a bad
    field raises ``ValueError`` naming it. Nothing in it is executed."""

    def bad(key: str, problem: str) -> ValueError:
        return ValueError(f"{where}.{key}: {problem}")

    if not isinstance(raw, dict) or not isinstance(raw.get("columns"), list):
        raise bad("columns", "expected an object with a list of columns")
    if raw.get("missing") not in ("error", "impute"):
        raise bad("missing", f"expected error or impute, got {raw.get('missing')!r}")
    if raw.get("unknown_category") not in ("unknown", "error"):
        raise bad(
            "unknown_category", f"expected unknown or error, got {raw.get('unknown_category')!r}"
        )
    one_hot = raw.get("one_hot_max")
    if type(one_hot) is not int or not 1 <= one_hot <= MAX_ONE_HOT:
        raise bad("one_hot_max", f"expected 1 to {MAX_ONE_HOT}, got {one_hot!r}")
    columns, total, values = [], 0, 0
    names = set(Column.__dataclass_fields__)
    for i, c in enumerate(raw["columns"]):
        key = f"columns[{i}]"
        if not isinstance(c, dict) or set(c) - names or not isinstance(c.get("name"), str):
            raise bad(key, "expected a column object with a name and known fields only")
        col = Column(**c)
        if col.kind not in KINDS:
            raise bad(f"{key}.kind", f"expected one of {', '.join(KINDS)}, got {col.kind!r}")
        if type(col.width) is not int or not 1 <= col.width <= MAX_LIST:
            raise bad(f"{key}.width", f"expected 1 to {MAX_LIST}, got {col.width!r}")
        if col.kind != LIST and col.width != 1:
            raise bad(f"{key}.width", f"a {col.kind} column is one number wide")
        if col.kind == CATEGORY:
            if col.dtype not in DTYPES:
                raise bad(f"{key}.dtype", f"expected one of {sorted(DTYPES)}, got {col.dtype!r}")
            if not isinstance(col.values, list):
                raise bad(f"{key}.values", "expected a list of strings or integers")
            values += len(col.values)
            if values > MAX_VALUES:
                raise bad(f"{key}.values", f"more than {MAX_VALUES:,} category values in all")
            try:  # one type, in range, no value twice: what encoding requests relies on
                vocab = pa.array(col.values, type=pa.type_for_alias(col.dtype))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as e:
                raise bad(f"{key}.values", f"not all {col.dtype} ({e})") from None
            if len(pc.unique(vocab)) != len(vocab) or vocab.null_count:
                raise bad(f"{key}.values", "a value is listed twice, or is null")
        else:
            for part in ("median", "mean", "std"):
                vals = getattr(col, part)
                if (
                    not isinstance(vals, list)
                    or len(vals) != col.width
                    or not all(isinstance(v, int | float) and math.isfinite(v) for v in vals)
                ):
                    raise bad(f"{key}.{part}", f"expected {col.width} finite numbers")
        total += col.width
        columns.append(col)
    if not columns or total > MAX_COLUMNS:
        raise bad("columns", f"expected 1 to {MAX_COLUMNS} encoded numbers, got {total}")
    wide = sum(
        (c.cardinality if len(c.values) <= one_hot else embed_dim(c.cardinality))
        if c.kind == CATEGORY
        else c.width * (2 if c.indicator else 1)
        for c in columns
    )
    if wide > MAX_COLUMNS:  # the features a request's every row becomes
        raise bad("columns", f"{wide:,} features after preprocessing, at most {MAX_COLUMNS:,}")
    return Encoding(columns, raw["missing"], raw["unknown_category"], one_hot)


def numeric_encoding(x: np.ndarray, names: list[str] | None = None) -> Encoding:
    """The encoding of a matrix of numbers (no missing values), fitted on ``x``'s rows:
    for callers that hold arrays rather than a table (benchmarks, tests, 0.1 models)."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    names = names or [f"x{i}" for i in range(x.shape[1])]
    return Encoding(
        [
            Column(n, NUMBER, median=[float(m)], mean=[float(m)], std=[float(s)])
            for n, m, s in zip(names, mean, std, strict=True)
        ]
    )


# ---------------------------------------------------------------- typing the columns


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def is_list(t: pa.DataType) -> bool:
    """A list type of any layout (list, large list, fixed-size list)."""
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def kind_of(name: str, t: pa.DataType, cfg: DataConfig) -> str:
    """NUMBER, BOOLEAN, CATEGORY or LIST for a feature column of arrow type ``t``; a type
    no encoder takes is a ``ConfigError`` naming the column."""
    inner = _value_type(t)
    if pa.types.is_dictionary(t) and (_is_text(inner) or pa.types.is_integer(inner)):
        return CATEGORY
    if _is_text(inner):
        return CATEGORY
    if name in cfg.categorical:
        if pa.types.is_integer(inner) or pa.types.is_boolean(inner):
            return CATEGORY
        raise ConfigError(
            "data.categorical",
            f"column {name!r} is {t}: only integer, boolean or text columns can be categories",
            f"remove {name!r} from data.categorical",
        )
    if pa.types.is_boolean(inner):
        return BOOLEAN
    if _is_number(inner):
        return NUMBER
    if is_list(t) and _is_number(t.value_type):
        return LIST
    raise ConfigError(
        "data.features",
        f"feature column {name!r} is {t}, which no encoder takes (numbers, booleans, text "
        "or dictionary categories, fixed-size lists of numbers)",
        f"cast it, or add {name!r} to data.exclude",
    )


def feature_names(schema: pa.Schema, cfg: DataConfig) -> list[str]:
    """The feature columns ``data.features`` / ``data.exclude`` choose, checked against the
    table: every named column exists."""
    if cfg.label not in schema.names:
        raise ConfigError(
            "data.label",
            f"column {cfg.label!r} is not in {cfg.path}",
            f"use one of: {', '.join(schema.names[:12])}",
        )
    for key in ("features", "exclude", "categorical"):
        for name in getattr(cfg, key) or []:
            if name not in schema.names:
                raise ConfigError(
                    f"data.{key}",
                    f"column {name!r} is not in {cfg.path}",
                    f"use one of: {', '.join(schema.names[:12])}",
                )
    if cfg.features is not None:
        names = [n for n in cfg.features if n not in cfg.exclude]
    else:
        names = [n for n in schema.names if n != cfg.label and n not in cfg.exclude]
    if not names:
        raise ConfigError(
            "data.features", "no feature columns are left", "name some in data.features"
        )
    return names


def kinds(schema: pa.Schema, cfg: DataConfig) -> dict[str, str]:
    """Each feature column's kind, in input order."""
    return {n: kind_of(n, schema.field(n).type, cfg) for n in feature_names(schema, cfg)}


# ---------------------------------------------------------------- values as arrays


def _plain_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array, dictionaries decoded (their values are what a request sends)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], type=col.type)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col


def numbers(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A number or boolean column as float64, NaN where null."""
    arr = _plain_array(col)
    return np.asarray(arr.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def list_numbers(name: str, col: pa.Array | pa.ChunkedArray, width: int | None) -> np.ndarray:
    """A list column as (rows, width) float64, a row of NaN where the list is null. Every list
    must have ``width`` numbers (the first one's length when None): a ``ConfigError``
    names the column and both lengths."""
    arr = _plain_array(col)
    rows = len(arr)
    if pa.types.is_fixed_size_list(arr.type):
        size = arr.type.list_size
        lengths = np.where(arr.is_null().to_numpy(zero_copy_only=False), -1, size)
    else:
        lengths = pc.list_value_length(arr).fill_null(-1).to_numpy(zero_copy_only=False)
    present = lengths >= 0
    seen = np.unique(lengths[present])
    if width is None and not len(seen):  # no list in this batch: its width is not known
        return np.full((rows, 0), np.nan)
    expected = width if width is not None else int(seen[0])
    if len(seen) > 1 or (len(seen) and seen[0] != expected) or expected == 0:
        got = sorted({int(v) for v in seen} - {expected})
        raise ConfigError(
            "data.features",
            f"list column {name!r} has lists of {got[0] if got else 0} numbers as well as "
            f"{expected}: each row needs the same length",
            "pad or cut the lists to one length, or add the column to data.exclude",
        )
    if expected > MAX_LIST:
        raise ConfigError(
            "data.features",
            f"list column {name!r} holds {expected} numbers per row, at most {MAX_LIST}",
            "downsample it, or add the column to data.exclude",
        )
    out = np.full((rows, expected), np.nan)
    if present.any():
        flat = pc.list_flatten(arr).cast(pa.float64()).to_numpy(zero_copy_only=False)
        out[present] = np.asarray(flat, dtype=np.float64).reshape(-1, expected)
    return out


def category_values(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A category column's values as a plain array (text, integers or booleans)."""
    return _plain_array(col)


def element_names(column: Column) -> list[str]:
    """Names of the encoded numbers of a column: itself, or ``name[i]`` for a list."""
    if column.kind == LIST:
        return [f"{column.name}[{i}]" for i in range(column.width)]
    return [column.name]


# ---------------------------------------------------------------- a row's hash (the stream's split)


def _string_words(values: pa.Array) -> np.ndarray:
    """A uint32 per value (crc32 of its text), the same in every batch and process."""
    uniques, inverse = np.unique(
        np.asarray(
            values.cast(pa.string()).fill_null("\0null").to_numpy(zero_copy_only=False),
            dtype=object,
        ).astype(str),
        return_inverse=True,
    )
    words = np.array([zlib.crc32(u.encode()) for u in uniques], dtype=np.uint32)
    out = words[inverse]
    out[np.asarray(values.is_null().to_numpy(zero_copy_only=False))] = NULL_WORD
    return out


def row_words(batch: pa.Table | pa.RecordBatch, kinds_by_name: dict[str, str]) -> np.ndarray:
    """Each row's values as uint32 words (a number: its float32 bits; text: a crc32), the
    input of ``data.assign_split``: the same row has the same words in any batch."""
    parts = []
    for name, kind in kinds_by_name.items():
        col = batch.column(name)
        if (
            kind == CATEGORY
            and not pa.types.is_integer(_value_type(col.type))
            and not (pa.types.is_boolean(_value_type(col.type)))
        ):
            parts.append(_string_words(category_values(col))[:, None])
            continue
        x = list_numbers(name, col, None) if kind == LIST else numbers(col)[:, None]
        w = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).copy()
        w[np.isnan(x)] = NULL_WORD
        if kind == LIST:  # one word a list (a null list: NULL_WORD), whatever the batch holds
            folded = np.full(len(w), NULL_WORD, dtype=np.uint64)
            if w.shape[1]:
                folded[:] = 2166136261
                for j in range(w.shape[1]):  # FNV-1a over the list's words
                    folded = ((folded ^ w[:, j]) * np.uint64(16777619)) & np.uint64(0xFFFFFFFF)
                folded[np.isnan(x).all(axis=1)] = NULL_WORD
            w = folded.astype(np.uint32)[:, None]
        parts.append(w)
    return np.hstack(parts) if parts else np.zeros((batch.num_rows, 0), dtype=np.uint32)


# ---------------------------------------------------------------- fitting, batch by batch


def _sample_key(x: np.ndarray) -> np.ndarray:
    """A value-keyed pseudo-random number in [0, 1): which values a median sample keeps does
    not depend on how the rows were batched."""
    w = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)
    h = (w * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(11)
    return h.astype(np.float64) / 2.0**53


@dataclass
class Moments:
    """Per element of a number/list column: rows seen, and count, sum and sum of squares of
    the present values about a shift (the first value seen: a timestamp's 1.7e12 would
    otherwise swamp its spread in float64), with a bounded sample for the median."""

    width: int
    cap: int  # sample size for the median per element (0: no median, ``missing: error``)
    rows: int = 0
    n: np.ndarray = field(init=False)
    s: np.ndarray = field(init=False)
    q: np.ndarray = field(init=False)
    shift: np.ndarray = field(init=False)
    sample: list[np.ndarray] = field(init=False)
    keep_below: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.n, self.s, self.q = np.zeros(self.width), np.zeros(self.width), np.zeros(self.width)
        self.shift = np.full(self.width, np.nan)
        self.sample = [np.empty(0) for _ in range(self.width)]
        self.keep_below = [1.0] * self.width

    def add(self, x: np.ndarray) -> None:
        """Count one batch of rows (NaN: missing)."""
        present = ~np.isnan(x)
        unset = np.isnan(self.shift) & present.any(axis=0)
        if unset.any():
            first = np.argmax(present, axis=0)
            self.shift[unset] = x[first[unset], np.flatnonzero(unset)]
        self.rows += len(x)
        self.n += present.sum(axis=0)
        centred = np.where(present, x - np.nan_to_num(self.shift), 0.0)
        self.s += centred.sum(axis=0)
        self.q += np.square(centred).sum(axis=0)
        for j in range(self.width if self.cap else 0):
            v = x[present[:, j], j]
            v = v[_sample_key(v) < self.keep_below[j]]
            merged = np.concatenate([self.sample[j], v])
            while len(merged) > self.cap:  # halve the share kept: a value-keyed sample
                self.keep_below[j] /= 2
                merged = merged[_sample_key(merged) < self.keep_below[j]]
            self.sample[j] = merged

    @property
    def missing(self) -> int:
        """Missing values over all elements."""
        return int((self.rows - self.n).sum())

    def finish(self, impute: bool) -> tuple[list[float], list[float], list[float]]:
        """(median, mean, std) per element, of the column as the network sees it: under
        ``impute`` its missing values count as the median (without a sample: the mean)."""
        k = np.nan_to_num(self.shift)
        plain = k + np.divide(self.s, self.n, out=np.zeros(self.width), where=self.n > 0)
        med = np.array(
            [float(np.median(s)) if len(s) else plain[j] for j, s in enumerate(self.sample)]
        )
        fill = (self.rows - self.n) if impute else np.zeros(self.width)
        total = self.n + fill
        d = med - k
        centred = np.divide(self.s + fill * d, total, out=np.zeros(self.width), where=total > 0)
        second = np.divide(self.q + fill * d**2, total, out=np.zeros(self.width), where=total > 0)
        std = np.sqrt(np.maximum(second - centred**2, 0.0))
        return med.tolist(), (k + centred).tolist(), std.tolist()


@dataclass
class Fitter:
    """The encoders fitted from the training rows, fed batch by batch (``add``) or in one
    piece; the same rows give the same ``Encoding`` however they were batched (counts and
    sums, a value-keyed median sample, codes ordered by count then value)."""

    cfg: DataConfig
    kinds: dict[str, str]
    rows: int = 0
    moments: dict[str, Moments] = field(default_factory=dict)
    counts: dict[str, dict[Any, int]] = field(default_factory=dict)
    category_missing: dict[str, int] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    pending_nulls: dict[str, int] = field(default_factory=dict)  # null lists of unknown width

    def add(self, batch: pa.Table | pa.RecordBatch) -> None:
        """Count one batch of training rows."""
        if batch.num_rows == 0:
            return
        self.rows += batch.num_rows
        for name, kind in self.kinds.items():
            col = batch.column(name)
            if kind == CATEGORY:
                values = category_values(col)
                self.dtypes[name] = str(values.type)
                self.category_missing[name] = self.category_missing.get(name, 0) + values.null_count
                vc = pc.value_counts(values.drop_null())
                counts = self.counts.setdefault(name, {})
                for v, c in zip(
                    vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True
                ):
                    counts[v] = counts.get(v, 0) + c
                if len(counts) > self.cfg.max_categories:
                    raise ConfigError(
                        "data.max_categories",
                        f"category column {name!r} has more than {self.cfg.max_categories:,} "
                        "distinct training values",
                        "raise data.max_categories, or add the column to data.exclude (an id "
                        "column says nothing about unseen rows)",
                    )
                continue
            x = list_numbers(name, col, None) if kind == LIST else numbers(col)[:, None]
            if x.shape[1] == 0:  # only null lists here: their width comes from other rows
                x = (
                    np.full((len(x), self.moments[name].width), np.nan)
                    if name in self.moments
                    else x
                )
                if x.shape[1] == 0:
                    self.pending_nulls[name] = self.pending_nulls.get(name, 0) + len(x)
                    continue
            m = self.moments.get(name)
            if m is None:
                m = self.moments[name] = Moments(x.shape[1], self._median_cap(x.shape[1]))
            if m.width != x.shape[1]:
                raise ConfigError(
                    "data.features",
                    f"list column {name!r} has lists of {x.shape[1]} numbers as well as "
                    f"{m.width}: each row needs the same length",
                    "pad or cut the lists to one length, or add the column to data.exclude",
                )
            m.add(x)

    def _median_cap(self, width: int) -> int:
        if self.cfg.missing != "impute":
            return 0
        elements = sum(width if k == LIST else 1 for k in self.kinds.values() if k != CATEGORY)
        return max(MIN_MEDIAN_SAMPLE, MEDIAN_VALUES // max(elements, width))

    def finish(self) -> Encoding:
        """The fitted encoders, in input order."""
        impute = self.cfg.missing == "impute"
        columns = []
        for name, kind in self.kinds.items():
            if kind == CATEGORY:
                counts = self.counts.get(name, {})
                values = sorted(counts, key=lambda v: (-counts[v], str(v)))
                columns.append(
                    Column(name, kind, values=values, dtype=self.dtypes.get(name, "string"))
                )
                continue
            m = self.moments.get(name)
            if m is None:
                raise ConfigError(
                    "data.features",
                    f"column {name!r} has no value in the training split",
                    f"add {name!r} to data.exclude",
                )
            if self.pending_nulls.get(name):  # null lists seen before the first list
                m.add(np.full((self.pending_nulls.pop(name), m.width), np.nan))
            median, mean, std = m.finish(impute)
            columns.append(
                Column(
                    name,
                    kind,
                    width=m.width,
                    median=median,
                    mean=mean,
                    std=std,
                    indicator=impute and m.missing > 0,
                )
            )
        return Encoding(columns, self.cfg.missing, self.cfg.unknown_category, self.cfg.one_hot_max)


def fit(
    batches: Iterable[pa.Table | pa.RecordBatch], cfg: DataConfig, kinds_by_name: dict[str, str]
) -> Encoding:
    """The encoders of the training rows ``batches`` hold."""
    fitter = Fitter(cfg, kinds_by_name)
    for b in batches:
        fitter.add(b)
    return fitter.finish()


# ---------------------------------------------------------------- encoding


class Unseen(ValueError):
    """A category value the encoder never saw in training, under ``unknown_category: error``
    (or a missing value under ``missing: error``): which column, which value, how many rows."""

    def __init__(self, column: str, problem: str, rows: np.ndarray) -> None:
        super().__init__(f"column {column!r}: {problem}")
        self.column, self.problem, self.rows = column, problem, rows


_VOCABS: dict[int, tuple[list[Any], pa.Array]] = {}  # id(values) -> the typed vocabulary


def _vocab(column: Column) -> pa.Array:
    """The column's values as one typed array, built once per vocabulary (a request must
    not rebuild 100,000 strings)."""
    cached = _VOCABS.get(id(column.values))
    if cached is None or cached[0] is not column.values:
        if len(_VOCABS) > 256:  # noqa: PLR2004 - a few encodings live at once
            _VOCABS.clear()
        arr = pa.array(
            column.values, type=pa.type_for_alias(column.dtype) if column.dtype else None
        )
        cached = _VOCABS[id(column.values)] = (column.values, arr)
    return cached[1]


def _codes(column: Column, values: pa.Array, unknown_error: bool) -> np.ndarray:
    vocab = _vocab(column)
    if values.type != vocab.type:
        try:
            values = values.cast(vocab.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = values.cast(pa.string())
            vocab = vocab.cast(pa.string())
    idx = pc.index_in(values, value_set=vocab)
    found = np.asarray(idx.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    null = np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    unseen = (found < 0) & ~null
    if unknown_error and unseen.any():
        rows = np.flatnonzero(unseen)
        example = values[int(rows[0])].as_py()
        raise Unseen(
            column.name,
            f"{int(unseen.sum())} rows hold a category never seen in training (e.g. {example!r})",
            rows,
        )
    return np.where(null, MISSING, np.where(found < 0, UNKNOWN, found + FIRST_VALUE))


def encode(enc: Encoding, batch: pa.Table | pa.RecordBatch) -> np.ndarray:
    """The feature columns of a table or batch as the float32 matrix the network takes:
    numbers as they are (NaN where missing), categories as codes. ``Unseen`` names a
    column whose value the policies refuse."""
    parts = []
    for c in enc.columns:
        col = batch.column(c.name)
        if c.kind == CATEGORY:
            codes = _codes(c, category_values(col), enc.unknown_category == "error")
            if enc.missing == "error" and (codes == MISSING).any():
                rows = np.flatnonzero(codes == MISSING)
                raise Unseen(c.name, f"{len(rows)} rows with null", rows)
            parts.append(codes[:, None].astype(np.float32))
            continue
        x = list_numbers(c.name, col, c.width) if c.kind == LIST else numbers(col)[:, None]
        bad = np.isinf(x).any(axis=1) | (
            np.isnan(x).any(axis=1) if enc.missing == "error" else False
        )
        if bad.any():
            rows = np.flatnonzero(bad)
            raise Unseen(c.name, f"{len(rows)} rows with NaN, null or infinity", rows)
        parts.append(x.astype(np.float32))
    return np.hstack(parts) if parts else np.zeros((batch.num_rows, 0), dtype=np.float32)
