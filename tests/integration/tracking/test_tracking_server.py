"""Sweeps against a real `mlflow server` over HTTP (started with `orchestrator tracking serve`
on a free loopback port), and the server going away mid-sweep: training goes on, every
epoch reaches MLflow exactly once, either when the server is back during the sweep or by
`orchestrator tracking replay` after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT, free_port, numeric_spec
from orchestrator.tracking import champions

pytestmark = pytest.mark.slow


class Server:
    """`orchestrator tracking serve` in its own process group (mlflow server forks workers),
    stopped by that group's id: only what this test started."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port = tmp, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "tracking",
                "serve",
                "--port",
                str(self.port),
                "--backend",
                f"sqlite:///{self.tmp}/server.db",
                "--artifacts",
                str(self.tmp / "artifacts"),
                "--workers",
                "1",
            ],
            cwd=self.tmp,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            assert self.proc.poll() is None, "mlflow server exited"
            time.sleep(0.5)
        raise AssertionError("mlflow server did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def server(tmp_path: Path):  # noqa: ANN201
    s = Server(tmp_path)
    s.start()
    yield s
    s.stop()


def _sweep_args(tmp: Path, digits: Path, uri: str, name: str, *over: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "sweep",
        str(ROOT / "jobs/configs/quickstart.yaml"),
        f"data.path={digits}",
        f"tracking.uri={uri}",
        f"sweep.storage_path={tmp}/results",
        f"experiment={name}",
        f"tracking.register_as={name}",
        "model.hidden=[64]",
        *over,
    ]


def _runs(uri: str, name: str) -> tuple[object, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return client, (client.search_runs([exp.experiment_id], max_results=200) if exp else [])


def _steps(client: object, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "val_loss"))  # type: ignore[attr-defined]


def test_four_concurrent_two_worker_trials_make_exactly_one_run_each(
    server: Server, digits_path: Path, tmp_path: Path
) -> None:
    proc = subprocess.run(
        _sweep_args(
            tmp_path,
            digits_path,
            server.uri,
            "four",
            "sweep.num_samples=4",
            "sweep.max_concurrent=4",
            "scaling.num_workers=2",
            "scaling.cpus_per_worker=0.25",
            "train.epochs=2",
            "sweep.scheduler=fifo",
            "sweep.refit=false",
        ),
        cwd=tmp_path,
        env={**os.environ, "RAY_ADDRESS": "local"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(proc.stdout[-4000:], proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 at a time" in proc.stdout
    client, runs = _runs(server.uri, "four")
    trials = [r for r in runs if r.data.tags["orchestrator.role"] == "trial"]
    sweeps = [r for r in runs if r.data.tags["orchestrator.role"] == "sweep"]
    assert len(sweeps) == 1 and len(trials) == 4 and len(runs) == 5
    # they ran at once: every trial started before any finished
    assert max(r.info.start_time for r in trials) < min(r.info.end_time for r in trials)
    for r in trials:  # 2 DDP workers, one writer: each epoch once
        assert _steps(client, r.info.run_id) == [1, 2]
        assert r.data.tags["mlflow.parentRunId"] == sweeps[0].info.run_id
    # artifacts go through the server (proxied), not to a path the client would need
    parent = sweeps[0]
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "plots")} == {  # type: ignore[attr-defined]
        "plots/regularization_map.png",
        "plots/parallel_coordinates.png",
        "plots/fit_map.png",
    }
    assert (tmp_path / "artifacts").is_dir()
    version = client.get_model_version_by_alias("four", "champion")  # type: ignore[attr-defined]
    assert version.run_id == parent.info.run_id


def _watch(proc: subprocess.Popen, lines: list[str]) -> threading.Thread:
    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def _wait(cond, what: str, timeout: float = 300) -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


EPOCHS, TRIALS = 30, 3


def _outage_sweep(
    server: Server, digits: Path, tmp: Path, name: str, drain: float, lines: list[str]
) -> subprocess.Popen:
    proc = subprocess.Popen(
        _sweep_args(
            tmp,
            digits,
            server.uri,
            name,
            f"sweep.num_samples={TRIALS}",
            "sweep.max_concurrent=1",
            "scaling.num_workers=1",
            "scaling.cpus_per_worker=1",
            f"train.epochs={EPOCHS}",
            "sweep.scheduler=fifo",
            f"tracking.drain_timeout={drain}",
        ),
        cwd=tmp,
        env={**os.environ, "RAY_ADDRESS": "local"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _watch(proc, lines)

    def some_epochs_logged() -> bool:
        assert proc.poll() is None, "".join(lines)[-3000:]
        try:
            client, runs = _runs(server.uri, name)
            return any(len(_steps(client, r.info.run_id)) >= 2 for r in runs)
        except Exception:  # noqa: BLE001 - not up yet
            return False

    _wait(some_epochs_logged, "the first epochs in MLflow")
    server.stop()  # mid-sweep: the first trial is still training
    return proc


def _all_epochs_once(server: Server, name: str) -> None:
    client, runs = _runs(server.uri, name)
    trials = [r for r in runs if r.data.tags["orchestrator.role"] == "trial"]
    assert len(trials) == TRIALS and len(runs) == TRIALS + 1
    for r in runs:
        assert r.info.status == "FINISHED"
    for r in trials:
        assert _steps(client, r.info.run_id) == list(range(1, EPOCHS + 1))
    assert client.get_model_version_by_alias(name, "champion")  # type: ignore[attr-defined]


def test_a_server_that_comes_back_mid_sweep_gets_every_epoch_once(
    server: Server, digits_path: Path, tmp_path: Path
) -> None:
    lines: list[str] = []
    proc = _outage_sweep(server, digits_path, tmp_path, "back", 120, lines)
    _wait(lambda: any("MLflow unreachable" in x for x in lines), "the outage noticed")
    time.sleep(2)  # training goes on meanwhile
    server.start()
    assert proc.wait(timeout=600) == 0, "".join(lines)[-3000:]
    out = "".join(lines)
    assert "MLflow answers again" in out and "NOT registered" not in out
    _all_epochs_once(server, "back")


def test_a_server_away_until_the_end_is_caught_up_by_replay(
    server: Server, digits_path: Path, tmp_path: Path
) -> None:
    lines: list[str] = []
    proc = _outage_sweep(server, digits_path, tmp_path, "replay", 1, lines)
    assert proc.wait(timeout=600) == 4, "".join(lines)[-3000:]  # trained; tracking pending
    out = "".join(lines)
    assert "NOT registered yet" in out and "test accuracy" in out
    folder = out.split("orchestrator tracking replay ")[-1].split()[0]
    assert (Path(folder) / "mlflow-journal.jsonl").is_file()
    server.start()
    rep = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "tracking", "replay", folder],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
    assert "champion registered" in rep.stdout
    _all_epochs_once(server, "replay")
    assert not (Path(folder) / "mlflow-journal.jsonl").exists()


def test_a_sweep_refuses_to_start_without_its_tracking_server(
    digits_path: Path, tmp_path: Path
) -> None:
    proc = subprocess.run(
        _sweep_args(tmp_path, digits_path, f"http://127.0.0.1:{free_port()}", "nobody"),
        cwd=tmp_path,
        env={**os.environ, "RAY_ADDRESS": "local"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "'tracking.uri'" in proc.stderr
    assert "orchestrator tracking serve" in proc.stderr
    assert not (tmp_path / "results").exists()  # nothing started, nothing written


class StopsTheServerAfterCreating:
    """The real client, but the real server is stopped right after it made a run (armed
    once): the outage that comes between a kept run's creation and its writes."""

    def __init__(self, client: object, server: Server) -> None:
        self.client, self.server, self.armed = client, server, False

    def __getattr__(self, name: str) -> object:
        return getattr(self.client, name)

    def create_run(self, *args: object, **kw: object) -> object:
        run = self.client.create_run(*args, **kw)  # type: ignore[attr-defined]
        if self.armed:
            self.armed = False
            self.server.stop()
        return run


def test_a_server_that_flaps_mid_replay_still_gets_every_run_epoch_and_champion_once(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Away, back just long enough for a kept run to be created, away again; the driver
    ends. Its writes name the run by a placeholder only the dead driver knew in memory: the
    replay must still send them (it used to fail on every try, "Run 'offline-...' not
    found"), and register the champion kept under that placeholder once."""
    import mlflow
    import numpy as np
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from conftest import make_cfg
    from orchestrator.core import model
    from orchestrator.tracking import outbox

    for k, v in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")):
        monkeypatch.setenv(k, v)  # as the sweep sets them: an outage shows in seconds
    monkeypatch.setattr(outbox, "FIRST_PAUSE", 0.2)  # retry soon, not in 2 s
    mlflow.set_tracking_uri(server.uri)
    client = MlflowClient(server.uri)
    exp = client.create_experiment("flap")
    wrapped = StopsTheServerAfterCreating(client, server)
    box = outbox.Outbox(wrapped, out=print)
    folder = tmp_path / "sweep"
    box.use_journal(folder)
    parent = box.create_run(exp, run_name="sweep-flap").info.run_id
    server.stop()
    trial = box.create_run(exp, run_name="trial-a", tags={"mlflow.parentRunId": parent}).info.run_id
    assert trial.startswith(outbox.PLACEHOLDER)
    for epoch in (1, 2, 3):
        box.log_batch(trial, metrics=[Metric("val_loss", 1 / epoch, 1000 * epoch, epoch)])
    box.set_terminated(trial, status="FINISHED")
    box.set_terminated(parent, status="FINISHED")
    server.start()
    wrapped.armed = True
    assert not box.drain(block=True, patience=3)  # the run made, then away again
    assert box.run_id(trial) != trial and len(box.queue) == 5  # its writes: placeholder
    cfg = make_cfg(
        "x.parquet",
        **{"model.hidden": [4], "tracking.register_as": "flap", "tracking.uri": server.uri},
    )
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    champions.keep_champion(
        folder,
        cfg,
        parent,
        model.from_data(cfg, x, num_classes=3),
        x,
        numeric_spec(cfg, x, [0, 1, 2]),
        {"test_accuracy": 0.5},
        trial,
    )
    del box  # the driver exits (code 4); later, with the server back:
    server.start()
    said: list[str] = []
    assert champions.replay(folder, server.uri, out=said.append) == "1"
    runs = client.search_runs([exp])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    real = next(r.info.run_id for r in runs if r.info.run_id != parent)
    assert _steps(client, real) == [1, 2, 3]
    assert [str(v.version) for v in client.search_model_versions("name = 'flap'")] == ["1"]
    assert client.get_run(real).data.tags["orchestrator.champion"] == "true"
    assert not (folder / outbox.JOURNAL).exists()
