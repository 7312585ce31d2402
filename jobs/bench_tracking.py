"""`python -m jobs.bench tracking`: what logging every epoch to MLflow costs training.

The same single-worker run (the fast path, as in a sweep's trials) with the sweep's real
driver callback, writing to MLflow (a SQLite store, the laptop default) vs writing nowhere
(a client that drops everything). Tune's function trainables wait for the driver to take
each result, so a slow write in the driver would stretch every epoch; the figure is the
steady epoch period (the trial's own clock between reports, first epoch left out), median
over alternating repeats, on vs off (``tracking_overhead``, a fraction). Two workloads:
epochs of about a second (the loop benchmark's data) and digits, whose epochs of a few
tens of milliseconds make any per-epoch cost as visible as it gets.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from orchestrator.execution import runtime
from orchestrator.tracking import writer

REPEATS = int(os.environ.get("BENCH_REPEATS", 4))


class NullClient:
    """Tracking off: the callback's writes go nowhere."""

    def create_run(self, *a: Any, **kw: Any) -> Any:
        """A placeholder run with a fresh id, as a real client's ``create_run`` answers."""
        return SimpleNamespace(info=SimpleNamespace(run_id=f"null{time.monotonic_ns()}"))

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **kw: None


def _periods(cfg: Any, client: Any, exp_id: str, tmp: Path, name: str) -> list[float]:
    """Seconds between epoch reports, after the first, as the trial's clock saw them."""
    from orchestrator.core.prepare import prepare
    from orchestrator.execution import trials
    from orchestrator.sweep import tuner
    from orchestrator.sweep.book import Book
    from orchestrator.sweep.context import Context

    prep = prepare(cfg)
    storage = str(tmp / "results")
    ctx = Context(cfg, prep, client, exp_id, None, name, storage, 1, lambda _: None)
    book = Book(ctx, "train")
    trainable = trials.make_trainable(cfg, name, storage, prep.summary)
    tuner.run_book(book, trainable, tuner.Search, name)
    rec = book.records[0]
    clock = [r["wall_time"] for r in sorted(rec.history, key=lambda r: r["epoch"])]
    steps = [b - a for a, b in zip(clock, clock[1:], strict=False)]
    return steps[1:] or steps


def _workload(cfg: Any, tmp: Path, label: str) -> dict[str, float]:

    client, exp_id = writer.connect(cfg, out=lambda _: None)
    on: list[float] = []
    off: list[float] = []
    lag: list[float] = []
    for k in range(REPEATS):  # ABBA order, so drifts in the machine's speed hit both alike
        for mode in ("off", "on") if k % 2 == 0 else ("on", "off"):
            if mode == "off":
                off += _periods(cfg, NullClient(), "0", tmp, f"{label}-off-{k}")
            else:
                on += _periods(cfg, client, exp_id, tmp, f"{label}-on-{k}")
        start = time.perf_counter()  # what the sender still had to send when training ended
        assert client.drain(block=True, patience=120)
        lag.append(time.perf_counter() - start)
    overhead = statistics.median(on) / statistics.median(off) - 1
    print(
        f"  {label}: epoch period tracking off {statistics.median(off) * 1000:.1f} ms, "
        f"on {statistics.median(on) * 1000:.1f} ms -> overhead {overhead * 100:+.1f} % "
        f"(medians of {len(off)} and {len(on)} epochs over {REPEATS} alternating runs "
        f"each); MLflow caught up {max(lag):.2f} s after the last epoch"
    )
    return {
        "overhead": overhead,
        "off_ms": statistics.median(off) * 1000,
        "on_ms": statistics.median(on) * 1000,
        "lag_s": max(lag),
    }


def bench_tracking() -> dict[str, float]:
    """Tracking on vs off on both workloads: epoch periods, overhead, and how far MLflow lagged."""
    from jobs import bench
    from orchestrator.core import data

    runtime.ensure_env()
    os.environ.setdefault("RAY_ADDRESS", "local")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        runtime.init_ray()
        print(
            f"tracking benchmark; {os.cpu_count()} CPUs; MLflow SQLite store; "
            f"{REPEATS} repeats each"
        )
        uri = f"sqlite:///{tmp}/mlflow.db"
        big = bench._config(
            bench._dataset(tmp),
            **{
                "train.epochs": 8,
                "tracking.uri": uri,
                "experiment": "bench-tracking",
                "sweep.storage_path": str(tmp / "results"),
            },
        )
        second = _workload(big, tmp, f"{bench.ROWS:,} rows x {bench.FEATURES} features")
        digits = bench._config(
            str(data.export_digits(tmp / "digits.parquet")),
            **{
                "train.epochs": 60,
                "tracking.uri": uri,
                "experiment": "bench-tracking",
                "model.hidden": [256],
                "train.batch_size": 64,
                "sweep.storage_path": str(tmp / "results"),
            },
        )
        tiny = _workload(digits, tmp, "digits (1.2k rows)")
        import ray

        ray.shutdown()
    return {
        "tracking_overhead": round(second["overhead"], 4),
        "epoch_ms_tracking_off": round(second["off_ms"], 1),
        "epoch_ms_tracking_on": round(second["on_ms"], 1),
        "tracking_overhead_tiny_epochs": round(tiny["overhead"], 4),
        "tiny_epoch_ms_tracking_off": round(tiny["off_ms"], 2),
        "tiny_epoch_ms_tracking_on": round(tiny["on_ms"], 2),
        "tracking_lag_s": round(max(second["lag_s"], tiny["lag_s"]), 2),
    }
