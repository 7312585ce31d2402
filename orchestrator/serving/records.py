"""Named records in, the model's encoded matrix out: the shapes MLflow's scoring server
accepts (``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``), each field
checked against the model's input schema, and a 422 naming the row and the column for the
first value that does not fit (a missing column, a wrong type, a null the model cannot
impute, a category the model refuses)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from orchestrator.core import features
from orchestrator.core.features import Column, Encoding

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
FLOAT32_MAX = float(np.finfo(np.float32).max)


class BadRecords(ValueError):
    """A body whose records do not fit the model's inputs; ``message`` names the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def kind_of(v: Any) -> str:
    """A JSON value's kind in words, for the 422's message (``a string``, ``null``)."""
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def rows_of(doc: dict[str, Any], max_rows: int) -> tuple[str, list[dict[str, Any]]]:
    """(the format's key, one dict per row) from a body in one of ``FORMATS``."""
    key = next((k for k in FORMATS if k in doc), None)
    if key is None:
        raise BadRecords(
            422, f"body: one of features, {', '.join(FORMATS)} is required (see /metadata)"
        )
    value = doc[key]
    if key == "dataframe_split":
        if not isinstance(value, dict) or not isinstance(value.get("columns"), list):
            raise BadRecords(422, "dataframe_split: an object with columns and data")
        data = value.get("data")
        if not isinstance(data, list):
            raise BadRecords(422, "dataframe_split.data: a list of rows")
        _count(key, data, max_rows)
        columns = value["columns"]
        if not all(isinstance(c, str) for c in columns):
            raise BadRecords(422, "dataframe_split.columns: a list of column names (strings)")
        out = []
        for i, row in enumerate(data):
            if not isinstance(row, list) or len(row) != len(columns):
                raise BadRecords(422, f"dataframe_split.data[{i}]: a list of {len(columns)} values")
            out.append(dict(zip(columns, row, strict=True)))
        return key, out
    if key == "inputs" and isinstance(value, dict):  # columns of values
        lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise BadRecords(422, "inputs: an object of equally long lists, one per column")
        n = lengths.pop()
        _count(key, range(n), max_rows)
        return key, [{c: v[i] for c, v in value.items()} for i in range(n)]
    if not isinstance(value, list):
        raise BadRecords(422, f"{key}: a list of records")
    _count(key, value, max_rows)
    for i, row in enumerate(value):
        if not isinstance(row, dict):
            raise BadRecords(422, f"{key}[{i}]: a record (an object of column: value)")
    return key, value


def _count(key: str, rows: Any, max_rows: int) -> None:
    if len(rows) == 0:
        raise BadRecords(422, f"{key}: no rows")
    if len(rows) > max_rows:
        raise BadRecords(413, f"{key}: {len(rows)} rows, at most {max_rows} per request")


def _number(where: str, v: Any, nullable: bool) -> float:
    if v is None:
        if nullable:
            return math.nan
        raise BadRecords(422, f"{where}: a number is required (this model does not impute)")
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise BadRecords(422, f"{where}: a number, not {kind_of(v)}")
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f) or abs(f) > FLOAT32_MAX:
        raise BadRecords(422, f"{where}: {v!r} is not a finite float32")
    return f


def _column(key: str, c: Column, rows: list[dict[str, Any]], nullable: bool) -> pa.Array:
    """One column's values from the records, checked against its kind."""
    values: list[Any] = []
    for i, row in enumerate(rows):
        where = f"{key}[{i}].{c.name}"
        if c.name not in row:
            raise BadRecords(422, f"{where}: missing (the model takes {c.kind} {c.name!r})")
        v = row[c.name]
        if c.kind == features.NUMBER:
            values.append(_number(where, v, nullable))
        elif c.kind == features.BOOLEAN:
            if v is None and nullable:
                values.append(math.nan)
            elif isinstance(v, bool) or v in (0, 1):
                values.append(float(v))
            else:
                raise BadRecords(422, f"{where}: true or false, not {kind_of(v)}")
        elif c.kind == features.LIST:
            if v is None and nullable:
                values.append([math.nan] * c.width)
                continue
            if not isinstance(v, list) or len(v) != c.width:
                raise BadRecords(422, f"{where}: a list of {c.width} numbers")
            values.append([_number(f"{where}[{j}]", e, nullable) for j, e in enumerate(v)])
        else:
            want, ok = _category_value(c, v)
            if not ok:
                raise BadRecords(422, f"{where}: {want} category, not {kind_of(v)}")
            values.append(v)
    if c.kind == features.LIST:
        return pa.array(values, type=pa.list_(pa.float64(), c.width))
    if c.kind == features.CATEGORY:
        kind = {"string": pa.string(), "large_string": pa.string(), "bool": pa.bool_()}
        return pa.array(values, type=kind.get(c.dtype, pa.int64()))
    return pa.array(values, type=pa.float64())


INT64 = (-(2**63), 2**63)  # what an integer category may be (Arrow's int64)


def _category_value(c: Column, v: Any) -> tuple[str, bool]:
    """What a category of this column is, in words, and whether ``v`` is one (or null)."""
    if c.dtype in ("string", "large_string"):
        return "a string", v is None or isinstance(v, str)
    if c.dtype == "bool":
        return "a true/false", v is None or isinstance(v, bool)
    fits = isinstance(v, int) and not isinstance(v, bool) and INT64[0] <= v < INT64[1]
    return "an int64 integer", v is None or fits


def encode(enc: Encoding, doc: dict[str, Any], max_rows: int) -> np.ndarray:
    """The records of a body as the encoded float32 matrix the model takes."""
    key, rows = rows_of(doc, max_rows)
    nullable = enc.missing == "impute"
    table = pa.table({c.name: _column(key, c, rows, nullable) for c in enc.columns})
    try:
        return features.encode(enc, table)
    except features.Unseen as e:
        row = int(e.rows[0])
        value = rows[row].get(e.column)
        problem = (
            f"category {value!r} was never seen in training"
            if "never seen" in e.problem
            else f"{value!r} is not allowed ({e.problem})"
        )
        raise BadRecords(422, f"{key}[{row}].{e.column}: {problem}") from None
