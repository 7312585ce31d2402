import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, make_cfg
from orchestrator.config import ConfigError, DataConfig
from orchestrator.core import data

QUICKSTART = ROOT / "jobs/configs/quickstart.yaml"


def test_digits_export_is_the_real_data_set(digits_path: Path) -> None:
    ds = data.read(DataConfig(path=str(digits_path)))
    assert (ds.table.num_rows, len(ds.kinds)) == (1797, 64)
    assert set(ds.kinds.values()) == {"number"} and ds.kind == "multiclass"
    assert ds.classes == list(range(10))
    assert min(ds.class_counts) >= 170


@pytest.mark.parametrize(
    ("name", "rows", "columns", "classes"),
    [
        ("breast_cancer", 569, 30, 2),
        ("wine", 178, 13, 3),
        ("iris", 150, 4, 3),
        ("noisy", 2000, 20, 3),
        ("hastie", 4000, 10, 2),
    ],
)
def test_the_other_exports_are_what_they_say(
    tmp_path: Path, name: str, rows: int, columns: int, classes: int
) -> None:
    from orchestrator import cli

    out = tmp_path / f"{name}.parquet"
    assert cli.main(["data", "export", name, "--out", str(out)]) == 0
    ds = data.read(DataConfig(path=str(out)))
    assert (ds.table.num_rows, len(ds.kinds)) == (rows, columns)
    assert ds.classes == list(range(classes))
    assert all(n.replace("_", "").isalnum() for n in ds.feature_names)  # plain column names
    parser = cli.build_parser()
    export = parser._subparsers._group_actions[0].choices["data"]  # type: ignore[union-attr]
    names = export._subparsers._group_actions[0].choices["export"]._actions[1].choices
    assert list(names) == list(data.EXPORTS)  # the CLI offers exactly what data can write
    if name in ("noisy", "hastie"):  # the same rows every time: the corpus is reproducible
        again = data.read(DataConfig(path=str(data.export(name, tmp_path / "again.parquet"))))
        assert ds.fingerprint == again.fingerprint


def test_split_is_stratified_reproducible_and_disjoint(digits_path: Path) -> None:
    cfg = DataConfig(path=str(digits_path), test_fraction=0.2, val_fraction=0.15, seed=3)
    a, b = data.load_splits(cfg), data.load_splits(cfg)
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_train, b.y_train)
    assert a.sizes() == {"train": 1221, "val": 216, "test": 360}
    # stratified: each class's share of the test split is within one row of its overall share
    overall = np.bincount(np.concatenate([a.y_train, a.y_val, a.y_test])) / 1797
    assert np.all(np.abs(np.bincount(a.y_test) - overall * 360) <= 1.0)
    rows = {r.tobytes() for r in a.x_test}
    assert sum(r.tobytes() in rows for r in a.x_train) <= 5  # digits has a few duplicate images
    capped = data.load_splits(DataConfig(path=str(digits_path), max_train_rows=100))
    assert len(capped.y_train) == 100 and len(capped.y_test) == 360


def _write(tmp_path: Path, **cols) -> str:
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table(cols), p)
    return str(p)


def test_missing_file_names_data_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        data.read(DataConfig(path=str(tmp_path / "nope.parquet")))
    assert e.value.key == "data.path" and "does not exist" in e.value.problem


def test_absent_label_column_names_data_label(tmp_path: Path) -> None:
    path = _write(tmp_path, a=[1.0, 2.0, 3.0], target=[0, 1, 0])
    with pytest.raises(ConfigError) as e:
        data.read(DataConfig(path=path, label="label"))
    assert e.value.key == "data.label" and "target" in e.value.fix


