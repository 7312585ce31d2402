"""`orchestrator diagnose` on a sweep written into a real MLflow SQLite store by hand (no Ray):
labels, the sweet spot, the proposed next space and its files."""

from __future__ import annotations

from pathlib import Path

import yaml

from conftest import sweep_on_disk
from orchestrator import cli
from orchestrator.analysis import review


def test_diagnose_labels_finds_the_sweet_spot_and_extends_the_edge(
    tmp_path: Path, capsys: object
) -> None:
    folder = sweep_on_disk(tmp_path)
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
