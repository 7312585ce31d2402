"""Benchmarks: `python -m jobs.bench NAME`. Each prints a readable table and, as its last
line, one JSON object with the figures; ratios are measured against a baseline in the same run.

    python -m jobs.bench loop        # orchestrated loop vs bare PyTorch, AMP, checkpointing, DDP,
                                     # checkpoints on S3 (moto) vs local
    python -m jobs.bench sweep       # fast-path trials vs TorchTrainer trials; ASHA vs FIFO
    python -m jobs.bench tracking    # epoch time with MLflow tracking on vs off
    python -m jobs.bench serve       # the model server vs a naive one and the HTTP ceiling
    python -m jobs.bench quality     # ours vs sklearn on digits (CNN factory), diabetes, penguins
    python -m jobs.bench scale trials  # overhead per trial at N = 25, 100, 400 trials
    python -m jobs.bench live        # a sweep with the live view vs plain lines
    ray job submit --working-dir . -- python -m jobs.bench loop

Steady state: the first epoch (warm-up, worker start-up) is left out of every rate.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.execution import runtime

# One synthetic but learnable problem: 64 features, 10 classes from a random linear teacher.
# Epochs of a few seconds, so per-epoch costs (report, checkpoint) weigh as in real runs.
ROWS, FEATURES, CLASSES = 96_000, 64, 10
HIDDEN, BATCH, EPOCHS = [512, 512], 256, 5


def _dataset(folder: Path) -> str:
    return synthetic(folder / "bench.parquet", ROWS, FEATURES, CLASSES)


def synthetic(path: Path, rows: int, features: int, classes: int) -> str:
    """A learnable Parquet table: normal features, classes from a random linear teacher."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = (x @ rng.normal(size=(features, classes))).argmax(axis=1)
    pq.write_table(pa.table({**{f"f{i}": x[:, i] for i in range(features)}, "label": y}), path)
    return str(path)


def _config(path: str, **over: Any) -> Any:
    from orchestrator import config

    raw: dict[str, Any] = {
        "experiment": "bench",
        "data": {"path": path},
        "model": {"hidden": HIDDEN, "dropout": 0.1},
        "train": {"epochs": EPOCHS, "batch_size": BATCH},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
    }
    for dotted, v in over.items():
        config.set_dotted(raw, dotted, v)
    return config.from_dict(raw)


def steady_rate(rows: int, seconds: list[float]) -> float:
    """Training rows per second over the epochs after the first."""
    steady = seconds[1:] or seconds
    return rows / statistics.median(steady)


def bare_loop(path: str) -> float:
    """The textbook loop: same model, data, batch and optimizer, nothing else."""
    import torch
    from torch import nn

    from orchestrator.core import data

    torch.set_num_threads(1)
    cfg = _config(path)
    s = data.load_splits(cfg.data)
    x, y = torch.from_numpy(s.x_train), torch.from_numpy(s.y_train)
    xv, yv = torch.from_numpy(s.x_val), torch.from_numpy(s.y_val)
    layers: list[nn.Module] = []
    width = FEATURES
    for h in HIDDEN:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(0.1)]
        width = h
    net = nn.Sequential(*layers, nn.Linear(width, CLASSES))
    return steady_rate(len(y), textbook_epochs(net, x, y, xv, yv))


def textbook_epochs(net: Any, x: Any, y: Any, xv: Any, yv: Any) -> list[float]:
    """Seconds of each of ``EPOCHS`` epochs of the textbook loop: shuffled batches of
    ``BATCH``, AdamW, cross-entropy, then one validation pass; nothing else."""
    import torch
    from torch import nn

    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    times = []
    for _ in range(EPOCHS):
        start = time.perf_counter()
        net.train()
        for idx in torch.randperm(len(y)).split(BATCH):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            nn.functional.cross_entropy(net(xv), yv)
        times.append(time.perf_counter() - start)
    return times


