"""`python -m jobs.bench sweep`: what the sweep machinery buys, measured on digits.

1. Fast path: 8 single-worker trials run inside their Tune trials vs the same 8 trials each
   through a TorchTrainer; wall-time ratio (``fast_path_speedup``).
2. ASHA vs full-budget random search (FIFO) over the same space and searcher seeds: the
   epochs each spends until it first reaches within 0.5 percentage points of the best
   validation accuracy any of them finds (``asha_epochs_fraction``, ASHA's / FIFO's). Summed
   over several searcher seeds, so one lucky draw order does not decide it. A search that
   never gets there is charged every epoch it ran. ASHA is ours, by promotion; Tune's
   stopping ASHA runs on the same draws for comparison (``asha_stop_epochs_fraction``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.core import placement
from orchestrator.execution import runtime

FAST_TRIALS, FAST_EPOCHS = 8, 3
SEARCH_TRIALS = int(os.environ.get("BENCH_TRIALS", 64))
SEARCH_EPOCHS = int(os.environ.get("BENCH_EPOCHS", 30))
SEEDS = tuple(range(int(os.environ.get("BENCH_SEEDS", 5))))
REDUCTION = int(os.environ.get("BENCH_RF", 3))
GRACE = int(os.environ.get("BENCH_GRACE", 1))
ASHA_SAMPLES = int(os.environ.get("BENCH_ASHA_SAMPLES", SEARCH_TRIALS))
TOLERANCE = 0.005  # 0.5 percentage points
SEARCHES = {  # the same seeded draws each time
    "asha": {"sweep.scheduler": "asha", "sweep.asha_mode": "promote"},  # Li et al. 2020
    "asha_stop": {"sweep.scheduler": "asha", "sweep.asha_mode": "stop"},  # Tune's ASHAScheduler
    "fifo": {"sweep.scheduler": "fifo"},  # full-budget random search
}
SPACE = {  # the regularization axis (L1, L2, dropout) and the learning rate, searched wide,
    # as when the right scale is unknown: most draws are poor, few are near the best
    "train.l1": {"type": "loguniform", "low": 1e-8, "high": 1e-1},
    "train.weight_decay": {"type": "loguniform", "low": 1e-6, "high": 10.0},
    "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.95},
    "train.lr": {"type": "loguniform", "low": 1e-7, "high": 1.0},
}


def _config(path: str, tmp: Path, **over: Any) -> Any:
    from orchestrator import config

    raw: dict[str, Any] = {
        "experiment": "bench-sweep",
        # a validation split as big as digits allows (809 rows), so 0.5 pp is 4 rows rather
        # than a single borderline digit flipping from one epoch to the next
        "data": {"path": path, "test_fraction": 0.1, "val_fraction": 0.5},
        "model": {"hidden": [256]},
        "train": {"epochs": SEARCH_EPOCHS, "batch_size": 64},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "sweep": {
            "space": SPACE,
            "storage_path": str(tmp / "results"),
            "grace_period": GRACE,
            "reduction_factor": REDUCTION,
            "metric": "val_loss",
            "mode": "min",
        },
    }
    for dotted, v in over.items():
        config.set_dotted(raw, dotted, v)
    return config.from_dict(raw)


class _Tape:
    """A Tune callback that keeps every epoch's result in the order the driver got them."""

    def __new__(cls) -> Any:
        from ray.tune import Callback

        class Tape(Callback):
            def __init__(self) -> None:
                self.results: list[dict[str, float]] = []

            def on_trial_result(
                self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
            ) -> None:
                self.results.append(
                    {
                        "trial": trial.trial_id,
                        "epoch": result["epoch"],
                        "val_accuracy": result["val_accuracy"],
                    }
                )

        return Tape()


def _fit(cfg: Any, tmp: Path, name: str, samples: int) -> tuple[float, list[dict[str, float]]]:
    import ray

    from orchestrator.execution import trials
    from orchestrator.sweep import tuner

    concurrency = placement.trial_concurrency(cfg, ray.cluster_resources())
    tape = _Tape()
    search = tuner.Search(
        trials.search_space(cfg),
        samples,
        trials.scheduler(cfg),
        trials.searcher(cfg, concurrency),
        concurrency,
    )
    trainable = trials.make_trainable(cfg, name, str(tmp / "results"), None)
    run = tuner.make_tuner(cfg, trainable, search, [tape], str(tmp / "results"), name)
    start = time.perf_counter()
    grid = run.fit()
    seconds = time.perf_counter() - start
    errors = [grid[i].error for i in range(len(grid)) if grid[i].error is not None]
    if errors:
        raise RuntimeError(f"{name}: {len(errors)} trial(s) failed: {errors[0]}")
    return seconds, tape.results


