from orchestrator.analysis import progress
from orchestrator.analysis.progress import TrialRecord
from orchestrator.core import ledger


def _rec(tid: str, losses: list[float], status: str = "TERMINATED") -> TrialRecord:
    r = TrialRecord(tid, {"train.weight_decay": 1e-4, "model.dropout": 0.25})
    for i, v in enumerate(losses):
        ledger.update(
            r,
            {
                "epoch": i + 1,
                "val_loss": v,
                "val_accuracy": 1 - v,
                "checkpoint_path": f"/ck/{tid}/{i}",
            },
            "val_loss",
            "min",
        )
    r.status = status
    return r


def test_update_keeps_the_best_epoch_and_its_checkpoint() -> None:
    r = _rec("a", [0.5, 0.3, 0.4])
    assert r.best is not None and r.best["epoch"] == 2 and r.checkpoint == "/ck/a/1"
    assert r.epochs == 3


def test_best_trial_and_progress_line() -> None:
    recs = [_rec("a", [0.5, 0.3]), _rec("b", [0.2]), _rec("c", [0.1], status="ERROR")]
    assert ledger.best_trial(recs, "val_loss", "min").trial_id == "b"  # type: ignore[union-attr]
    assert ledger.best_trial(recs, "val_accuracy", "max").trial_id == "b"  # type: ignore[union-attr]
    line = progress.progress_line(recs, 8, "val_loss", "min")
    assert "trials done 3/8" in line and "best val_loss=0.2000" in line


def test_table_marks_champion_and_early_stops() -> None:
    recs = [_rec("a", [0.5, 0.3]), _rec("b", [0.2])]
    text = progress.table(recs, ["train.weight_decay", "model.dropout"], "b", planned_epochs=2)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["trial", "train.weight_decay", "model.dropout"]
    assert lines[2].startswith("b *") and "pruned" in lines[2]
    assert "finished" in lines[3]
