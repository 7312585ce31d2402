"""The Tune run a stage asks for: what to search (a ``Search`` value), built into a tuner with
the stall watchdog and the checkpoint policy the scheduler needs, started or restored."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray import tune

from orchestrator import config as config_mod
from orchestrator.config import Config
from orchestrator.execution import trials
from orchestrator.sweep import hooks, recovery, screen
from orchestrator.sweep.book import Book


@dataclass(frozen=True)
class Search:
    """What one Tune run searches: the space, how many samples, the scheduler and searcher
    (None: Tune's defaults), how many trials at a time, and how often a crashed trial is
    retried. ``Search()`` is one plain run."""

    space: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 1
    scheduler: Any = None
    searcher: Any = None
    concurrency: int = 1
    retries: int | None = None  # a crashed trial's retries; None: as the config says
    time_budget_s: float | None = None  # Tune ends the run (trials and all) after this


def search_of(cfg: Config, concurrency: int) -> Search:
    """The sweep's search, as the config asks for it."""
    return Search(
        trials.search_space(cfg),
        trials.num_samples(cfg),
        trials.scheduler(cfg),
        trials.searcher(cfg, concurrency),
        concurrency,
    )


def make_tuner(
    cfg: Config,
    trainable: Any,
    search: Search,
    callbacks: list,
    storage: str,
    name: str,
    filesystem: Any = None,
) -> tune.Tuner:
    """A Tune tuner of ``trainable`` over ``search``, ranked by the config's metric, with the
    stall watchdog beside ``callbacks`` and checkpoints kept as the scheduler needs them."""
    key, mode = config_mod.rank_metric(cfg)
    scheduler = search.scheduler
    if hasattr(scheduler, "bind"):  # ASHA by promotion steers the searcher's cap
        grid = trials.total_trials(cfg) // trials.num_samples(cfg)
        scheduler.bind(search.searcher, search.concurrency, search.num_samples * grid)
    watchdog = hooks.Watchdog(cfg.sweep.stall_timeout, cfg.train.epochs)
    return tune.Tuner(
        trainable,
        param_space=search.space,
        tune_config=tune.TuneConfig(
            metric=key,
            mode=mode,
            num_samples=search.num_samples,
            search_alg=search.searcher,
            scheduler=scheduler,
            max_concurrent_trials=search.concurrency,
            time_budget_s=search.time_budget_s,
            # a fast-path trial's process (torch imported, data
            # read) serves the next trial too: ~1 s saved per trial
            reuse_actors=trials.fast_path(cfg),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            storage_filesystem=filesystem,
            callbacks=[*callbacks, watchdog],
            verbose=0,
            failure_config=tune.FailureConfig(
                max_failures=trials.max_failures(cfg) if search.retries is None else search.retries
            ),
            # fast-path trials checkpoint through Tune: keep the best N and the latest (PBT
            # clones any trial's latest, which a best-N policy may already have deleted)
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=None if cfg.sweep.scheduler == "pbt" else cfg.train.keep_checkpoints,
                checkpoint_score_attribute=key,
                checkpoint_score_order=mode,
            ),
        ),
    )


def run_book(book: Book, trainable: Any, search: Callable[[], Search], name: str) -> None:
    """Run ``search()`` into ``book`` as the Tune run ``name`` under the sweep's storage, or,
    when the sweep resumes, restore that run from its folder: finished trials are kept as
    they are, unfinished ones continue from their last checkpoint, errored ones stay
    failed; then the runs of trials Tune forgot are deleted. ``search`` is only called for a
    new run (a restored one keeps its own searcher and scheduler state)."""
    ctx = book.ctx
    path, fs = str(ctx.root / name), ctx.filesystem
    callback = hooks.attach(book, name)
    try:
        if ctx.resume and tune.Tuner.can_restore(path, storage_filesystem=fs):
            tuner = tune.Tuner.restore(
                path,
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=False,
                storage_filesystem=fs,
            )
        else:
            tuner = make_tuner(
                ctx.cfg, trainable, search(), [callback], ctx.storage, name, filesystem=fs
            )
        tuner.fit()
    finally:
        hooks.detach(name)
        view = screen.of(ctx.out)
        if view is not None:
            view.rest()
    if ctx.resume:
        recovery.forget_orphans(book)