def epochs_to_reach(results: list[dict[str, float]], target: float) -> int:
    """Epochs run (all trials together, in arrival order) until one reaches the target."""
    for i, r in enumerate(results):
        if r["val_accuracy"] >= target - 1e-12:
            return i + 1
    return len(results)


def bench_sweep() -> dict[str, float]:
    """Fast path vs TorchTrainer trials, and ASHA vs FIFO epochs to the best, on digits."""
    from orchestrator.core import data

    runtime.ensure_env()
    os.environ.setdefault("RAY_ADDRESS", "local")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = str(data.export_digits(tmp / "digits.parquet"))
        runtime.init_ray()
        print(f"sweep benchmark on digits; {os.cpu_count()} CPUs")

        short = {"train.epochs": FAST_EPOCHS, "sweep.scheduler": "fifo"}
        fast_s, _ = _fit(_config(path, tmp, **short), tmp, "fast", FAST_TRIALS)
        slow_s, _ = _fit(
            _config(path, tmp, **short, **{"scaling.fast_path": False}), tmp, "trainer", FAST_TRIALS
        )
        print(
            f"  {FAST_TRIALS} single-worker trials x {FAST_EPOCHS} epochs: fast path "
            f"{fast_s:.1f} s, TorchTrainer per trial {slow_s:.1f} s "
            f"-> {slow_s / fast_s:.1f}x faster"
        )

        to_target = {name: 0 for name in SEARCHES}
        ran = {name: 0 for name in SEARCHES}
        for seed in SEEDS:
            runs = {}
            for name, over in SEARCHES.items():
                # one trial at a time: the order epochs arrive in, and so the figure, is then
                # the same on every machine rather than a race between concurrent trials
                cfg = _config(path, tmp, **over, **{"sweep.seed": seed, "sweep.max_concurrent": 1})
                samples = SEARCH_TRIALS if name == "fifo" else ASHA_SAMPLES
                runs[name] = _fit(cfg, tmp, f"{name}-{seed}", samples)
            best = max(r["val_accuracy"] for _, res in runs.values() for r in res)
            reached = {
                name: epochs_to_reach(res, best - TOLERANCE) for name, (_, res) in runs.items()
            }
            for name, (_, res) in runs.items():
                to_target[name] += reached[name]
                ran[name] += len(res)
            print(
                f"  seed {seed}: best val_accuracy {best:.4f}; epochs to within 0.5 pp: "
                + ", ".join(
                    f"{name} {reached[name]} (of {len(res)} run, {sec:.0f} s)"
                    for name, (sec, res) in runs.items()
                )
                + f"; ASHA/FIFO {reached['asha'] / reached['fifo']:.2f}"
            )
        import ray

        ray.shutdown()
    fraction = to_target["asha"] / to_target["fifo"]
    stop_fraction = to_target["asha_stop"] / to_target["fifo"]
    print(
        f"  {SEARCH_TRIALS} trials x {SEARCH_EPOCHS} epochs, seeds {list(SEEDS)}: ASHA "
        f"(by promotion) spends {fraction:.2f} of FIFO's epochs to get within 0.5 pp of "
        f"the best; Tune's stopping ASHA {stop_fraction:.2f}"
    )
    return {
        "fast_path_speedup": round(slow_s / fast_s, 3),
        "fast_path_seconds": round(fast_s, 2),
        "trainer_path_seconds": round(slow_s, 2),
        "asha_epochs_fraction": round(fraction, 4),
        "asha_stop_epochs_fraction": round(stop_fraction, 4),
        "asha_epochs_to_target": to_target["asha"],
        "asha_stop_epochs_to_target": to_target["asha_stop"],
        "fifo_epochs_to_target": to_target["fifo"],
        "asha_epochs_total": ran["asha"],
        "asha_stop_epochs_total": ran["asha_stop"],
        "fifo_epochs_total": ran["fifo"],
    }
