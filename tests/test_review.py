"""`orchestrator diagnose` on a sweep written into a real MLflow SQLite store by hand (no Ray):
labels, the sweet spot, the proposed next space and its files."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from mlflow.entities import Metric, Param

from orchestrator import cli, config
from orchestrator.analysis import review
from orchestrator.core import state
from orchestrator.tracking import schema


def _sweep_on_disk(tmp: Path) -> Path:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp}/mlflow.db"
    cfg = config.from_dict(
        {
            "experiment": "rev",
            "data": {"path": str(tmp / "x.parquet")},
            "tracking": {"uri": uri},
            "train": {"epochs": 6},
            "sweep": {
                "space": {"train.weight_decay": {"type": "loguniform", "low": 1e-4, "high": 1e-1}}
            },
        }
    )
    client = MlflowClient(uri)
    exp = client.create_experiment("rev")
    parent = client.create_run(
        exp,
        tags={schema.ROLE: "sweep", "orchestrator.baseline": "loss=2.3026 accuracy=0.1000 (...)"},
    ).info.run_id
    curves = {  # weight decay -> (train, val) per epoch
        # overfit: validation turns up at epoch 3 while training goes to zero
        1.2e-4: ([1.0, 0.3, 0.05, 0.01, 0.005, 0.003], [1.0, 0.4, 0.35, 0.5, 0.6, 0.7]),
        # the sweet spot
        3e-3: ([1.0, 0.3, 0.15, 0.10, 0.08, 0.07], [1.0, 0.35, 0.2, 0.18, 0.17, 0.16]),
        # underfit: training loss stays at 82% of the baseline's
        8e-2: ([2.2, 2.0, 1.9, 1.9, 1.9, 1.9], [2.2, 2.0, 1.95, 1.9, 1.9, 1.9]),
    }
    for i, (wd, (train, val)) in enumerate(curves.items()):
        run = client.create_run(
            exp,
            tags={
                schema.ROLE: "trial",
                "mlflow.parentRunId": parent,
                "orchestrator.trial_id": f"t{i}",
            },
        ).info.run_id
        client.log_batch(
            run,
            params=[Param("train.weight_decay", str(wd))],
            metrics=[
                Metric(k, v, 0, e)
                for e, (t, v_) in enumerate(zip(train, val, strict=True), 1)
                for k, v in (("train_loss", t), ("val_loss", v_))
            ],
        )
    folder = tmp / "results" / "rev-20260101-000000"
    folder.mkdir(parents=True)
    (folder / state.STATE_FILE).write_text(
        json.dumps(
            {
                "config": config.to_dict(cfg),
                "parent_run_id": parent,
                "experiment_id": exp,
                "stamp": "20260101-000000",
                "phase": "done",
                "fingerprint": "f",
            }
        )
    )
    return folder


def test_diagnose_labels_finds_the_sweet_spot_and_extends_the_edge(
    tmp_path: Path, capsys: object
) -> None:
    folder = _sweep_on_disk(tmp_path)
    view = review.load("rev", str(tmp_path / "results"))
    labels = {t.trial_id: t.label for t in view.trials}
    assert labels == {"t0": "overfit", "t1": "good_fit", "t2": "underfit"}
    assert cli.main(["diagnose", "rev", "--storage", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "1 underfit, 1 good_fit, 1 overfit" in out
    assert "sweet spot: trial t1 (train.weight_decay=0.003)" in out
    assert "t0 overfit: validation loss was lowest at epoch 3 (0.350)" in out
    assert "try: stronger L2: raise train.weight_decay" in out
    proposed = yaml.safe_load((folder / review.NEXT_SPACE).read_text())
    wd = proposed["sweep"]["space"]["train.weight_decay"]
    assert wd["type"] == "loguniform" and wd["low"] < 3e-3 < wd["high"]
    assert (folder / "fit_map.png").read_bytes()[:4] == b"\x89PNG"


def test_diagnose_names_a_sweep_that_is_not_there(tmp_path: Path, capsys: object) -> None:
    assert cli.main(["diagnose", "nope", "--storage", str(tmp_path)]) == 2
    assert "'EXPERIMENT'" in capsys.readouterr().err  # type: ignore[attr-defined]
