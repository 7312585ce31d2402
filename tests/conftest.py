"""Shared fixtures. Fast tier: no Ray, no servers. Slow tier (marked `slow`): the real things."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator import data

ROOT = Path(__file__).resolve().parents[1]
# Ray >= 2.59 enables token auth for local clusters; be explicit, like the Makefile.
os.environ.setdefault("RAY_AUTH_MODE", "token")


@pytest.fixture(scope="session")
def digits_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return data.export_digits(tmp_path_factory.mktemp("data") / "digits.parquet")


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
