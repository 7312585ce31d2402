"""GPU check: `python -m jobs.gpu_check` on a machine with a CUDA GPU (exit 3 without one).

Runs, in a few minutes:
  1. the training loop on the GPU in fp32, bf16 and fp16 (GradScaler), and fp32 with
     activation checkpointing: samples/s and peak memory, speedups over fp32;
  2. the CUDA/NCCL path end to end: `orchestrator train` with `scaling.use_gpu=true`
     (a TorchTrainer worker on the GPU, NCCL backend) on digits, logged to a temporary MLflow.
Last line: one JSON object with the figures.
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

import torch

from jobs import bench


def amp_figures(path: str) -> dict[str, float]:
    """Samples/s, peak memory and val accuracy on the GPU in fp32, bf16, fp16 and fp32 with
    activation checkpointing, and each one's speedup and memory ratio over fp32."""
    from orchestrator.core import data, loop

    out: dict[str, float] = {}
    variants: list[tuple[str, dict[str, Any]]] = [
        ("fp32", {}),
        ("bf16", {"train.precision": "bf16"}),
        ("fp16", {"train.precision": "fp16"}),
        ("fp32_ckpt", {"train.grad_checkpointing": True}),
    ]
    for name, over in variants:
        cfg = bench._config(
            path,
            **{"model.hidden": [4096] * 4, "train.batch_size": 4096, "train.epochs": 4, **over},
        )
        splits = data.load_splits(cfg.data)
        torch.cuda.reset_peak_memory_stats()
        seam = loop.LocalSeam(device=torch.device("cuda"))
        outcome = loop.train(cfg, splits, seam)
        assert outcome == "completed", (name, outcome)
        out[f"{name}_samples_per_s"] = bench.steady_rate(
            len(splits.y_train), [r["epoch_seconds"] for r in seam.reports]
        )
        out[f"{name}_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out[f"{name}_val_accuracy"] = seam.reports[-1]["val_accuracy"]
        print(
            f"  {name:10s} {out[f'{name}_samples_per_s']:>12,.0f} samples/s  "
            f"peak {out[f'{name}_peak_mb']:>8,.0f} MB  "
            f"val_accuracy {out[f'{name}_val_accuracy']:.3f}",
            flush=True,
        )
    for name in ("bf16", "fp16", "fp32_ckpt"):
        out[f"{name}_speedup"] = out[f"{name}_samples_per_s"] / out["fp32_samples_per_s"]
        out[f"{name}_memory_ratio"] = out[f"{name}_peak_mb"] / out["fp32_peak_mb"]
    return out


def end_to_end(tmp: Path) -> dict[str, float]:
    """`orchestrator train` on the GPU (a TorchTrainer worker, NCCL, bf16) on digits: whether it
    passed, and its time."""
    from orchestrator.core import data

    digits = data.export_digits(tmp / "digits.parquet")
    start = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "train",
            "jobs/configs/quickstart.yaml",
            f"data.path={digits}",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db",
            f"sweep.storage_path={tmp}/results",
            "scaling.use_gpu=true",
            "scaling.num_workers=1",
            "train.precision=bf16",
            "train.epochs=10",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "RAY_ADDRESS": "local"},
    )
    print(proc.stdout[-1500:], proc.stderr[-1500:] if proc.returncode else "", flush=True)
    return {"e2e_train_ok": float(proc.returncode == 0), "e2e_seconds": time.time() - start}


def main() -> int:
    """Both checks and their figures as JSON; 3 without a CUDA GPU, 1 when the run failed."""
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to check", file=sys.stderr)
        return 3
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        figures = amp_figures(bench._dataset(tmp))
        figures.update(end_to_end(tmp))
    print(json.dumps({"benchmark": "gpu_check", **{k: round(v, 4) for k, v in figures.items()}}))
    return 0 if figures["e2e_train_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
