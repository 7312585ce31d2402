"""Benchmark plumbing (the benchmarks themselves run with `python -m jobs.bench`)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from jobs import bench, bench_sweep


def test_steady_rate_leaves_out_the_warm_up_epoch() -> None:
    assert bench.steady_rate(1000, [10.0, 1.0, 2.0, 1.0]) == pytest.approx(1000.0)


def test_unknown_benchmark_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.bench", "nope"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_gpu_check_runs_on_a_gpu_and_says_so_without_one() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.gpu_check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if torch.cuda.is_available():  # the whole check: AMP speedups and the NCCL path
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert '"e2e_train_ok": 1.0' in proc.stdout
    else:
        assert proc.returncode == 3 and "no CUDA GPU" in proc.stderr


def test_epochs_to_reach_counts_in_arrival_order() -> None:
    results = [{"val_accuracy": a} for a in (0.5, 0.9, 0.8, 0.97, 0.99)]
    assert bench_sweep.epochs_to_reach(results, 0.97) == 4
    assert bench_sweep.epochs_to_reach(results, 1.0) == 5  # never: charged every epoch


def test_the_scale_benchmark_names_the_case_it_runs() -> None:
    from jobs import bench_scale

    with pytest.raises(SystemExit) as e:
        bench_scale.bench_scale(["nope"])
    assert "usage" in str(e.value) and "trials" in str(e.value)


def test_a_process_own_memory_leaves_out_the_object_store_pages_it_mapped() -> None:
    from jobs import bench_scale

    smaps = (
        b"7f00-7f10 rw-s 00000000 00:1a 12 /dev/shm/plasmaAbc (deleted)\n"
        b"Size:  100 kB\nPrivate_Clean:  4 kB\nPrivate_Dirty:  8 kB\nVmFlags: rd sh\n"
        b"5500-5600 rw-p 00000000 00:00 0 \n"
        b"Size:  100 kB\nPrivate_Clean:  1 kB\nPrivate_Dirty:  2 kB\nVmFlags: rd\n"
        b"5600-5700 r-xp 00000000 08:01 7 /usr/lib/libc.so.6\n"
        b"Private_Clean:  16 kB\nPrivate_Dirty:  0 kB\nVmFlags: rd ex\n"
    )
    assert bench_scale.private_pages(smaps) == (19 * 1024, 12 * 1024)
    with open("/proc/self/smaps", "rb") as f:  # the live format: all of it this process's own
        own, store = bench_scale.private_pages(f.read())
    assert store == 0 and own > 10 * 2**20


def test_the_autopilot_benchmark_names_its_halves() -> None:
    from jobs import bench_autopilot

    with pytest.raises(SystemExit) as e:
        bench_autopilot.bench_autopilot(["nope"])
    assert "curve" in str(e.value) and "tpe" in str(e.value)
    assert set(bench_autopilot.DATASETS) == {"digits", "hastie", "noisy", "diabetes"}
    # the target reads digits and hastie; noisy runs beside by default, diabetes on request
    assert bench_autopilot.TARGETED == ("digits", "hastie")
    assert bench_autopilot.CHOSEN == ["digits", "hastie", "noisy"]
    assert set(bench_autopilot.CHOSEN) <= set(bench_autopilot.DATASETS)
