"""The driver's trial book through Tune's hooks, with fake trials and a fake MLflow client:
epochs logged once across replays, PBT moves, a pickled tuner, resumed sweeps, orphans, and
epochs a killed driver never received."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import make_cfg
from orchestrator import config
from orchestrator.core import checkpoint, diagnosis
from orchestrator.sweep import hooks, recovery
from orchestrator.sweep.book import Book
from orchestrator.sweep.context import Context


def _cfg(**over: Any) -> config.Config:
    return make_cfg(**over)


# ---------------------------------------------------------------- the driver's ledger


class FakeClient:
    """Just enough of MlflowClient for the ledger; records what was written."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.metrics: list[tuple[str, str, int]] = []
        self.values: dict[tuple[str, str, int], float] = {}
        self.ids: dict[str, str] = {}  # the outbox's placeholder -> real run ids

    def run_id(self, run_id: str | None) -> str | None:
        return self.ids.get(run_id, run_id) if run_id else run_id

    def create_run(self, exp_id: str, run_name: str, tags: dict[str, str]) -> Any:
        run_id = f"run{len(self.runs)}"
        self.runs[run_id] = {"tags": dict(tags), "status": "RUNNING"}
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id))

    def log_batch(self, run_id: str, metrics: list = (), params: list = ()) -> None:  # type: ignore[assignment]
        self.metrics += [(run_id, m.key, m.step) for m in metrics]
        self.values.update({(run_id, m.key, m.step): m.value for m in metrics})

    def log_text(self, *a: Any) -> None: ...

    def log_inputs(self, run_id: str, datasets: list) -> None:
        self.runs[run_id]["inputs"] = [d.dataset.name for d in datasets]

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str = "") -> None:
        with open(local_path, "rb") as f:
            assert f.read(4) == b"\x89PNG"
        self.runs[run_id].setdefault("artifacts", []).append(
            f"{artifact_path}/{Path(local_path).name}"
        )

    def set_tag(self, run_id: str, k: str, v: str) -> None:
        self.runs[run_id]["tags"][k] = v

    def set_terminated(self, run_id: str, status: str) -> None:
        self.runs[run_id]["status"] = status

    def update_run(self, run_id: str, status: str) -> None:
        self.runs[run_id]["status"] = status

    def search_runs(self, exp_ids: list, filter_string: str = "", **kw: Any) -> list:
        return [
            SimpleNamespace(
                info=SimpleNamespace(run_id=k, status=v["status"]),
                data=SimpleNamespace(tags=v["tags"]),
            )
            for k, v in self.runs.items()
            if f"'{v['tags'].get('orchestrator.trial_id')}'" in filter_string
            or "trial_id" not in filter_string
        ]

    def get_metric_history(self, run_id: str, key: str) -> list:
        return [
            SimpleNamespace(step=s, value=self.values[(r, k, s)])
            for r, k, s in self.metrics
            if r == run_id and k == key
        ]

    def get_run(self, run_id: str) -> Any:
        return SimpleNamespace(
            data=SimpleNamespace(tags=self.runs[run_id]["tags"]),
            info=SimpleNamespace(status=self.runs[run_id]["status"]),
        )

    def delete_run(self, run_id: str) -> None:
        del self.runs[run_id]


def _trial(tid: str, **values: Any) -> Any:
    return SimpleNamespace(trial_id=tid, config=values, last_result={})


def _result(epoch: int, val_loss: float) -> dict[str, float]:
    return {
        "epoch": float(epoch),
        "val_loss": val_loss,
        "train_loss": val_loss / 2,
        "val_accuracy": 0.9,
    }


def _callback(client: FakeClient, out: list[str], resumed: bool = False) -> hooks.BookHooks:
    """Tune's hooks over a trial book of a 4-trial sweep, as Tune calls them."""
    prep = SimpleNamespace(fingerprint="fp", sizes=None, baseline=diagnosis.baseline([50, 50]))
    ctx = Context(_cfg(), prep, client, "exp", "parent", "s", "/results", 1, out.append, resumed)  # type: ignore[arg-type]
    return hooks.BookHooks(Book(ctx, "trial", 4), "x")