def orchestrated(path: str, tmp: Path, workers: int) -> float:
    """The real path: a Tune trial running a TorchTrainer, the driver logging to MLflow.
    The rate is the driver's: wall clock between consecutive epoch reports."""
    from orchestrator import sweep
    from orchestrator.core import data

    cfg = _config(
        path,
        **{
            "scaling.num_workers": workers,
            "tracking.uri": f"sqlite:///{tmp}/mlflow.db",
            "sweep.storage_path": str(tmp / f"results-{workers}"),
        },
    )
    rows = len(data.load_splits(cfg.data).y_train)
    runtime.ensure_env()
    summary = sweep.train_run(cfg, out=lambda _: None)
    walls = [h["wall_time"] for h in summary.record.history]
    return steady_rate(rows, list(np.diff(walls)))


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server on loopback for the benchmark, the standard AWS variables pointing at
    it (restored after); stopped by pid. Yields its endpoint."""
    import requests

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(dict(zip(names, ("bench", "bench", "us-east-1", endpoint), strict=True)))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                requests.get(endpoint, timeout=5)
                break
            except requests.RequestException:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def epoch_period(path: str, tmp: Path, storage: str, **over: Any) -> float:
    """The steady epoch period (median seconds between epochs after the first, by the
    trainer's own clock) of one training run that checkpoints every epoch into ``storage``."""
    from orchestrator import sweep

    cfg = _config(
        path,
        **{
            "tracking.uri": f"sqlite:///{tmp}/mlflow.db",
            "sweep.storage_path": storage,
            "train.checkpoint_every": 1,
            **over,
        },
    )
    runtime.ensure_env()
    summary = sweep.train_run(cfg, out=lambda _: None)
    walls = sorted(h["wall_time"] for h in summary.record.history)
    if len(walls) < EPOCHS:
        raise RuntimeError(f"the run into {storage} failed: {summary.record.error}")
    return statistics.median(np.diff(walls)[1:])


def storage_case(path: str, tmp: Path) -> dict[str, float]:
    """Steady epoch time with every epoch's checkpoint on S3 (moto's server on loopback)
    over a local folder: the TorchTrainer path (1 worker, asynchronous upload) and the fast
    path (Tune's synchronous upload), local and S3 alternating."""
    import boto3
    import ray

    out: dict[str, float] = {}
    with moto_s3():
        ray.shutdown()  # a local Ray started before has not the AWS_* variables: start anew
        boto3.client("s3").create_bucket(Bucket="bench")
        for label, over in (("trainer", {"scaling.fast_path": False}), ("fast", {})):
            local = epoch_period(path, tmp, str(tmp / f"ckpt-{label}"), **over)
            remote = epoch_period(path, tmp, f"s3://bench/{label}", **over)
            out[f"{label}_local_s"], out[f"{label}_s3_s"] = local, remote
    return out


def variant(path: str, precision: str, grad_checkpointing: bool) -> dict[str, float]:
    """One in-process loop run (LocalSeam) in a fresh process, so peak memory is its own."""
    out = subprocess.run(
        [sys.executable, "-m", "jobs.bench", "_variant", path, precision, str(grad_checkpointing)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _variant_main(path: str, precision: str, grad_checkpointing: str) -> None:
    import torch

    from orchestrator.core import data, loop

    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    # A big batch through 4 blocks: activations (~0.5 GB), not weights (~64 MB with AdamW's
    # state), dominate memory, which is what activation checkpointing trades for time.
    cfg = _config(
        path,
        **{
            "train.precision": precision,
            "model.hidden": [1024] * 4,
            "train.batch_size": 8192,
            "train.epochs": 3,
            "data.max_train_rows": 16_000,
            "train.grad_checkpointing": grad_checkpointing == "True",
        },
    )
    splits = data.load_splits(cfg.data)
    seam = loop.LocalSeam(device=torch.device("cuda" if cuda else "cpu"))
    loop.train(cfg, splits, seam)
    rate = steady_rate(len(splits.y_train), [r["epoch_seconds"] for r in seam.reports])
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"samples_per_s": rate, "peak_mb": peak}))


# A table with text categories, a few of high cardinality (embedded), 100,000 rows.
CAT_ROWS, CAT_NUMBERS = 100_000, 8
CAT_CARDINALITIES = (4, 12, 1_000, 20_000)


