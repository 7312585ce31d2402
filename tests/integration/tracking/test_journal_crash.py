"""`orchestrator tracking replay` killed (SIGKILL, no clean-up) at several points, then run
again, into a real MLflow store: each run is created once, each epoch logged once, the
champion registered once. The points are forced with ``outbox.KILL_AFTER``: the replay dies
right after its Nth write reached MLflow, before the journal says so. The journal in a local
folder, and on S3 (moto's server on loopback), where it is objects, not lines of a file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from conftest import ROOT, free_port, make_cfg, numeric_spec
from orchestrator.core import model, storage
from orchestrator.tracking import champions, outbox, registry

pytestmark = pytest.mark.slow


def _journal_written_while_away(
    folder: storage.Folder,
    uri: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[str, str, str]:
    """What a sweep keeps when MLflow goes away after its sweep run was made: two trials'
    runs, two epochs each (interleaved, so each is its own call), their ends, the sweep's
    end, and the champion. (experiment id, sweep run id, the champion trial's placeholder)"""
    store = MlflowClient(uri)
    exp = store.create_experiment("crash")
    parent = store.create_run(exp, run_name="sweep-crash").info.run_id
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # nothing listens there
    box = outbox.Outbox(MlflowClient(f"http://127.0.0.1:{free_port()}"), out=lambda _: None)
    box.use_journal(folder)
    trials = [
        box.create_run(exp, run_name=f"trial-{t}", tags={"mlflow.parentRunId": parent}).info.run_id
        for t in "ab"
    ]
    assert all(t.startswith(outbox.PLACEHOLDER) for t in trials)
    for epoch in (1, 2):
        for t in trials:
            box.log_batch(t, metrics=[Metric("val_loss", 1 / epoch, 1000 * epoch, epoch)])
    box.set_tag(trials[0], "orchestrator.best_checkpoint", "/somewhere")
    for t in trials:
        box.set_terminated(t, status="FINISHED")
    box.set_terminated(parent, status="FINISHED")
    assert len(outbox.load_journal(folder)) == 10
    cfg = make_cfg(
        "x.parquet", **{"model.hidden": [4], "tracking.register_as": "crash", "tracking.uri": uri}
    )
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    champions.keep_champion(
        folder,
        cfg,
        parent,
        model.from_data(cfg, x, num_classes=3),
        x,
        numeric_spec(cfg, x, [0, 1, 2]),
        {"test_accuracy": 0.75},
        trials[0],
    )
    return exp, parent, trials[0]


def _replay(
    folder: storage.Folder, uri: str, kill_after: int | None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != outbox.KILL_AFTER}
    if kill_after is not None:
        env[outbox.KILL_AFTER] = str(kill_after)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "tracking",
            "replay",
            str(folder),
            "--tracking-uri",
            uri,
            "--patience",
            "5",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# Each replay picks up where the last one died, and dies N writes further on:
KILLS = [
    1,  # right after creating trial a's run: not yet in the ids file, nor marked sent
    2,  # trial b created (a found by its marker, not made again), a's epoch 1 sent
    8,  # epoch 1 of a again, ..., the sweep run's end: the journal's last write, not yet gone
    3,  # that end again, the champion's model logged, version 1 registered, not yet recorded
    2,  # version 1 found by its marker and recorded; champion alias moved, sweep run tagged
]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_replay_killed_at_any_point_then_run_again_writes_everything_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, request: pytest.FixtureRequest
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    folder = storage.Folder(str(tmp_path / "sweep"))
    if where == "s3":
        import boto3

        request.getfixturevalue("moto_s3")  # AWS_* point at it, for the replays too
        boto3.client("s3").create_bucket(Bucket="journal")
        folder = storage.Folder("s3://journal/sweep")
    exp, parent, placeholder = _journal_written_while_away(folder, uri, monkeypatch)
    store = MlflowClient(uri)

    def runs() -> list:
        return store.search_runs([exp], max_results=100)

    for i, n in enumerate(KILLS):
        rep = _replay(folder, uri, n)
        assert rep.returncode == -signal.SIGKILL, (i, n, rep.stdout[-2000:], rep.stderr[-3000:])
        if i == 0:  # made, but nothing on disk says so: only its marker tag can tell
            assert len(runs()) == 2 and not folder.is_file(outbox.IDS)
        if i == 3:  # registered, but champion.json does not know it yet
            kept = json.loads(folder.read_text(f"{champions.PENDING}/{champions.CHAMPION_FILE}"))
            assert "version" not in kept and len(store.search_model_versions("name = 'crash'")) == 1
    rep = _replay(folder, uri, None)
    assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-3000:]
    assert "champion registered as models:/crash@champion (version 1)" in rep.stdout

    trials = [r for r in runs() if r.info.run_id != parent]
    assert len(runs()) == 3 and sorted(r.info.run_name for r in trials) == ["trial-a", "trial-b"]
    for r in runs():
        assert r.info.status == "FINISHED"
    for r in trials:  # each epoch once
        history = store.get_metric_history(r.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == [1, 2]
        assert r.data.tags["mlflow.parentRunId"] == parent
    champion_trial = outbox.load_ids(folder)[placeholder]
    versions = store.search_model_versions("name = 'crash'")
    assert [str(v.version) for v in versions] == ["1"]  # registered once
    assert registry.champion_version(store, "crash") == "1"
    assert versions[0].tags["trial_run_id"] == champion_trial
    assert store.get_run(champion_trial).data.tags["orchestrator.champion"] == "true"
    assert store.get_run(champion_trial).data.tags["orchestrator.best_checkpoint"]
    assert store.get_run(parent).data.tags["orchestrator.champion_version"] == "1"
    assert len(store.get_metric_history(parent, "test_accuracy")) == 1
    assert folder.read_lines(outbox.JOURNAL) == b"" and not folder.is_dir(champions.PENDING)
