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

from conftest import ROOT, free_port

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
            [sys.executable, "-m", "orchestrator.cli", "tracking", "serve", "--port",
             str(self.port), "--backend", f"sqlite:///{self.tmp}/server.db", "--artifacts",
             str(self.tmp / "artifacts"), "--workers", "1"],
            cwd=self.tmp, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
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
    return [sys.executable, "-m", "orchestrator.cli", "sweep",
            str(ROOT / "jobs/configs/quickstart.yaml"), f"data.path={digits}",
            f"tracking.uri={uri}", f"sweep.storage_path={tmp}/results", f"experiment={name}",
            f"tracking.register_as={name}", "model.hidden=[64]", *over]


def _runs(uri: str, name: str) -> tuple[object, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return client, (client.search_runs([exp.experiment_id], max_results=200) if exp else [])


def _steps(client: object, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "val_loss"))  # type: ignore[attr-defined]


def test_four_concurrent_two_worker_trials_make_exactly_one_run_each(
        server: Server, digits_path: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        _sweep_args(tmp_path, digits_path, server.uri, "four", "sweep.num_samples=4",
                    "sweep.max_concurrent=4", "scaling.num_workers=2",
                    "scaling.cpus_per_worker=0.25", "train.epochs=2", "sweep.scheduler=fifo",
                    "sweep.refit=false"),
        cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": "local"}, capture_output=True,
        text=True, timeout=900)
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
        "plots/regularization_map.png", "plots/parallel_coordinates.png", "plots/fit_map.png"}
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


def _outage_sweep(server: Server, digits: Path, tmp: Path, name: str, drain: float,
                  lines: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        _sweep_args(tmp, digits, server.uri, name, f"sweep.num_samples={TRIALS}",
                    "sweep.max_concurrent=1", "scaling.num_workers=1",
                    "scaling.cpus_per_worker=1", f"train.epochs={EPOCHS}",
                    "sweep.scheduler=fifo", f"tracking.drain_timeout={drain}"),
        cwd=tmp, env={**os.environ, "RAY_ADDRESS": "local"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
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
        server: Server, digits_path: Path, tmp_path: Path) -> None:
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
        server: Server, digits_path: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    proc = _outage_sweep(server, digits_path, tmp_path, "replay", 1, lines)
    assert proc.wait(timeout=600) == 4, "".join(lines)[-3000:]  # trained; tracking pending
    out = "".join(lines)
    assert "NOT registered yet" in out and "test accuracy" in out
    folder = out.split("orchestrator tracking replay ")[-1].split()[0]
    assert (Path(folder) / "mlflow-journal.jsonl").is_file()
    server.start()
    rep = subprocess.run([sys.executable, "-m", "orchestrator.cli", "tracking", "replay",
                          folder], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
    assert "champion registered" in rep.stdout
    _all_epochs_once(server, "replay")
    assert not (Path(folder) / "mlflow-journal.jsonl").exists()


def test_a_sweep_refuses_to_start_without_its_tracking_server(
        digits_path: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        _sweep_args(tmp_path, digits_path, f"http://127.0.0.1:{free_port()}", "nobody"),
        cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": "local"}, capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 2 and "'tracking.uri'" in proc.stderr
    assert "orchestrator tracking serve" in proc.stderr
    assert not (tmp_path / "results").exists()  # nothing started, nothing written
