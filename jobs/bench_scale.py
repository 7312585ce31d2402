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

`python -m jobs.bench scale data`: what streaming costs as the data grows. A synthetic
Parquet table of about 0.25 GB and one 8x larger, each streamed (``data.loader: stream``,
Ray Data) through a 1-worker trial (the fast path) and a 2-worker DDP trial with a tiny
model, so that reading, not compute, sets the pace. Figures: training rows per second of the
large over the small (``data_rows_ratio``, target >= 0.9: throughput holds), and a training
process's peak unique memory (USS) on the large over the small (``data_rss_ratio``, target
<= 1.2: memory does not grow with the data); Ray's object-store use reported apart; streamed
over in-memory rows/s on the small one reported.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

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
    """`python -m jobs.bench scale trials|data`."""
    what = args[0] if args else "trials"
    if what == "data":
        return bench_data()
    if what != "trials":
        raise SystemExit(f"usage: python -m jobs.bench scale trials|data (not {what!r})")
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


# ---------------------------------------------------------------- data

DATA_FEATURES = 32
SMALL_ROWS = int(os.environ.get("BENCH_SCALE_SMALL_ROWS", 1_900_000))  # about 0.25 GB
GROWTH = 8
EPOCHS_DATA = 2  # the second epoch is the steady one
CHUNK = 500_000  # rows written per row group: generating the large table stays in memory


