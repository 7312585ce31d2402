"""How one trial runs under Ray Tune, and the searchers and schedulers that drive them.

Two ways to run the same loop (``loop.train``), chosen by ``scaling.num_workers``:
- **fast path**, 1 worker: the loop runs inside the Tune trial's own process, which reports
  and checkpoints through Tune (about a second to start; schedulers can pause, clone and
  restore it: HyperBand, PBT);
- **N workers**: the trial starts a TorchTrainer (DDP) and relays its reports to Tune
  itself (``orchestrator.execution.relay``: Ray's ``TuneReportCallback`` can deadlock at a trial's
  end), 15-20 s to start a worker group here.
Either way the trial reports the same metrics each epoch and writes the same checkpoints.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Any

import torch
from torch import nn

from orchestrator import config as config_mod
from orchestrator.config import Config
from orchestrator.core import checkpoint, data, loop, placement, storage

SET_KEY = "_set"  # a param_space key whose value is a whole dict of dotted values (confirm runs)


def values_of(trial_config: dict[str, Any], space_keys: Any = None) -> dict[str, Any]:
    """The dotted config values a trial was given (a confirm run's come packed in one key)."""
    out = {
        k: v
        for k, v in trial_config.items()
        if k != SET_KEY and (space_keys is None or k in space_keys)
    }
    return {**trial_config.get(SET_KEY, {}), **out}


def fast_path(cfg: Config) -> bool:
    """Whether the loop runs inside the Tune trial's own process (one worker, fast path on)."""
    return cfg.scaling.num_workers == 1 and cfg.scaling.fast_path


class TuneSeam:
    """The loop inside a single-worker Tune trial: reports and checkpoints go to Tune."""

    rank, world_size = 0, 1

    def __init__(self, use_gpu: bool) -> None:
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def wrap(self, net: nn.Module) -> nn.Module:
        """Move to the device (one worker: no DDP)."""
        return net.to(self.device)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Identity: one worker's sum is its own."""
        return t

    def report(self, values: dict[str, float], checkpoint_dir: str | None) -> None:
        """Report the epoch's metrics to Tune, with the checkpoint folder when given."""
        from ray import tune

        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(values, checkpoint=ckpt)

    def restore(self) -> dict[str, Any] | None:
        """The checkpoint Tune hands the trial to resume from, or None."""
        # A retried, resumed, unpaused (HyperBand) or exploited (PBT) trial starts here.
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return checkpoint.load_checkpoint(d)


def trial_resources(cfg: Config, cluster: dict[str, float] | None = None) -> dict[str, float]:
    """What the Tune trial itself holds. On the fast path it is the worker (anywhere: when
    its node is lost, Tune retries it from its checkpoint). Otherwise it only steers its
    TorchTrainer, whose workers hold the CPUs/GPUs: a token 1 MiB of memory (Tune refuses an
    empty request) and, where ``cluster`` has it, a sliver of the head-only resource, so a
    lost worker node never takes the trial's steering with it."""
    s = cfg.scaling
    if fast_path(cfg):
        return {"cpu": s.cpus_per_worker, "gpu": 1 if s.use_gpu else 0}
    return {"cpu": 0, "memory": 2**20, **placement.steering(cluster or {})}


def make_trainable(
    cfg: Config, stamp: str, storage: str, summary: data.Summary | None, refit: bool = False
) -> Any:
    """The Tune trainable for this config. Its name (``trial_fn``) is what a resumed sweep
    is matched against, so both paths share it."""
    from ray import tune

    # Trials need no secret (the driver is MLflow's only writer), and Tune pickles this
    # trainable into the sweep folder and Ray's object store: it carries them redacted.
    cfg = config_mod.redact(cfg)

    def trial_fn(trial_config: dict[str, Any]) -> None:
        trial_cfg = config_mod.with_values(cfg, values_of(trial_config))
        if fast_path(trial_cfg):
            _run_in_trial(trial_cfg, summary, refit)
            return
        from orchestrator.execution import ray_train

        # Train V2 workers block on each report until the controller polls (every 2 s by
        # default): with epochs of a fraction of a second that poll would set the pace.
        # The trainer passes this variable on to its controller.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
        trial_id = tune.get_context().get_trial_id()
        # The same name on a retry or a resumed sweep: Train picks up its own checkpoints.
        name = f"{cfg.experiment}-{stamp}-{trial_id}" + ("-refit" if refit else "")
        # Not Ray's TuneReportCallback: its bridge can deadlock at the end of a trial
        # (see orchestrator.execution.relay). The trial relays the Train run's reports itself.
        queue = ray_train.report_queue()
        trainer = ray_train.make_trainer(
            trial_cfg,
            name,
            storage,
            callbacks=[ray_train.ReportRelay(queue)],
            refit=refit,
            summary=summary,
        )
        ray_train.fit_relayed(trainer, queue, tune.report)

    import ray

    cluster = ray.cluster_resources() if ray.is_initialized() else {}
    return tune.with_resources(trial_fn, trial_resources(cfg, cluster))


def _run_in_trial(cfg: Config, summary: data.Summary | None, refit: bool) -> None:
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    seam, goal = TuneSeam(cfg.scaling.use_gpu), config_mod.goal(cfg)
    if summary is not None:
        from orchestrator.execution import ray_train

        group = "train+val" if refit else "train"
        ds = ray_train.stream_datasets(cfg, summary)
        feed = ray_train.stream_feed(
            cfg, ray_train.stream_info(summary), seam, ds[group], ds["val"]
        )
        loop.train(cfg, feed, seam, goal)
        return
    splits = _splits(cfg)
    loop.train(cfg, data.merge_validation(splits) if refit else splits, seam, goal)


_CACHE: dict[str, data.Splits] = {}


def _splits(cfg: Config) -> data.Splits:
    """The splits, read once per process: a reused trial process (Tune's reuse_actors)
    serves the next trial from memory. Keyed by the data settings, the task, the loss and
    the file's mtime."""
    import json

    try:
        stamp = os.stat(cfg.data.path).st_mtime_ns
    except OSError:  # object storage: no cheap stamp, read again
        return data.load_splits(cfg)
    key = json.dumps([cfg.data.model_dump(), cfg.task, cfg.train.loss, stamp], sort_keys=True)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = data.load_splits(cfg)
    return _CACHE[key]


def final_checkpoint(result: Any) -> str:
    """The last checkpoint folder of a finished trial, whichever path it ran on."""
    if result.checkpoint is not None:  # fast path: Tune's own checkpoint
        return storage.uri_of(result.checkpoint.filesystem, result.checkpoint.path)
    return str(result.metrics["checkpoint_path"])  # relayed from the TorchTrainer


def max_failures(cfg: Config) -> int:
    """Retries of a crashed trial. On the fast path the trial is the worker, so a worker's
    restarts (``scaling.max_failures``) are the trial's too."""
    sw, s = cfg.sweep.max_failures, cfg.scaling.max_failures
    if -1 in (sw, s if fast_path(cfg) else 0):
        return -1
    return sw + (s if fast_path(cfg) else 0)


# ---------------------------------------------------------------- searchers and schedulers


def search_space(cfg: Config) -> dict[str, Any]:
    """``sweep.space`` as Tune's param_space: each range as its sampler, a grid (or a choice
    under the grid searcher) as a grid search."""
    from ray import tune

    grid = cfg.sweep.searcher == "grid"
    out: dict[str, Any] = {}
    for key, spec in cfg.sweep.space.items():
        kind = spec["type"]
        if kind == "uniform":
            out[key] = tune.uniform(spec["low"], spec["high"])
        elif kind == "loguniform":
            out[key] = tune.loguniform(spec["low"], spec["high"])
        elif kind == "randint":
            out[key] = tune.randint(spec["low"], spec["high"])
        elif kind == "choice" and not grid:
            out[key] = tune.choice(spec["values"])
        else:  # grid, or a choice the grid searcher enumerates
            out[key] = tune.grid_search(spec["values"])
    return out


def num_samples(cfg: Config) -> int:
    """Tune's num_samples: the grid searcher runs each combination once; the others draw
    ``sweep.num_samples`` (times any grid dimensions, as Tune does)."""
    return 1 if cfg.sweep.searcher == "grid" else cfg.sweep.num_samples


def total_trials(cfg: Config) -> int:
    """How many trials the sweep runs: ``num_samples`` times the size of every grid."""
    sizes = [
        len(s["values"])
        for s in cfg.sweep.space.values()
        if s["type"] == "grid" or (s["type"] == "choice" and cfg.sweep.searcher == "grid")
    ]
    return num_samples(cfg) * math.prod(sizes)


def searcher(
    cfg: Config, concurrency: int, warm: tuple[list[dict], list[float]] | None = None
) -> Any:
    """Seeded: the same ``sweep.seed`` proposes the same configurations. ``warm``: trials
    already run (their values and results, all inside the space), which Optuna TPE is told
    of before it proposes anything (an autopilot round after the first)."""
    from ray import tune

    if cfg.sweep.searcher == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # model.hidden's choices are lists: fine in the in-memory study Tune keeps, which is
        # all Optuna's warning is about (its persistent storages want plain values)
        warnings.filterwarnings("ignore", "Choices for a categorical distribution")
        points, rewards = warm if warm and warm[0] else (None, None)
        # TPE draws its first 10 trials at random; a round told of earlier trials inside
        # its (steered) space models from them at once, or it would be a random search
        # (a narrowed space keeps only a few of the earlier trials: never 10)
        tpe = optuna.samplers.TPESampler(seed=cfg.sweep.seed, n_startup_trials=0 if points else 10)
        # metric and mode reach it from the TuneConfig
        return ConcurrencyLimiter(
            OptunaSearch(sampler=tpe, points_to_evaluate=points, evaluated_rewards=rewards),
            max_concurrent=concurrency,
        )
    # Random search and grids both come from Tune's variant generator; given a generator,
    # Tune leaves the concurrency cap to it.
    return tune.search.BasicVariantGenerator(
        random_state=cfg.sweep.seed, max_concurrent=concurrency
    )


def scheduler(cfg: Config, earlier: dict[str, list[float]] | None = None) -> Any:
    """Tune's scheduler for ``sweep.scheduler`` (ASHA by promotion where it promotes); None
    for fifo. ``earlier``: trials of earlier rounds over the same epochs (their ranked value
    per epoch) that ASHA by promotion ranks each rung against (``Ladder.carry``)."""
    from ray.tune import schedulers

    sw, epochs = cfg.sweep, cfg.train.epochs
    grace = min(sw.grace_period, epochs)
    if sw.scheduler == "asha" and config_mod.asha_promotes(cfg):
        from orchestrator.execution.tune_asha import PromotionASHA

        return PromotionASHA(
            config_mod.rungs(cfg),
            sw.reduction_factor,
            *config_mod.rank_metric(cfg),
            earlier=earlier,
        )
    if sw.scheduler == "asha":
        return schedulers.ASHAScheduler(
            time_attr="epoch",
            max_t=epochs,
            grace_period=grace,
            reduction_factor=sw.reduction_factor,
        )
    if sw.scheduler == "hyperband":
        # Asynchronous HyperBand: ASHA run over several brackets, each with its own minimum
        # budget, which hedges against stopping slow starters too early. Unlike Tune's
        # synchronous HyperBandScheduler it never pauses a trial to wait for a bracket to
        # fill, so it works for DDP trials too and keeps every CPU busy.
        return schedulers.AsyncHyperBandScheduler(
            time_attr="epoch",
            max_t=epochs,
            grace_period=grace,
            reduction_factor=sw.reduction_factor,
            brackets=hyperband_brackets(cfg),
        )
    if sw.scheduler == "median":
        return schedulers.MedianStoppingRule(
            time_attr="epoch", grace_period=grace, min_samples_required=3
        )
    if sw.scheduler == "pbt":
        return schedulers.PopulationBasedTraining(
            time_attr="epoch",
            perturbation_interval=sw.perturbation_interval,
            hyperparam_mutations=pbt_mutations(cfg),
            custom_explore_fn=functools.partial(clamp, space=sw.space),
        )
    return None  # fifo: every trial runs its full budget


def clamp(values: dict[str, Any], space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Keep PBT's perturbations (x0.8 / x1.2) inside the searched ranges: a dropout pushed
    past its range would make an invalid config and crash the trial."""
    out = dict(values)
    for key, spec in space.items():
        if key in out and spec["type"] in ("uniform", "loguniform", "randint"):
            high = spec["high"] - 1 if spec["type"] == "randint" else spec["high"]
            out[key] = type(out[key])(min(max(out[key], spec["low"]), high))
    return out


def hyperband_brackets(cfg: Config) -> int:
    """``sweep.brackets``, less those whose first rung would not come before the last epoch
    (they would stop nothing)."""
    sw, b = cfg.sweep, 1
    while (
        b < sw.brackets
        and min(sw.grace_period, cfg.train.epochs) * (sw.reduction_factor**b) < cfg.train.epochs
    ):
        b += 1
    return b


def pbt_mutations(cfg: Config) -> dict[str, Any]:
    """PBT's ``hyperparam_mutations``: each choice's or grid's values, each range's sampler."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in cfg.sweep.space.items():
        kind = spec["type"]
        if kind in ("choice", "grid"):
            out[key] = list(spec["values"])
        else:
            out[key] = {
                "uniform": tune.uniform,
                "loguniform": tune.loguniform,
                "randint": tune.randint,
            }[kind](spec["low"], spec["high"])
    return out


# ---------------------------------------------------------------- fitting the cluster


def alive_nodes() -> list[dict[str, float]]:
    """The resources of each live Ray node, to fit the trials to the cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
