"""The quality benchmark's helpers (the benchmark runs with `python -m jobs.bench quality`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jobs import bench, bench_quality
from orchestrator.core import features


def test_quality_is_a_benchmark() -> None:
    assert bench.BENCHMARKS["quality"] is bench.bench_quality


def test_grid_points_are_every_combination_in_order() -> None:
    points = bench_quality.grid_points({"a": [1, 2], "b.c": [[], [16]]})
    assert points == [
        {"a": 1, "b.c": []},
        {"a": 1, "b.c": [16]},
        {"a": 2, "b.c": []},
        {"a": 2, "b.c": [16]},
    ]


def test_every_case_builds_valid_configs(tmp_path) -> None:
    from orchestrator import config as config_mod

    for case in bench_quality.CASES:
        base = bench_quality._config(case, str(tmp_path / "x.parquet"), 1)
        assert base.data.seed == 1
        for values in bench_quality.grid_points(case.grid):
            config_mod.with_values(base, values)


def test_best_epoch_takes_the_later_of_equal_epochs_and_skips_nan() -> None:
    reports = [
        {"epoch": 1.0, "val_loss": 0.5},
        {"epoch": 2.0, "val_loss": 0.3},
        {"epoch": 3.0, "val_loss": float("nan")},
        {"epoch": 4.0, "val_loss": 0.3},
        {"epoch": 5.0, "val_loss": 0.4},
    ]
    assert bench_quality.best_epoch(reports, "val_loss", "min") == (0.3, 4)
    assert bench_quality.best_epoch(reports, "val_loss", "max") == (0.5, 1)
    with pytest.raises(ValueError, match="finite"):
        bench_quality.best_epoch([{"epoch": 1.0, "val_loss": float("nan")}], "val_loss", "min")


def test_tabular_pipeline_imputes_scales_and_one_hots() -> None:
    from sklearn.linear_model import LogisticRegression

    x = pd.DataFrame(
        {
            "size": [1.0, np.nan, 3.0, 4.0, 10.0, 11.0, np.nan, 13.0],
            "island": ["a", "a", None, "a", "b", "b", "b", None],
        }
    )
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    kinds = {"size": features.NUMBER, "island": features.CATEGORY}
    pipe = bench_quality.tabular_pipeline(kinds, LogisticRegression()).fit(x, y)
    assert pipe.score(x, y) == 1.0
    # a category never seen in fitting is all zeros, not an error
    unseen = pd.DataFrame({"size": [12.0], "island": ["c"]})
    assert pipe.predict(unseen).tolist() == [1]
    encoded = pipe[:-1].transform(x)
    assert encoded.shape == (8, 3)  # the scaled number, one column per island


def test_result_table_has_a_column_per_seed_and_the_mean() -> None:
    lines = bench_quality.result_table(
        [("digits", "ours", [0.98, 0.99, 1.0], "target met"), ("digits", "svc", [1, 1, 1], "")]
    )
    assert len(lines) == 3
    assert "seed 0" in lines[0] and "mean" in lines[0]
    assert "0.9900" in lines[1] and lines[1].endswith("target met")
    assert lines[2].split()[-1] == "1.0000"