def test_nan_rows_are_counted_by_column(tmp_path: Path) -> None:
    n = 12
    path = _write(
        tmp_path,
        good=[1.0] * n,
        bad=[np.nan, 1.0, np.inf] + [0.0] * (n - 3),
        label=[0, 1] * (n // 2),
    )
    with pytest.raises(ConfigError) as e:
        data.read(DataConfig(path=path))
    assert "'bad'" in e.value.problem and "2 rows" in e.value.problem


def test_a_feature_no_encoder_takes_is_refused_naming_it(tmp_path: Path) -> None:
    path = _write(tmp_path, when=[datetime.date(2024, 1, 1)] * 6, label=[0, 1] * 3)
    with pytest.raises(ConfigError) as e:
        data.read(DataConfig(path=path))
    assert e.value.key == "data.features" and "'when'" in e.value.problem
    assert "data.exclude" in e.value.fix


def test_too_few_rows_per_class_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, x=[1.0, 2.0, 3.0, 4.0], label=[0, 0, 0, 1])
    with pytest.raises(ConfigError) as e:
        data.read(DataConfig(path=path))
    assert e.value.key == "data.label" and "only 1 rows" in e.value.problem


# ---------------------------------------------------------------- the streaming path's pieces


def test_loader_choice_follows_size_unless_told() -> None:
    small, big = 10 * 2**20, 2 * 2**30
    assert data.choose_loader(DataConfig(path="x"), small) == "memory"
    assert data.choose_loader(DataConfig(path="x"), big) == "stream"
    assert data.choose_loader(DataConfig(path="x", loader="memory"), big) == "memory"
    assert data.choose_loader(DataConfig(path="x", stream_above_mb=1), small) == "stream"


def test_hash_split_is_deterministic_sized_and_keeps_duplicates_together(digits_path: Path) -> None:
    x = data.sample("digits")[0].astype(np.float32)
    cfg = DataConfig(path="x", test_fraction=0.2, val_fraction=0.25, seed=0)
    s1, s2 = data.assign_split(x, cfg), data.assign_split(x[::-1].copy(), cfg)[::-1]
    assert np.array_equal(s1, s2)  # a row's split does not depend on its neighbours
    shares = np.bincount(s1, minlength=3) / len(x)
    assert shares[data.TEST] == pytest.approx(0.2, abs=0.03)
    assert shares[data.VAL] == pytest.approx(0.8 * 0.25, abs=0.03)
    dup = np.vstack([x[:50], x[:50]])
    d = data.assign_split(dup, cfg)
    assert np.array_equal(d[:50], d[50:])
    other = data.assign_split(x, DataConfig(path="x", seed=1))
    assert (other != s1).mean() > 0.2  # the seed reshuffles


def test_scan_checks_batch_by_batch_and_summarizes(digits_path: Path, tmp_path: Path) -> None:
    summary = data.scan(DataConfig(path=str(digits_path)), batch_rows=100)
    assert sum(summary.rows.values()) == 1797 and summary.classes == list(range(10))
    assert summary.encoding.width == 64 and len(summary.encoding.columns[0].mean) == 1
    assert summary.fingerprint == data.scan(DataConfig(path=str(digits_path))).fingerprint
    n = 300
    bad = np.zeros(n)
    bad[[5, 150, 299]] = np.nan  # spread over three batches
    path = _write(tmp_path, a=np.ones(n), b=bad, label=np.arange(n) % 2)
    with pytest.raises(ConfigError) as e:
        data.scan(DataConfig(path=path), batch_rows=100)
    assert "'b'" in e.value.problem and "3 rows" in e.value.problem


def test_a_streamed_split_reads_the_rows_the_scan_counted(digits_path: Path) -> None:
    # the champion's test score on big data: the test rows, batch by batch, as the scan split them
    cfg = DataConfig(path=str(digits_path))
    summary = data.scan(cfg, batch_rows=100)
    seen = 0
    for code, name in ((data.TRAIN, "train"), (data.VAL, "val"), (data.TEST, "test")):
        parts = list(data.split_batches(cfg, summary, code, batch_rows=100))
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        assert len(x) == len(y) == summary.rows[name]
        assert (data.assign_split(x, cfg) == code).all()
        assert y.dtype == np.int64 and set(y.tolist()) <= set(range(10))
        seen += len(y)
    assert seen == 1797
    features, labels, _ = data.sample("digits")  # the labels are the rows' own
    by_row = {r.tobytes(): int(c) for r, c in zip(features.astype(np.float32), labels, strict=True)}
    assert all(by_row[r.tobytes()] == c for r, c in zip(x, y, strict=True))


