"""`orchestrator sweep` on a terminal: a real sweep run under a pseudo-terminal shows the
live view (the header with trials done, a row per running trial with its epoch out of its
budget), keeps Ray's raylet messages off the screen, and still ends with the final table."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
DEADLINE_S = 600


def _run_in_a_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin, stdout and stderr; all it wrote."""
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ORCHESTRATOR_PLAIN")}
    env.update(RAY_ADDRESS="local", TERM="xterm-256color", COLUMNS="160", LINES="50")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            pytest.fail(f"the sweep did not end within {DEADLINE_S} s")
        code = proc.wait(timeout=60)
    finally:
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def test_a_sweep_on_a_terminal_shows_live_rows_and_no_raylet_noise(
    digits_path: Path, tmp_path: Path
) -> None:
    code, raw = _run_in_a_terminal(
        [
            "sweep",
            str(ROOT / "jobs/configs/quickstart.yaml"),
            f"data.path={digits_path}",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"sweep.storage_path={tmp_path}/results",
            "experiment=live",
            "tracking.register_as=live",
            "model.hidden=[32]",
            "train.epochs=12",
            "sweep.num_samples=4",
            "sweep.scheduler=fifo",
            "sweep.refit=false",
            "sweep.confirm_seeds=0",
        ],
        tmp_path,
    )
    text = ANSI.sub("", raw)
    print(text[:5000], "\n...\n", text[-3000:])
    assert code == 0, text[-3000:]
    # the live header and the running trials' rows (epoch out of the budget, status)
    assert re.search(r"\[sweep\] \d/4 trials done, [12] running", text)
    assert re.search(r"best val_loss", text)  # the table's column
    rows = re.findall(r"^\S+\s+.*?\s(\d+)/12\s.*running\s*$", text, flags=re.M)
    assert rows, "no live row of a running trial"
    assert "trial" in text and "started (" not in text  # the rows replace the start lines
    # Ray's own chatter stays off the terminal
    assert "(raylet)" not in text and "worker processes have been started" not in text
    assert "Successfully registered model" not in text
    assert "Creating initial MLflow database tables" not in text
    assert re.search(r"\[ray\] Ray's own messages \(raylet, workers\): /\S+/logs", text)
    # and the end is as before: the final table and the champion
    assert "champion: trial" in text
