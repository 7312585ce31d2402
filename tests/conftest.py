"""Shared fixtures. Fast tier: no Ray, no servers. Slow tier (marked `slow`): the real things."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import config, data

ROOT = Path(__file__).resolve().parents[1]
# Ray >= 2.59 enables token auth for local clusters; be explicit, like the Makefile.
os.environ.setdefault("RAY_AUTH_MODE", "token")


@pytest.fixture(scope="session")
def digits_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return data.export_digits(tmp_path_factory.mktemp("data") / "digits.parquet")


def make_cfg(data_path: str = "x.parquet", **over: Any) -> config.Config:
    """A validated config from dotted overrides, e.g. ``make_cfg(**{"train.epochs": 2})``."""
    raw: dict[str, Any] = {"data": {"path": data_path}}
    for dotted, v in over.items():
        config.set_dotted(raw, dotted, v)
    return config.from_dict(raw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until GET ``url`` answers 200; fails with the server's output if it dies first."""
    import requests

    deadline = time.time() + timeout
    while True:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.time() < deadline, f"{url} did not come up in {timeout:g} s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`orchestrator cluster up --workers 2`: a head (no CPUs for trials) and two 1-CPU worker
    nodes on loopback, token auth on; stopped (only what it started) after the module."""
    import sys

    from orchestrator import cluster

    state_dir = tmp_path_factory.mktemp("cluster") / ".ray-local"
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "cluster", "up", "--workers", "2",
         "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = cluster.load(state_dir)
    assert state is not None
    try:
        yield {"state": state, "state_dir": state_dir, "up": proc.stdout}
    finally:
        down = subprocess.run([sys.executable, "-m", "orchestrator.cli", "cluster", "down",
                               "--state-dir", str(state_dir)], capture_output=True, text=True,
                              timeout=300)
        assert down.returncode == 0, down.stderr
        for pid in [state.head_pid, *state.workers]:  # only what it started, and all of it
            assert not running(pid), pid


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone but for its exit status
        return f.read().split()[2] != "Z"
