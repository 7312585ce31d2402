"""`orchestrator curve`'s pure parts: the champion's config from its tags, the points from
the trial book, the terminal table, the picture and the report's section."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_cfg
from orchestrator.analysis import plots, report
from orchestrator.core import curve, storage
from orchestrator.core.ledger import TrialRecord
from orchestrator.sweep import data_curve


def _result(falls: bool = True) -> tuple[curve.Curve, list[tuple[int, int, float]]]:
    sizes = [100, 200, 400, 800]
    points = [
        (n, k, (3 * n**-0.5 + 0.05 if falls else 0.4) + 0.002 * k) for n in sizes for k in range(3)
    ]
    return curve.analyse(points, bootstrap=50), points


def test_the_champion_config_takes_its_searched_values_but_not_its_seed() -> None:
    tags = {  # as the driver writes them: str(value)
        "orchestrator.champion.model.hidden": "[128, 128]",
        "orchestrator.champion.train.weight_decay": "1e-05",
        "orchestrator.champion.data.max_train_rows": "None",
        "orchestrator.champion.train.seed": "7",
        "orchestrator.champion_trial": "abc",  # not a value
    }
    cfg = data_curve.champion_config(make_cfg(**{"train.seed": 1}), tags)
    assert cfg.model.hidden == [128, 128]
    assert cfg.train.weight_decay == 1e-05 and isinstance(cfg.train.weight_decay, float)
    assert cfg.data.max_train_rows is None
    assert cfg.train.seed == 1


def test_each_run_gives_its_best_epoch_validation_loss() -> None:
    runs = [
        TrialRecord(
            "a",
            {"data.max_train_rows": 200, "train.seed": 2},
            history=[{"val_loss": 0.5}, {"val_loss": 0.3}, {"val_loss": 0.4}],
        ),
        TrialRecord("b", {"data.max_train_rows": 100, "train.seed": 2}, history=[]),  # no epoch
        TrialRecord(  # crashed after an epoch: not a point
            "d",
            {"data.max_train_rows": 100, "train.seed": 4},
            history=[{"val_loss": 2.0}],
            status="ERROR",
        ),
        TrialRecord(
            "c",
            {"data.max_train_rows": 100, "train.seed": 3},
            history=[{"val_loss": float("nan")}, {"val_loss": 0.6}],
        ),
    ]
    assert data_curve.curve_points(runs) == [(100, 3, 0.6), (200, 2, 0.3)]


def test_the_table_shows_sizes_predictions_and_the_verdict() -> None:
    result, _ = _result()
    lines = data_curve.table(result)
    assert len([ln for ln in lines if "predicted" in ln]) == 2
    assert "1,600" in "\n".join(lines) and lines[-1].startswith("verdict: helps")
    flat, _ = _result(falls=False)
    assert data_curve.table(flat)[-1].startswith("verdict: flat: no reliable extrapolation")


def test_the_picture_and_the_report_section(tmp_path: Path) -> None:
    folder = storage.Folder(str(tmp_path))
    assert report.curve_section(folder) == ""  # no curve measured: no section
    for falls in (True, False):
        result, points = _result(falls)
        png = plots.data_curve(result, points, "t")
        assert png[:4] == b"\x89PNG"
        folder.write_atomic(curve.PNG_NAME, png)
        folder.write_atomic(curve.JSON_NAME, json.dumps({"points": points, **result.to_json()}))
        section = report.curve_section(folder)
        assert "Would more data help?" in section and "data:image/png;base64," in section
        assert ("predicted (2x)" in section) == falls
        assert result.verdict in section


def test_a_failed_curve_run_keeps_no_password_from_its_error() -> None:
    tags = data_curve.failure_tags(RuntimeError("MLflow at http://admin:s3cret@host:5000 is down"))
    (text,) = tags.values()
    assert "s3cret" not in text and "RuntimeError" in text and "host:5000" in text
