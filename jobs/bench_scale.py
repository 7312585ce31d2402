"""`python -m jobs.bench scale trials`: what orchestration costs per trial as sweeps grow.

N fast-path trials of about 2 s of training each (N = 25, 100, 400; ``BENCH_SCALE_N`` to
choose others), each sweep in a fresh process with a real local Ray and MLflow in SQLite:
every trial has its run, its per-epoch metrics, its learning-curve picture and its
diagnosis, as in a real sweep. The figure is the overhead per trial,

    (search wall time - floor) / N,   floor = the trials' own training time / trials at once,

where the search wall time runs from the first trial's start to the last trial's end (Ray's
start-up and the champion's refit/registration are per sweep, not per trial, and are shown
apart), and a trial's own training time is the sum of its epochs by the loop's clock. The
driver's peak RSS is the sweep process's. Targets: at most 0.5 s per trial at every N, and
the overhead at the largest N at most 1.2x that at the smallest (``overhead_growth``): the
cost is linear in the number of trials.

For reference, Ray Tune's own scalability page reports 10,000 one-second trials on 16 CPUs in
715 s against a 625 s floor, about 0.14 s per trial, with no tracking.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jobs.bench import synthetic

SIZES = tuple(int(n) for n in os.environ.get("BENCH_SCALE_N", "25,100,400").split(","))
ROWS, FEATURES, CLASSES = 12000, 32, 4
HIDDEN, BATCH, EPOCHS = [128, 128], 64, 18  # about 2 s of training per trial on one core


def one_sweep(n: int, folder: Path) -> dict[str, float]:
    """One sweep of ``n`` trials in this process; its timings (seconds) and peak RSS."""
    from orchestrator import config, sweep
    from orchestrator.execution import runtime

    runtime.ensure_env()
    path = synthetic(folder / "scale.parquet", ROWS, FEATURES, CLASSES)
    raw: dict[str, Any] = {
        "experiment": f"scale-{n}",
        "data": {"path": path},
        "model": {"hidden": HIDDEN, "dropout": 0.1},
        "train": {"epochs": EPOCHS, "batch_size": BATCH},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "sweep": {
            "num_samples": n,
            "searcher": "random",
            "scheduler": "fifo",  # every trial trains its whole budget: a known floor
            "refit": False,
            "storage_path": str(folder / "results"),
        },
        "tracking": {"uri": f"sqlite:///{folder}/mlflow.db", "register_as": f"scale-{n}"},
    }
    cfg = config.from_dict(raw)
    stamps: dict[str, float] = {}

    def out(line: str) -> None:
        now = time.monotonic()
        if " started (" in line:
            stamps.setdefault("first_start", now)
        if "trials done" in line:
            stamps["last_end"] = now

    start = time.monotonic()
    summary = sweep.run(cfg, out=out)
    wall = time.monotonic() - start
    own = sum(sum(h["epoch_seconds"] for h in r.history) for r in summary.records)
    return {
        "trials": float(len(summary.records)),
        "wall_s": wall,
        "search_s": stamps["last_end"] - stamps["first_start"],
        "train_s": own,
        "concurrency": float(summary.config["sweep"].get("max_concurrent") or _slots()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _slots() -> int:
    """Trials at once on this machine: one CPU each."""
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def bench_scale(args: list[str]) -> dict[str, float]:
    """`python -m jobs.bench scale trials` (``data``: not yet, see the docs)."""
    what = args[0] if args else "trials"
    if what != "trials":
        raise SystemExit(f"usage: python -m jobs.bench scale trials (not {what!r})")
    rows = []
    print(
        f"scale benchmark: N fast-path trials of {EPOCHS} epochs ({ROWS} rows x {FEATURES} "
        f"features, MLP {HIDDEN}), MLflow in SQLite; {os.cpu_count()} CPUs"
    )
    for n in SIZES:
        with tempfile.TemporaryDirectory() as d:
            proc = subprocess.run(
                [sys.executable, "-m", "jobs.bench_scale", "_one", str(n), d],
                capture_output=True,
                text=True,
                timeout=6 * 3600,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"the sweep of {n} trials failed: {proc.stderr[-3000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        floor = got["train_s"] / got["concurrency"]
        got["overhead_s"] = (got["search_s"] - floor) / n
        got["floor_s"] = floor
        rows.append((n, got))
        print(
            f"  N={n:<4} trial {got['train_s'] / n:5.2f} s  floor {floor:7.1f} s  "
            f"search {got['search_s']:7.1f} s  whole sweep {got['wall_s']:7.1f} s  "
            f"overhead {got['overhead_s']:.3f} s/trial  driver peak RSS "
            f"{got['peak_rss_mb']:,.0f} MB"
        )
    first, last = rows[0][1], rows[-1][1]
    return {
        "trial_overhead_s": round(max(r["overhead_s"] for _, r in rows), 4),
        "overhead_growth": round(last["overhead_s"] / first["overhead_s"], 4),
        **{f"overhead_s_{n}": round(r["overhead_s"], 4) for n, r in rows},
        **{f"driver_peak_rss_mb_{n}": round(r["peak_rss_mb"], 1) for n, r in rows},
        **{f"trial_train_s_{n}": round(r["train_s"] / n, 3) for n, r in rows},
    }


if __name__ == "__main__" and sys.argv[1:2] == ["_one"]:
    print(json.dumps(one_sweep(int(sys.argv[2]), Path(sys.argv[3]))))