def test_the_streamed_test_split_comes_in_full_batches(
    digits_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.core import prepare

    monkeypatch.setattr(prepare, "TEST_BATCH_ROWS", 64)
    cfg = make_cfg(str(digits_path), **{"data.loader": "stream"})
    prep = prepare.prepare(cfg)
    assert prep.loader == "stream" and prep.splits is None
    sizes = [len(y) for _, y in prep.test_batches()]
    assert sum(sizes) == prep.sizes["test"] and all(n == 64 for n in sizes[:-1])
    assert 0 < sizes[-1] <= 64
    whole = prepare.prepare(make_cfg(str(digits_path), **{"data.loader": "memory"}))
    assert prep.baseline.loss == pytest.approx(whole.baseline.loss, rel=0.05)


# ---------------------------------------------------------------- what a class label may be


def _label_table(tmp_path: Path, labels: pa.Array) -> str:
    """12 rows, 2 features; ``labels`` must have 12 values."""
    return _write(tmp_path, a=np.arange(12, dtype=np.float64), b=np.ones(12), label=labels)


BAD_LABELS = [
    pytest.param(
        pa.array([datetime.date(2024, 1, 1 + i % 2) for i in range(12)]), "date32", id="date"
    ),
    pytest.param(pa.array([b"x", b"y"] * 6), "binary", id="bytes"),
    pytest.param(pa.array([1.0, 2.0, np.nan] * 4), "4 rows with NaN", id="nan"),
    pytest.param(pa.array([1.0, 2.0, np.inf] * 4), "with NaN or infinity", id="inf"),
    pytest.param(pa.array([1, 2, None] * 4), "4 empty rows", id="null"),
]


@pytest.mark.parametrize(("labels", "words"), BAD_LABELS)
@pytest.mark.parametrize("reader", ["read", "scan"])
def test_labels_that_cannot_be_classes_are_refused_at_the_door_by_both_loaders(
    labels: pa.Array, words: str, reader: str, tmp_path: Path
) -> None:
    path = _label_table(tmp_path, labels)
    with pytest.raises(ConfigError) as e:
        if reader == "read":
            data.read(DataConfig(path=path))
        else:
            data.scan(DataConfig(path=path), batch_rows=5)  # the bad rows span batches
    assert e.value.key == "data.label" and "'label'" in e.value.problem
    assert words in e.value.problem


@pytest.mark.parametrize(
    ("labels", "classes"),
    [
        (pa.array([3, 7] * 6), [3, 7]),
        (pa.array(["cat", "dog"] * 6), ["cat", "dog"]),
        (pa.array([True, False] * 6), [False, True]),
        (pa.array([1.0, 2.0] * 6), [1.0, 2.0]),  # whole-number floats stay classes
        (pa.array(["cat", "dog"] * 6).dictionary_encode(), ["cat", "dog"]),  # categoricals
    ],
    ids=["int", "text", "bool", "whole-float", "dictionary"],
)
def test_int_text_bool_and_whole_float_labels_are_classes_in_both_loaders(
    labels: pa.Array, classes: list, tmp_path: Path
) -> None:
    path = _label_table(tmp_path, labels)
    assert data.read(DataConfig(path=path)).classes == classes
    summary = data.scan(DataConfig(path=path), batch_rows=5)
    assert summary.classes == classes and summary.class_counts == [6, 6]
    json.dumps(classes)  # what registration writes: the classes must be plain JSON values


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_a_date_label_exits_2_through_the_cli_before_ray_or_mlflow(
    loader: str, tmp_path: Path
) -> None:
    path = _label_table(tmp_path, BAD_LABELS[0].values[0])
    db = tmp_path / "mlflow.db"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "sweep",
            str(QUICKSTART),
            f"data.path={path}",
            f"data.loader={loader}",
            f"tracking.uri=sqlite:///{db}",
            f"sweep.storage_path={tmp_path / 'results'}",
            "sweep.num_samples=1",
            "train.epochs=1",
            "sweep.refit=false",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "'data.label'" in proc.stderr and "date32" in proc.stderr
    assert not db.exists() and not (tmp_path / "results").exists()  # nothing written