def _categorical_dataset(folder: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    numbers = rng.normal(size=(CAT_ROWS, CAT_NUMBERS))
    codes = [rng.integers(0, n, size=CAT_ROWS) for n in CAT_CARDINALITIES]
    effects = [rng.normal(size=(n, CLASSES)) for n in CAT_CARDINALITIES]
    logits = numbers @ rng.normal(size=(CAT_NUMBERS, CLASSES))
    logits += sum(e[c] for e, c in zip(effects, codes, strict=True))
    columns: dict[str, Any] = {f"n{i}": numbers[:, i] for i in range(CAT_NUMBERS)}
    for i, c in enumerate(codes):
        columns[f"c{i}"] = pa.array([f"v{v}" for v in c])
    columns["label"] = logits.argmax(axis=1)
    path = folder / "categories.parquet"
    pq.write_table(pa.table(columns), path)
    return str(path)


def categorical_case(folder: Path) -> dict[str, float]:
    """The loop on a table of numbers and text categories (one-hot and embedded) against a
    bare PyTorch loop over the same encoded tensors and the same network, in-process, one
    thread; the encoding pass (read, fit on the training split, encode) timed apart."""
    import torch

    from orchestrator.core import data, loop, model

    torch.set_num_threads(1)
    path = _categorical_dataset(folder)
    cfg = _config(path, **{"model.hidden": [256, 256]})
    start = time.perf_counter()
    splits = data.load_splits(cfg)
    encode_s = time.perf_counter() - start
    seam = loop.LocalSeam()
    loop.train(cfg, splits, seam)
    ours = steady_rate(len(splits.y_train), [r["epoch_seconds"] for r in seam.reports])
    torch.manual_seed(0)
    net = model.network(cfg, splits.encoding, splits.task)
    x, y = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)
    xv, yv = torch.from_numpy(splits.x_val), torch.from_numpy(splits.y_val)
    bare = steady_rate(len(y), textbook_epochs(net, x, y, xv, yv))
    return {"ours": ours, "bare": bare, "encode_s": encode_s, "rows": float(CAT_ROWS)}


