"""The labels on real training (digits, a real local Ray, a real MLflow SQLite store): the
three corners of the bias/variance chart and an overfit run whose validation minimum comes
early (the curve version 0.1 called underfit), each from one `train` run."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT
from orchestrator import config, sweep
from orchestrator.execution import runtime

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    import ray

    os.environ["RAY_ADDRESS"] = "local"
    runtime.ensure_env()
    yield
    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)


@pytest.mark.parametrize(
    ("label", "over"),
    [
        # a wide network, no dropout, no weight decay, 100 training rows: memorizes them
        (
            "overfit",
            [
                "model.hidden=[1024, 1024]",
                "model.dropout=0",
                "train.weight_decay=0",
                "data.max_train_rows=100",
                "train.lr=0.003",
                "train.epochs=40",
            ],
        ),
        # validation loss lowest by epoch 5 of 60, then rising while training goes to zero
        (
            "early-minimum",
            [
                "model.hidden=[512, 512]",
                "model.dropout=0",
                "train.weight_decay=0",
                "data.max_train_rows=150",
                "train.lr=0.003",
                "train.epochs=60",
            ],
        ),
        # four units under very strong weight decay: cannot fit even the training rows
        ("underfit", ["model.hidden=[4]", "train.weight_decay=20", "train.epochs=20"]),
        # a sensible middle
        (
            "good_fit",
            [
                "model.hidden=[256]",
                "model.dropout=0.2",
                "train.weight_decay=0.001",
                "train.epochs=20",
            ],
        ),
    ],
)
def test_the_three_corners_of_the_chart_are_labelled(
    ray_runtime: None, digits_path: Path, tmp_path: Path, label: str, over: list[str]
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = config.load(
        ROOT / "jobs/configs/quickstart.yaml",
        [
            f"data.path={digits_path}",
            f"tracking.uri={uri}",
            "scaling.num_workers=1",
            "scaling.cpus_per_worker=1",
            f"sweep.storage_path={tmp_path}/results",
            f"experiment=diag-{label}",
            *over,
        ],
    )
    lines: list[str] = []
    summary = sweep.train_run(cfg, out=lines.append)
    expected = "overfit" if label == "early-minimum" else label
    assert summary.record.diagnosis == expected, summary.record.diagnosis_reasons
    tags = MlflowClient(uri).get_run(summary.run_id).data.tags
    assert tags["orchestrator.diagnosis"] == expected
    reasons = tags["orchestrator.diagnosis_reasons"]
    assert "baseline" in reasons
    if label == "early-minimum":
        found = re.search(r"validation loss was lowest at epoch (\d+) .* and rose", reasons)
        assert found and int(found.group(1)) <= 10, reasons
        assert "training accuracy reached 100%" in reasons
    if label != "good_fit":
        assert "train.weight_decay" in tags["orchestrator.diagnosis_fixes"]
