"""The user's columns: typed, fitted on the training split only, encoded the same way in
memory, batch by batch and in a request; missing values and unseen categories."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import make_cfg
from orchestrator.config import ConfigError, DataConfig
from orchestrator.core import data, features, loop, model
from orchestrator.core import task as task_mod


def _mixed(n: int = 300, seed: int = 0, missing: bool = True) -> pa.Table:
    """Numbers (some missing), a boolean, text categories (some missing, one rare), an
    integer id as a dictionary, a fixed-size list, and a binary label."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    city = rng.choice(["oslo", "rome", "lima"], size=n).astype(object)
    a_col = a.copy()
    if missing:
        a_col[rng.random(n) < 0.1] = np.nan
        city[rng.random(n) < 0.05] = None
    return pa.table(
        {
            "a": a_col,
            "flag": rng.random(n) < 0.5,
            "city": pa.array(city, pa.string()),
            "shop": pa.array([f"s{i % 30}" for i in range(n)]).dictionary_encode(),
            "sig": pa.array(
                [list(rng.normal(size=3)) for _ in range(n)], pa.list_(pa.float32(), 3)
            ),
            "label": np.where(a > 0, "yes", "no"),
        }
    )


def _write(tmp_path: Path, table: pa.Table, name: str = "t.parquet") -> str:
    path = tmp_path / name
    pq.write_table(table, path)
    return str(path)


def test_each_column_gets_its_kind_and_the_choice_of_columns_is_checked() -> None:
    t = _mixed()
    cfg = DataConfig(path="x")
    assert features.kinds(t.schema, cfg) == {
        "a": "number",
        "flag": "boolean",
        "city": "category",
        "shop": "category",
        "sig": "list",
    }
    picked = DataConfig(path="x", features=["a", "city"], categorical=[])
    assert list(features.kinds(t.schema, picked)) == ["a", "city"]
    assert "sig" not in features.kinds(t.schema, DataConfig(path="x", exclude=["sig"]))
    with pytest.raises(ConfigError) as e:
        features.kinds(t.schema, DataConfig(path="x", features=["a", "nope"]))
    assert e.value.key == "data.features" and "'nope'" in e.value.problem
    with pytest.raises(ConfigError) as e:
        features.kinds(t.schema, DataConfig(path="x", categorical=["a"]))  # a float
    assert e.value.key == "data.categorical" and "'a'" in e.value.problem
    ints = pa.table({"zip": [1, 2, 3], "label": [0, 1, 0]})
    as_category = DataConfig(path="x", categorical=["zip"])
    assert features.kinds(ints.schema, as_category) == {"zip": "category"}


def test_categories_come_from_the_training_rows_only_and_unseen_ones_take_the_unknown_slot() -> (
    None
):
    cfg = DataConfig(path="x", missing="impute")
    kinds = {"c": features.CATEGORY}
    train = pa.table({"c": ["b", "a", "b", None, "c", "b"]})
    enc = features.fit([train], cfg, kinds)
    col = enc.columns[0]
    assert col.values == ["b", "a", "c"]  # most frequent first, ties by value
    codes = features.encode(enc, pa.table({"c": ["a", "zebra", None, "b"]}))[:, 0]
    assert codes.tolist() == [3, features.UNKNOWN, features.MISSING, 2]
    strict = features.Encoding(enc.columns, "impute", "error")
    with pytest.raises(features.Unseen) as e:
        features.encode(strict, pa.table({"c": ["a", "zebra", "zebra"]}))
    assert e.value.column == "c" and "2 rows" in e.value.problem and "'zebra'" in e.value.problem