def test_replayed_epochs_are_logged_once_and_restarts_say_where_they_continue() -> None:
    client, out = FakeClient(), []
    cb = _callback(client, out)
    t = _trial("t1", **{"model.dropout": 0.1})
    cb.on_trial_start(0, [], t)
    for e in (1, 2, 3):
        cb.on_trial_result(0, [], t, _result(e, 1.0 / e))
    cb.on_trial_start(0, [], t)  # a retry from the epoch-2 checkpoint
    for e in (3, 4):
        cb.on_trial_result(0, [], t, _result(e, 1.0 / e))
    steps = [s for r, k, s in client.metrics if k == "val_loss"]
    assert steps == [1, 2, 3, 4]
    assert "[sweep] trial t1 continues from epoch 2" in out
    assert cb.book.by_id["t1"].best["epoch"] == 4
    cb.on_trial_complete(0, [], t)  # the finished trial's curves, as a picture on its run
    assert client.runs["run0"]["artifacts"] == ["plots/learning_curves.png"]


def test_a_pbt_move_updates_the_values_and_tags_the_run() -> None:
    client, out = FakeClient(), []
    cb = _callback(client, out)
    cb.on_trial_result(0, [], _trial("t1", **{"model.dropout": 0.1}), _result(1, 1.0))
    cb.on_trial_result(0, [], _trial("t1", **{"model.dropout": 0.3}), _result(2, 0.5))
    assert cb.book.by_id["t1"].values == {"model.dropout": 0.3}
    assert "model.dropout=0.3" in client.runs["run0"]["tags"]["orchestrator.values.epoch2"]


def test_the_ledger_survives_a_pickle_and_a_resume_finds_the_trials_runs() -> None:
    client, out = FakeClient(), []
    cb = hooks.attach(_callback(client, out).book, "/results/x")
    try:
        assert pickle.loads(pickle.dumps(cb)) is cb  # Tune's tuner.pkl gets the live one back
    finally:
        hooks.detach("/results/x")
    with pytest.raises(RuntimeError, match="orchestrator resume"):
        pickle.loads(pickle.dumps(cb))  # never a silent no-op callback
    t1, t2 = _trial("t1", **{"model.dropout": 0.1}), _trial("t2", **{"model.dropout": 0.2})
    cb.on_trial_result(0, [], t1, _result(1, 1.0))
    cb.on_trial_complete(0, [], t1)
    cb.on_trial_result(0, [], t2, _result(1, 1.0))
    state = pickle.loads(pickle.dumps(cb.get_state()))
    cb.on_trial_result(0, [], t2, _result(2, 0.9))  # after Tune's last save: MLflow has it
    t3 = _trial("t3", **{"model.dropout": 0.3})
    cb.on_trial_result(0, [], t3, _result(1, 0.8))  # a trial Tune's saved state never knew

    again = _callback(client, out, resumed=True)
    again.set_state(state)
    assert "restored 2 trial(s): 1 finished" in out[-1]
    again.on_trial_result(0, [], t2, _result(2, 0.9))  # replayed from its checkpoint
    again.on_trial_result(0, [], t2, _result(3, 0.8))
    t2_steps = [s for r, k, s in client.metrics if r == "run1" and k == "val_loss"]
    assert t2_steps == [1, 2, 3]
    recovery.forget_orphans(again.book)  # t3's run: Tune reruns that trial under a new id
    assert set(client.runs) == {"run0", "run1"}
    assert again.book.by_id["t2"].best["epoch"] == 3  # the replayed epoch is in the ledger too


def test_a_sweep_started_by_0_1_restores_its_callbacks_under_their_old_names() -> None:
    # what 0.1 wrote into tuner.pkl: its callback as orchestrator.sweep._live_callback(name),
    # its watchdog as an orchestrator.sweep._Watchdog with its state
    old_callback = b"corchestrator.sweep\n_live_callback\n(V/results/old\ntR."
    old_watchdog = pickle.dumps(hooks.Watchdog(30.0, 12), protocol=0).replace(
        b"orchestrator.sweep.hooks\nWatchdog", b"orchestrator.sweep\n_Watchdog"
    )
    assert b"orchestrator.sweep\n_Watchdog" in old_watchdog
    cb = hooks.attach(_callback(FakeClient(), []).book, "/results/old")
    try:
        assert pickle.loads(old_callback) is cb
    finally:
        hooks.detach("/results/old")
    dog = pickle.loads(old_watchdog)
    assert isinstance(dog, hooks.Watchdog) and (dog.timeout, dog.planned) == (30.0, 12)