def _table(path: Path, rows: int) -> int:
    """A synthetic Parquet table written chunk by chunk; its size in bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(DATA_FEATURES, 4))
    names = [f"f{i}" for i in range(DATA_FEATURES)]
    with pq.ParquetWriter(
        path, pa.schema([*((n, pa.float32()) for n in names), ("label", pa.int64())])
    ) as writer:
        for start in range(0, rows, CHUNK):
            x = rng.normal(size=(min(CHUNK, rows - start), DATA_FEATURES)).astype(np.float32)
            y = (x @ teacher).argmax(axis=1)
            columns = {n: x[:, i] for i, n in enumerate(names)}
            writer.write_table(pa.table({**columns, "label": y}))
    return path.stat().st_size


class PeakUss:
    """Samples the training processes (Ray Train workers, Tune trial actors) four times a
    second, from a thread. ``peak`` is the largest unique memory (USS) of a process's own:
    its private pages less those of Ray's object store it has mapped; ``peak_store`` is the
    most object-store pages one process had mapped.

    Why apart: a process that reads a block zero-copy maps the object store's shared-memory
    file, and the pages it touched count as its private memory while no other process has
    them mapped. They are the object store's memory (a tmpfs file: unmapping them frees
    nothing) and grow with how much of the store's arena the blocks have walked through, up
    to the store's size, not with the process's working set.

    Why four times a second: a streaming process's memory rises for a moment as blocks
    arrive; a sparse sampler catches more of those moments in a long run than in a short
    one, and the ratio would measure the run's length.
    """

    MARKS = ("RayTrainWorker", "ImplicitFunc")
    PERIOD_S = 0.25

    def __init__(self) -> None:
        import threading

        self.peak, self.peak_store, self._stop = 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakUss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.PERIOD_S):
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    line = " ".join(proc.info["cmdline"] or [])
                    if any(m in line for m in self.MARKS):
                        own, store = private_pages(Path(f"/proc/{proc.pid}/smaps").read_bytes())
                        self.peak = max(self.peak, own)
                        self.peak_store = max(self.peak_store, store)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                    continue


_PRIVATE = re.compile(rb"^Private_(?:Clean|Dirty):\s+(\d+) kB", re.M)
_STORE = re.compile(rb"^[0-9a-f]+-[0-9a-f]+ [^\n]*/plasma[^\n]*\n((?:[A-Z][^\n]*\n)+)", re.M)


def private_pages(smaps: bytes) -> tuple[int, int]:
    """(own, object store) from a process's /proc/PID/smaps: its private bytes, those of
    Ray's object store (its ``plasmaXXXXXX`` files, in /dev/shm or the fallback folder)
    apart. psutil's ``memory_maps`` gives the same but takes several times longer, too
    long to sample often on two cores."""
    total = sum(int(k) for k in _PRIVATE.findall(smaps))
    store = sum(int(k) for m in _STORE.finditer(smaps) for k in _PRIVATE.findall(m.group(1)))
    return (total - store) * 1024, store * 1024


def _streamed(path: str, folder: Path, workers: int, loader: str) -> dict[str, float]:
    """One training run over the table: training rows per second (the second epoch, by the
    loop's clock) and the training processes' peak USS."""
    import pyarrow.parquet as pq

    from orchestrator import config, sweep

    raw: dict[str, Any] = {
        "experiment": f"scale-data-{workers}",
        "data": {"path": path, "loader": loader},
        "model": {"hidden": [16]},
        "train": {"epochs": EPOCHS_DATA, "batch_size": 4096},
        "scaling": {"num_workers": workers, "cpus_per_worker": 1},
        "sweep": {"storage_path": str(folder / "results")},
        "tracking": {"uri": f"sqlite:///{folder}/mlflow.db"},
    }
    cfg = config.from_dict(raw)
    if workers > 1:  # Ray Data's read and map tasks keep a whole CPU beside the two workers
        cfg = config.with_values(cfg, {"scaling.cpus_per_worker": 0.5})
    train_rows = pq.ParquetFile(path).metadata.num_rows * (
        1 - cfg.data.val_fraction - cfg.data.test_fraction
    )
    with PeakUss() as uss:
        summary = sweep.train_run(cfg, out=lambda _: None)
    history = sorted(summary.record.history, key=lambda h: h["epoch"])
    if len(history) < EPOCHS_DATA:
        raise RuntimeError(f"the {workers}-worker run failed: {summary.record.error}")
    return {
        "rows_per_s": train_rows / history[-1]["epoch_seconds"],
        "uss_mb": uss.peak / 2**20,
        "store_mapped_mb": uss.peak_store / 2**20,
    }


def _object_store_mb() -> float:
    """The object store's use on this node now, from Ray's own memory summary."""
    import re

    from ray._private.internal_api import memory_summary

    found = re.search(r"Plasma memory usage (\d+) MiB", memory_summary(stats_only=True))
    return float(found.group(1)) if found else float("nan")


def bench_data() -> dict[str, float]:
    """`python -m jobs.bench scale data`."""
    from orchestrator.execution import runtime

    runtime.ensure_env()
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        sizes = {}
        for name, rows in (("small", SMALL_ROWS), ("large", SMALL_ROWS * GROWTH)):
            sizes[name] = _table(folder / f"{name}.parquet", rows) / 2**30
        print(
            f"scale data: {DATA_FEATURES} float features; small {SMALL_ROWS:,} rows "
            f"({sizes['small']:.2f} GB), large {SMALL_ROWS * GROWTH:,} rows "
            f"({sizes['large']:.2f} GB); MLP [16], batch 4096; {os.cpu_count()} CPUs"
        )
        for name in ("small", "large"):
            for workers in (1, 2):
                got = _streamed(str(folder / f"{name}.parquet"), folder, workers, "stream")
                got["object_store_mb"] = _object_store_mb()
                out[f"{name}-{workers}"] = got
                print(
                    f"  {name:5} streamed, {workers} worker(s): {got['rows_per_s']:>10,.0f} "
                    f"rows/s  peak USS {got['uss_mb']:,.0f} MB (+ {got['store_mapped_mb']:,.0f} "
                    f"MB of the object store mapped)  object store {got['object_store_mb']:,.0f} "
                    "MB after"
                )
        memory = _streamed(str(folder / "small.parquet"), folder, 1, "memory")
        print(f"  small in memory, 1 worker: {memory['rows_per_s']:>10,.0f} rows/s")
    rows_ratio = min(
        out[f"large-{w}"]["rows_per_s"] / out[f"small-{w}"]["rows_per_s"] for w in (1, 2)
    )
    rss_ratio = max(out[f"large-{w}"]["uss_mb"] / out[f"small-{w}"]["uss_mb"] for w in (1, 2))
    return {
        "data_rows_ratio": round(rows_ratio, 4),
        "data_rss_ratio": round(rss_ratio, 4),
        "streamed_vs_memory_rows": round(out["small-1"]["rows_per_s"] / memory["rows_per_s"], 4),
        **{f"rows_per_s_{k}": round(v["rows_per_s"], 1) for k, v in out.items()},
        **{f"uss_mb_{k}": round(v["uss_mb"], 1) for k, v in out.items()},
        **{f"store_mapped_mb_{k}": round(v["store_mapped_mb"], 1) for k, v in out.items()},
        **{f"object_store_mb_{k}": v["object_store_mb"] for k, v in out.items()},
        "small_gb": round(sizes["small"], 3),
        "large_gb": round(sizes["large"], 3),
    }


if __name__ == "__main__" and sys.argv[1:2] == ["_one"]:
    print(json.dumps(one_sweep(int(sys.argv[2]), Path(sys.argv[3]))))