def test_an_unseen_validation_category_under_error_is_refused_before_training(
    tmp_path: Path,
) -> None:
    n = 60
    city = ["oslo", "rome"] * (n // 2)
    city[7] = "paris"  # one row: in one split only
    path = _write(
        tmp_path,
        pa.table({"x": np.arange(n, dtype=float), "city": city, "label": [0, 1, 2] * (n // 3)}),
    )
    cfg = make_cfg(path, **{"data.unknown_category": "error"})
    for loader in ("memory", "stream"):
        c = cfg.model_copy(update={"data": cfg.data.model_copy(update={"loader": loader})})
        try:
            splits = data.load_splits(c) if loader == "memory" else data.scan(c, batch_rows=7)
        except ConfigError as e:
            assert e.key == "data.unknown_category" and "'city'" in e.problem
            assert "unknown" in e.fix
            continue
        # paris landed in training: it is a category like the others
        assert "paris" in splits.encoding.columns[1].values  # type: ignore[union-attr]


def test_missing_values_are_refused_naming_the_column_unless_imputed(tmp_path: Path) -> None:
    path = _write(tmp_path, _mixed(missing=True))
    with pytest.raises(ConfigError) as e:
        data.read(DataConfig(path=path))
    assert e.value.key == "data.path" and "'a'" in e.value.problem and "data.missing" in e.value.fix
    splits = data.load_splits(DataConfig(path=path, missing="impute"))
    enc = {c.name: c for c in splits.encoding.columns}
    train_a = data.read(DataConfig(path=path, missing="impute")).table.column("a")
    assert enc["a"].indicator and not enc["flag"].indicator
    # the median of the training rows (not all rows): between the data's quartiles
    assert -0.5 < enc["a"].median[0] < 0.5 and np.isnan(splits.x_train[:, 0]).any()
    assert train_a.null_count == 0  # NaN, not null: both count as missing
    net = model.network(make_cfg(path), splits.encoding, splits.task)
    pre = net[0]
    assert isinstance(pre, model.Preprocess)
    out = pre(torch.from_numpy(splits.x_train))
    assert torch.isfinite(out).all()
    # numbers (a, flag, sig x3), one indicator, city one-hot (3 values + 2 slots), shop
    # embedded (30 values > one_hot_max 16)
    shop_dim = features.embed_dim(32)
    assert pre.out_width == 5 + 1 + 5 + shop_dim == out.shape[1]
    missing_rows = np.isnan(splits.x_train[:, 0])
    assert torch.equal(out[:, 5], torch.from_numpy(missing_rows.astype(np.float32)))


def test_a_list_column_of_varying_length_is_refused_naming_it(tmp_path: Path) -> None:
    table = pa.table({"sig": [[1.0, 2.0], [3.0], [1.0, 1.0]] * 4, "label": [0, 1, 0] * 4})
    path = _write(tmp_path, table)
    for reader in (data.read, data.scan):
        with pytest.raises(ConfigError) as e:
            reader(DataConfig(path=path))
        assert "'sig'" in e.value.problem and "same length" in e.value.problem


def test_fitting_batch_by_batch_gives_the_encoders_of_one_piece(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(features, "MIN_MEDIAN_SAMPLE", 16)
    monkeypatch.setattr(features, "MEDIAN_VALUES", 64)  # the median is a sample's here
    t = _mixed(500).drop(["label"])
    cfg = DataConfig(path="x", missing="impute")
    kinds = features.kinds(_mixed().schema, cfg)
    whole = features.fit([t], cfg, kinds).to_json()
    shuffled = t.take(np.random.default_rng(1).permutation(t.num_rows))
    pieces = features.fit(shuffled.to_batches(max_chunksize=37), cfg, kinds).to_json()
    for a, b in zip(whole["columns"], pieces["columns"], strict=True):
        assert a["values"] == b["values"] and a["median"] == b["median"]
        assert np.allclose(a["mean"], b["mean"]) and np.allclose(a["std"], b["std"])


def test_both_loaders_fit_the_same_encoders_and_give_the_same_metrics(tmp_path: Path) -> None:
    path = _write(tmp_path, _mixed(400))
    cfg = make_cfg(path, **{"data.missing": "impute", "train.epochs": 3})
    summary = data.scan(cfg, batch_rows=50)
    ds = data.read(cfg)
    codes = data.assign_split(ds.words, cfg.data)  # the rows the stream put in each split
    idx = [np.flatnonzero(codes == c) for c in (data.TRAIN, data.VAL, data.TEST)]
    memory = data.split_at(ds, cfg, *idx)
    a, b = memory.encoding.to_json(), summary.encoding.to_json()
    for ca, cb in zip(a["columns"], b["columns"], strict=True):
        assert (ca["name"], ca["values"], ca["median"], ca["indicator"]) == (
            cb["name"],
            cb["values"],
            cb["median"],
            cb["indicator"],
        )
        assert np.allclose(ca["mean"], cb["mean"]) and np.allclose(ca["std"], cb["std"])
    streamed = {}
    for code in (data.TRAIN, data.VAL):
        parts = list(data.split_batches(cfg.data, summary, code, 64))
        streamed[code] = [
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
        ]
    assert np.allclose(streamed[data.TRAIN][0], memory.x_train, equal_nan=True)
    assert np.array_equal(streamed[data.VAL][1], memory.y_val)
    runs = []
    for x_tr, y_tr, x_va, y_va in (
        (memory.x_train, memory.y_train, memory.x_val, memory.y_val),
        (*streamed[data.TRAIN], *streamed[data.VAL]),
    ):
        s = data.Splits(x_tr, y_tr, x_va, y_va, x_va, y_va, summary.encoding, summary.task, "")
        seam = loop.LocalSeam()
        loop.train(cfg, s, seam)
        runs.append(seam.reports[-1])
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert runs[0][key] == pytest.approx(runs[1][key], rel=1e-4, abs=1e-6)


def test_the_encoding_round_trips_json_and_a_hostile_one_is_refused() -> None:
    cfg = DataConfig(path="x", missing="impute")
    t = _mixed()
    enc = features.fit([t], cfg, features.kinds(t.schema, cfg))
    assert features.from_json(enc.to_json()).to_json() == enc.to_json()
    bad = enc.to_json()
    bad["columns"][0]["width"] = 10**9
    with pytest.raises(ValueError, match=r"columns\[0\]\.width"):
        features.from_json(bad)
    bad = enc.to_json()
    bad["columns"][2]["values"] = [{"__class__": "os.system"}]
    with pytest.raises(ValueError, match=r"columns\[2\]\.values"):
        features.from_json(bad)


# ---------------------------------------------------------------- the task


def _facts(values: pa.Array) -> task_mod.LabelFacts:
    f = task_mod.LabelFacts(values.type)
    f.add(values)
    return f


@pytest.mark.parametrize(
    ("values", "kind", "classes"),
    [
        (pa.array([3, 7, 9] * 4), "multiclass", [3, 7, 9]),
        (pa.array(["no", "yes"] * 6), "binary", ["no", "yes"]),
        (pa.array([True, False] * 6), "binary", [False, True]),
        (pa.array([1.0, 2.0, 4.0] * 4), "multiclass", [1.0, 2.0, 4.0]),
        (pa.array([0.5, 1.25, 2.0] * 4), "regression", []),
        (pa.array(np.arange(30, dtype=float)), "regression", []),  # > 20 whole values
        (pa.array([[0, 1], [1, 1], [0, 0]] * 4, pa.list_(pa.int64(), 2)), "multilabel", []),
        (pa.array([[0.5, 1.0], [2.0, 3.0]] * 6, pa.list_(pa.float64(), 2)), "regression", []),
    ],
    ids=["int", "text", "bool", "whole-float", "fraction", "many-floats", "list-01", "targets"],
)
def test_auto_decides_the_task_from_the_label(values: pa.Array, kind: str, classes: list) -> None:
    said: list[str] = []
    got = task_mod.decide("auto", "label", _facts(values), said.append)
    assert got == (kind, classes)
    assert bool(said) == (values.type == pa.float64() and kind == "multiclass")  # says why


@pytest.mark.parametrize(
    ("asked", "values", "key", "words"),
    [
        ("regression", pa.array(["a", "b"] * 6), "task", "needs a numeric label"),
        ("multilabel", pa.array([0, 1] * 6), "task", "needs a list label"),
        ("binary", pa.array([0, 1, 2] * 4), "task", "two classes"),
        ("multilabel", pa.array([[0.5], [2.0]] * 6, pa.list_(pa.float64(), 1)), "task", "not all"),
        ("auto", pa.array([[0, 1], [1]] * 6), "data.label", "different lengths"),
    ],
)
def test_a_label_that_fits_no_task_or_not_the_one_asked_is_refused(
    asked: str, values: pa.Array, key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as e:
        task_mod.decide(asked, "label", _facts(values))
    assert e.value.key == key and words in e.value.problem


def test_the_loss_and_the_metric_must_fit_the_task() -> None:
    with pytest.raises(ConfigError) as e:
        task_mod.resolve_loss("huber", "multiclass")
    assert e.value.key == "train.loss"
    assert task_mod.resolve_loss("auto", "regression") == "mse"
    with pytest.raises(ConfigError) as e:
        task_mod.check_metric(
            make_cfg(**{"sweep.metric": "val_accuracy", "sweep.mode": "max"}), "regression"
        )
    assert e.value.key == "sweep.metric" and "val_rmse" in e.value.fix
    with pytest.raises(ConfigError) as e:
        task_mod.check_metric(make_cfg(**{"sweep.metric": "val_r2"}), "regression")
    assert e.value.key == "sweep.mode" and "max" in e.value.fix


def test_regression_and_multilabel_metrics_match_scikit_learn() -> None:
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    y = rng.normal(5.0, 2.0, size=(200, 2))
    task = task_mod.Task("regression", labels=2, target_mean=[5.0, 5.0], target_std=[2.0, 2.0])
    z = (y - 5.0) / 2.0
    pred_z = z + rng.normal(scale=0.3, size=z.shape)
    counts = task_mod.tally(task, torch.from_numpy(pred_z[:120]), torch.from_numpy(z[:120]))
    counts += task_mod.tally(task, torch.from_numpy(pred_z[120:]), torch.from_numpy(z[120:]))
    got = task_mod.scores(task, counts, 200)
    pred = pred_z * 2.0 + 5.0
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred))
    labels = (rng.random((150, 4)) < 0.4).astype(np.float32)
    logits = torch.from_numpy(np.where(rng.random((150, 4)) < 0.8, labels, 1 - labels) * 2 - 1)
    ml = task_mod.Task("multilabel", labels=4)
    got = task_mod.scores(ml, task_mod.tally(ml, logits, torch.from_numpy(labels)), 150)
    predicted = (logits.numpy() > 0).astype(int)
    assert got["f1"] == pytest.approx(skm.f1_score(labels, predicted, average="micro"))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(labels, predicted, average="macro"))
    assert got["subset_accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))


def test_the_trivial_predictor_is_the_yardstick_of_every_task() -> None:
    y = np.random.default_rng(0).normal(size=(500, 1))
    z = (y - y.mean()) / y.std()
    reg = task_mod.Task("regression", labels=1, target_mean=[0.0], target_std=[1.0])
    assert task_mod.baseline_loss(reg, z, []) == pytest.approx(1.0)  # the target's variance
    huber = task_mod.Task("regression", labels=1, target_mean=[0.0], target_std=[1.0], loss="huber")
    assert 0.3 < task_mod.baseline_loss(huber, z, []) < 0.5
    ml = task_mod.Task("multilabel", labels=2)
    labels = np.array([[1, 0]] * 50 + [[0, 0]] * 50, dtype=np.float32)
    assert task_mod.baseline_loss(ml, labels, []) == pytest.approx(np.log(2) / 2, rel=1e-6)


def test_regression_trains_on_standardized_targets_and_reports_in_their_units(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = 1000.0 + 300.0 * x[:, 0] - 100.0 * x[:, 1] + rng.normal(scale=10.0, size=400)
    path = _write(tmp_path, pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "price": y}))
    cfg = make_cfg(path, **{"data.label": "price", "train.epochs": 25, "train.lr": 0.01})
    splits = data.load_splits(cfg)
    assert splits.task.kind == "regression" and splits.y_train.dtype == np.float32
    assert abs(float(splits.y_train.mean())) < 0.2  # standardized
    seam = loop.LocalSeam()
    loop.train(cfg, splits, seam)
    last = seam.reports[-1]
    assert last["val_r2"] > 0.9 and 5.0 < last["val_rmse"] < 100.0  # dollars, not z-scores
    served = model.Outputs(model.network(cfg, splits.encoding, splits.task), splits.task)
    assert served(torch.zeros(2, 3)).shape == (2, 1)


def test_augmentation_noise_moves_numbers_never_category_codes(tmp_path: Path) -> None:
    path = _write(tmp_path, _mixed())
    cfg = make_cfg(path, **{"data.missing": "impute", "train.augment": True})
    splits = data.load_splits(cfg)
    pre = model.network(cfg, splits.encoding, splits.task)[0]
    assert isinstance(pre, model.Preprocess)
    scale = pre.noise_scale()
    x = torch.from_numpy(splits.x_train)
    noisy = loop.augment(x, cfg, scale)
    codes = [2, 3]  # city and shop: raw columns 2 and 3 (a, flag before them)
    assert torch.equal(noisy[:, codes], x[:, codes]) and (scale[codes] == 0).all()
    moved = ~torch.isnan(x[:, 0])
    assert not torch.equal(noisy[moved, 0], x[moved, 0])
    assert torch.isnan(noisy[~moved, 0]).all()  # still missing: imputed after the noise


def test_an_image_stored_as_one_list_column_trains_a_cnn(tmp_path: Path) -> None:
    x, y, _ = data.sample("digits")
    table = pa.table(
        {"image": pa.array(x[:600].tolist(), pa.list_(pa.float32(), 64)), "label": y[:600]}
    )
    path = _write(tmp_path, table)
    cfg = make_cfg(
        path,
        **{"model.kind": "cnn", "model.hidden": [8], "data.shape": [1, 8, 8], "train.epochs": 3},
    )
    splits = data.load_splits(cfg)
    assert splits.encoding.names == ["image"] and splits.x_train.shape[1] == 64
    seam = loop.LocalSeam()
    loop.train(cfg, splits, seam)
    losses = [r["val_loss"] for r in seam.reports]
    assert losses[-1] < losses[0] and seam.reports[-1]["val_accuracy"] > 0.2  # chance: 0.1
    with pytest.raises(ConfigError) as e:  # a shape that is not the list's
        from orchestrator.core import prepare

        prepare.prepare(make_cfg(path, **{"model.kind": "cnn", "data.shape": [1, 4, 4]}))
    assert e.value.key == "data.shape" and "64 per row" in e.value.problem


def test_a_searched_training_cap_keeps_the_encoders_and_task_of_the_whole_split(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    table = _mixed(400).drop(["label"]).append_column("label", pa.array(rng.normal(size=400)))
    path = _write(tmp_path, table)
    whole = data.load_splits(make_cfg(path, **{"data.missing": "impute"}))
    capped = data.load_splits(
        make_cfg(path, **{"data.missing": "impute", "data.max_train_rows": 30})
    )
    assert len(capped.y_train) == 30 and len(whole.y_train) > 200
    # the champion is rebuilt with the sweep's one encoding: every trial must share it
    assert capped.encoding.to_json() == whole.encoding.to_json()
    assert capped.task.to_json() == whole.task.to_json()


def test_streamed_batches_without_training_rows_or_lists_are_fine(tmp_path: Path) -> None:
    n = 60
    sig = [None if i % 4 else [float(i), 1.0] for i in range(n)]  # 3 rows in 4: null lists
    table = pa.table(
        {
            "x": np.arange(n, dtype=float),
            "sig": pa.array(sig, pa.list_(pa.float64())),
            "label": [0, 1, 2] * (n // 3),
        }
    )
    path = _write(tmp_path, table)
    cfg = make_cfg(path, **{"data.missing": "impute"})
    summary = data.scan(cfg, batch_rows=3)  # many batches hold no list, or no training row
    sig_col = summary.encoding.columns[1]
    assert sig_col.width == 2 and sig_col.indicator
    assert summary.encoding.to_json() == data.scan(cfg, batch_rows=60).encoding.to_json()


def test_a_large_offset_keeps_its_spread() -> None:
    t = pa.table({"ms": 1.7e12 + np.random.default_rng(0).normal(0, 1000, size=5000)})
    enc = features.fit([t], DataConfig(path="x"), {"ms": features.NUMBER})
    assert enc.columns[0].std[0] == pytest.approx(np.std(t.column("ms").to_numpy()), rel=1e-3)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"one_hot_max": 10**12}, "one_hot_max: expected 1 to 1024"),
        ({"columns.2.values": ["oslo", "oslo", "rome"]}, "listed twice"),
        ({"columns.2.dtype": "int64"}, "columns[2].values: not all int64"),
        ({"columns.2.dtype": "object"}, "columns[2].dtype: expected one of"),
    ],
)
def test_an_encoding_that_would_exhaust_or_break_a_server_is_refused(
    change: dict, words: str
) -> None:
    cfg = DataConfig(path="x", missing="impute")
    t = _mixed()
    raw = features.fit([t], cfg, features.kinds(t.schema, cfg)).to_json()
    for key, value in change.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[leaf] = value
    with pytest.raises(ValueError) as e:
        features.from_json(raw)
    assert words in str(e.value)