def bench_loop() -> dict[str, float]:
    """Orchestrated loop vs bare PyTorch, one vs two DDP workers, bf16 and checkpointing vs fp32."""
    import ray

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = _dataset(tmp)
        print(
            f"loop benchmark: {ROWS} rows x {FEATURES} features, MLP {HIDDEN}, batch {BATCH}, "
            f"{EPOCHS} epochs; {os.cpu_count()} CPUs"
        )
        bare = bare_loop(path)
        one = orchestrated(path, tmp, 1)
        two = orchestrated(path, tmp, 2)
        store = storage_case(path, tmp)
        ray.shutdown()
        fp32 = variant(path, "fp32", False)
        bf16 = variant(path, "bf16", False)
        ckpt = variant(path, "fp32", True)
        cats = categorical_case(tmp)
    rows = [
        ("bare PyTorch loop, 1 thread", f"{bare:,.0f} samples/s", ""),
        ("orchestrated, 1 DDP worker", f"{one:,.0f} samples/s", f"{one / bare:.3f} x bare"),
        ("orchestrated, 2 DDP workers", f"{two:,.0f} samples/s", f"{two / one:.2f} x 1 worker"),
        (
            "fp32 (MLP 4x1024, batch 8192)",
            f"{fp32['samples_per_s']:,.0f} samples/s",
            f"peak {fp32['peak_mb']:,.0f} MB",
        ),
        (
            "bf16 autocast",
            f"{bf16['samples_per_s']:,.0f} samples/s",
            f"{bf16['samples_per_s'] / fp32['samples_per_s']:.2f} x fp32, "
            f"peak {bf16['peak_mb']:,.0f} MB",
        ),
        (
            "fp32 + grad checkpointing",
            f"{ckpt['samples_per_s']:,.0f} samples/s",
            f"{ckpt['samples_per_s'] / fp32['samples_per_s']:.2f} x fp32, "
            f"peak {ckpt['peak_mb']:,.0f} MB",
        ),
        (
            "epoch, checkpoint each: TorchTrainer",
            f"{store['trainer_local_s']:.2f} s local",
            f"{store['trainer_s3_s']:.2f} s on S3 (async upload): "
            f"{store['trainer_s3_s'] / store['trainer_local_s']:.3f} x",
        ),
        (
            "epoch, checkpoint each: fast path",
            f"{store['fast_local_s']:.2f} s local",
            f"{store['fast_s3_s']:.2f} s on S3 (Tune's upload): "
            f"{store['fast_s3_s'] / store['fast_local_s']:.3f} x",
        ),
        (
            f"categories table {CAT_ROWS:,} rows: bare",
            f"{cats['bare']:,.0f} samples/s",
            f"same network and encoded tensors; encoding pass {cats['encode_s']:.2f} s",
        ),
        (
            "categories table: the loop",
            f"{cats['ours']:,.0f} samples/s",
            f"{cats['ours'] / cats['bare']:.3f} x bare",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, rate, note in rows:
        print(f"  {name.ljust(width)}  {rate.rjust(18)}  {note}")
    return {
        "orchestrated_vs_bare": round(one / bare, 4),
        "bare_samples_per_s": round(bare, 1),
        "orchestrated_samples_per_s": round(one, 1),
        "two_workers_vs_one": round(two / one, 4),
        "bf16_vs_fp32_speed": round(bf16["samples_per_s"] / fp32["samples_per_s"], 4),
        "bf16_vs_fp32_peak_memory": round(bf16["peak_mb"] / fp32["peak_mb"], 4),
        "grad_ckpt_vs_off_speed": round(ckpt["samples_per_s"] / fp32["samples_per_s"], 4),
        "grad_ckpt_vs_off_peak_memory": round(ckpt["peak_mb"] / fp32["peak_mb"], 4),
        "categories_loop_vs_bare": round(cats["ours"] / cats["bare"], 4),
        "s3_epoch_ratio": round(store["trainer_s3_s"] / store["trainer_local_s"], 4),
        "s3_epoch_ratio_fast_path": round(store["fast_s3_s"] / store["fast_local_s"], 4),
        "categories_encode_s": round(cats["encode_s"], 3),
        "device": 1.0 if _cuda() else 0.0,
    }


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def bench_sweep() -> dict[str, float]:
    """`python -m jobs.bench sweep` (``jobs.bench_sweep``)."""
    from jobs.bench_sweep import bench_sweep as run

    return run()


def bench_tracking() -> dict[str, float]:
    """`python -m jobs.bench tracking` (``jobs.bench_tracking``)."""
    from jobs.bench_tracking import bench_tracking as run

    return run()


def bench_serve() -> dict[str, float]:
    """`python -m jobs.bench serve` (``jobs.bench_serve``)."""
    from jobs.bench_serve import bench_serve as run

    return run()


def bench_quality() -> dict[str, float]:
    """`python -m jobs.bench quality` (``jobs.bench_quality``)."""
    from jobs.bench_quality import bench_quality as run

    return run()


def bench_scale(args: list[str]) -> dict[str, float]:
    """`python -m jobs.bench scale trials` (``jobs.bench_scale``)."""
    from jobs.bench_scale import bench_scale as run

    return run(args)


def bench_autopilot(args: list[str]) -> dict[str, Any]:
    """`python -m jobs.bench autopilot [curve|tpe]` (``jobs.bench_autopilot``)."""
    from jobs.bench_autopilot import bench_autopilot as run

    return run(args)


def bench_live() -> dict[str, Any]:
    """`python -m jobs.bench live` (``jobs.bench_live``)."""
    from jobs.bench_live import bench_live as run

    return run()


BENCHMARKS: dict[str, Any] = {
    "scale": bench_scale,
    "live": bench_live,
    "autopilot": bench_autopilot,
    "loop": bench_loop,
    "sweep": bench_sweep,
    "tracking": bench_tracking,
    "serve": bench_serve,
    "quality": bench_quality,
}


def main(argv: list[str]) -> int:
    """Run the benchmark ``argv`` names and print its figures as JSON; 2 for an unknown name."""
    if argv[:1] == ["_variant"]:
        _variant_main(*argv[1:4])
        return 0
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m jobs.bench {{{'|'.join(BENCHMARKS)}}}", file=sys.stderr)
        return 2
    with_args = argv[0] in ("scale", "autopilot")
    figures = BENCHMARKS[argv[0]](argv[1:]) if with_args else BENCHMARKS[argv[0]]()
    print(json.dumps({"benchmark": argv[0], **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