def test_a_resume_keeps_runs_its_ledger_knows_by_a_placeholder_id() -> None:
    # created while MLflow was away: the ledger holds the outbox's placeholder, MLflow the
    # real id; the run is the trial's own, not an orphan to delete
    client, out = FakeClient(), []
    cb = _callback(client, out)
    t1 = _trial("t1", **{"model.dropout": 0.1})
    cb.on_trial_result(0, [], t1, _result(1, 1.0))
    client.ids["offline-1"] = cb.book.by_id["t1"].run_id
    cb.book.by_id["t1"].run_id = "offline-1"
    recovery.forget_orphans(cb.book)
    assert set(client.runs) == {"run0"}


def test_epochs_that_only_mlflow_saw_before_the_kill_rejoin_the_ledger() -> None:
    # The driver logged epochs 2-3 and the trial finished, after Tune's last save (epoch 1):
    # the resumed trial reports nothing more, so the ledger must take them from MLflow.
    client, out = FakeClient(), []
    cb = _callback(client, out)
    t = _trial("t1", **{"model.dropout": 0.1})
    cb.on_trial_result(0, [], t, _result(1, 1.0))
    state = pickle.loads(pickle.dumps(cb.get_state()))
    for e in (2, 3):
        cb.on_trial_result(0, [], t, {**_result(e, 1.0 / e), "checkpoint_path": f"/ckpt/{e}"})
    again = _callback(client, out, resumed=True)
    again.set_state(state)
    rec = again.book.by_id["t1"]
    assert rec.epochs == 3 and rec.best["epoch"] == 3 and rec.checkpoint == "/ckpt/3"
    assert rec.logged == 3


def test_epochs_still_in_the_dead_drivers_outbox_reach_mlflow_on_resume() -> None:
    # Tune saved a ledger with epochs 1-3 of t1 and t2 finished; the driver died before its
    # outbox sent t1's epoch 3 and t2's end. The resume sends both from the ledger.
    client, out = FakeClient(), []
    cb = _callback(client, out)
    t1, t2 = _trial("t1", **{"model.dropout": 0.1}), _trial("t2", **{"model.dropout": 0.2})
    for e in (1, 2, 3):
        cb.on_trial_result(0, [], t1, _result(e, 1.0 / e))
    cb.on_trial_result(0, [], t2, _result(1, 0.5))
    cb.book.by_id["t2"].status = "TERMINATED"  # the ledger knew; MLflow never heard
    state = pickle.loads(pickle.dumps(cb.get_state()))
    client.metrics = [m for m in client.metrics if not (m[0] == "run0" and m[2] == 3)]
    assert client.runs["run1"]["status"] == "RUNNING"
    again = _callback(client, out, resumed=True)
    again.set_state(state)
    steps = sorted(s for r, k, s in client.metrics if r == "run0" and k == "val_loss")
    assert steps == [1, 2, 3] and again.book.by_id["t1"].logged == 3
    assert client.runs["run1"]["status"] == "FINISHED"
    assert client.runs["run1"]["tags"]["orchestrator.status"] == "pruned"  # 1 of 30 epochs


def test_epochs_a_killed_driver_never_received_are_filled_in_from_the_checkpoint(
    tmp_path: Path,
) -> None:
    # A DDP trial's worker group went on from its epoch-4 checkpoint, but the killed driver
    # had received epochs 1-2 only: 3 and 4 come from that checkpoint's history.
    client, out = FakeClient(), []
    cb = _callback(client, out)
    t = _trial("t1", **{"model.dropout": 0.1})
    for e in (1, 2):
        cb.on_trial_result(0, [], t, _result(e, 1.0 / e))
    ckpt = tmp_path / "checkpoint_5"
    ckpt.mkdir()
    (ckpt / checkpoint.HISTORY_FILE).write_text(
        json.dumps([_result(e, 1.0 / e) for e in range(1, 6)])
    )
    cb.on_trial_start(0, [], t)
    cb.on_trial_result(0, [], t, {**_result(5, 0.2), "checkpoint_path": str(ckpt)})
    steps = sorted(s for r, k, s in client.metrics if k == "val_loss")
    assert steps == [1, 2, 3, 4, 5]
    assert [h["epoch"] for h in cb.book.by_id["t1"].history] == [1, 2, 3, 4, 5]
    assert "epochs 3-4 recovered" in out[-1]
