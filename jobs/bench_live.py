"""`python -m jobs.bench live`: what the live view costs the driver.

The same sweep (N fast-path trials of about 2 s each, MLflow in SQLite, the trial set of
``python -m jobs.bench scale trials``) runs in fresh processes with plain lines (the
baseline: what a pipe or CI gets) and with the live view drawing to a terminal (a rich
console forced to act as one, writing to /dev/null), alternating, ``BENCH_LIVE_REPEATS``
times each. Figures: the sweep's wall time per trial with the view over without it
(``live_over_plain``, target at most 1.02: the view does not move the sweep), and the time
to build one frame and draw it from a ledger of 400 trials of 18 epochs (``frame_ms``): the
view rebuilds at most 4 times a second, so its share of one core is 4 x that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.sweep import screen

N = int(os.environ.get("BENCH_LIVE_N", 30))
REPEATS = int(os.environ.get("BENCH_LIVE_REPEATS", 2))


def one(live_view: bool, folder: Path) -> dict[str, float]:
    """One sweep in this process, with or without the live view; its wall time."""
    from rich.console import Console

    from jobs import bench_scale
    from orchestrator import config, sweep
    from orchestrator.execution import runtime

    runtime.ensure_env()
    path = bench_scale.synthetic(
        folder / "live.parquet", bench_scale.ROWS, bench_scale.FEATURES, bench_scale.CLASSES
    )
    cfg = config.from_dict(
        {
            "experiment": f"live-{live_view}",
            "data": {"path": path},
            "model": {"hidden": bench_scale.HIDDEN, "dropout": 0.1},
            "train": {"epochs": bench_scale.EPOCHS, "batch_size": bench_scale.BATCH},
            "scaling": {"num_workers": 1, "cpus_per_worker": 1},
            "sweep": {
                "num_samples": N,
                "searcher": "random",
                "scheduler": "fifo",
                "refit": False,
                "storage_path": str(folder / "results"),
            },
            "tracking": {"uri": f"sqlite:///{folder}/mlflow.db", "register_as": "live"},
        }
    )
    with open(os.devnull, "w") as sink:
        if live_view:
            out: Any = screen.Screen(True, Console(file=sink, force_terminal=True, width=160))
        else:
            out = Quiet(False)
        start = time.monotonic()
        try:
            summary = sweep.run(cfg, out=out)
        finally:
            out.close()
        wall = time.monotonic() - start
    own = sum(sum(h["epoch_seconds"] for h in r.history) for r in summary.records)
    return {"wall_s": wall, "train_s": own, "trials": float(len(summary.records))}


class Quiet(screen.Screen):
    """Plain mode with its lines dropped: the baseline (the live run's go to /dev/null)."""

    def __call__(self, line: str) -> None:
        """Nothing printed."""


def frame_ms() -> float:
    """Milliseconds to build and draw one frame from a 400-trial ledger."""
    import io

    from rich.console import Console

    from orchestrator.analysis import live
    from orchestrator.core.ledger import TrialRecord

    records = []
    for i in range(400):
        hist = [
            {"epoch": float(e + 1), "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1)}
            for e in range(18)
        ]
        status = "RUNNING" if i >= 398 else "TERMINATED"  # noqa: PLR2004
        records.append(
            TrialRecord(
                f"t{i}", {"train.lr": 0.01}, epochs=18, history=hist, best=hist[-1], status=status
            )
        )
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    start, n = time.perf_counter(), 50
    for _ in range(n):
        f = live.frame(records, 400, "val_loss", "min", 18, 100.0)
        console.print(live.render(f))
    return (time.perf_counter() - start) / n * 1000


def bench_live() -> dict[str, Any]:
    """`python -m jobs.bench live` (see the module)."""
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    print(f"live view benchmark: {N} fast-path trials per sweep, {REPEATS} sweeps each way")
    for _ in range(REPEATS):
        for live_view in (False, True):
            with tempfile.TemporaryDirectory() as d:
                proc = subprocess.run(
                    [sys.executable, "-m", "jobs.bench_live", "_one", str(live_view), d],
                    capture_output=True,
                    text=True,
                    timeout=3600,
                )
            if proc.returncode != 0:
                raise RuntimeError(f"the sweep failed: {proc.stderr[-3000:]}")
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[live_view].append(got)
            print(
                f"  {'live view' if live_view else 'plain    '}: {got['wall_s']:6.1f} s "
                f"({got['wall_s'] / got['trials']:.3f} s per trial; own training "
                f"{got['train_s']:.1f} s)",
                flush=True,
            )
    per = {k: sum(r["wall_s"] for r in v) / sum(r["trials"] for r in v) for k, v in runs.items()}
    ms = frame_ms()
    print(f"\n{'':<12} {'s per trial':>12}")
    print(f"{'plain':<12} {per[False]:>12.3f}")
    print(f"{'live view':<12} {per[True]:>12.3f}")
    print(f"one frame from a 400-trial ledger: {ms:.1f} ms (at most 4 a second)")
    print("target: live over plain <= 1.02")
    return {
        "live_over_plain": round(per[True] / per[False], 4),
        "plain_s_per_trial": round(per[False], 4),
        "live_s_per_trial": round(per[True], 4),
        "frame_ms": round(ms, 2),
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["_one"]:
        print(json.dumps(one(sys.argv[2] == "True", Path(sys.argv[3]))))
