"""Stage 1, the search: the sweep's Tune run over ``sweep.space`` into a trial book, and the
sweep-level pictures of it on the sweep's run."""

from __future__ import annotations

from orchestrator import config as config_mod
from orchestrator.analysis import plots
from orchestrator.config import Config
from orchestrator.core.ledger import TrialRecord
from orchestrator.execution import trials
from orchestrator.sweep import tuner
from orchestrator.sweep.book import Book
from orchestrator.sweep.context import Context
from orchestrator.tracking import outbox, writer


def search(ctx: Context) -> list[TrialRecord]:
    """Search the space (or go on with a resumed search): every trial's record."""
    book = Book(ctx, "trial", trials.total_trials(ctx.cfg))
    trainable = trials.make_trainable(ctx.cfg, ctx.stamp, ctx.storage, ctx.prep.summary)
    tuner.run_book(book, trainable, lambda: tuner.search_of(ctx.cfg, ctx.concurrency), ctx.name)
    return book.records


def log_sweep_plots(
    client: outbox.Outbox,
    run_id: str,
    cfg: Config,
    records: list[TrialRecord],
    champion_id: str | None,
) -> None:
    """On the sweep's run: every trial's best ranking metric over weight decay x dropout
    (or the first two searched keys), a parallel-coordinates plot of all searched keys, and
    where each trial's fit falls over the regularizers."""
    key, _ = config_mod.rank_metric(cfg)
    space = cfg.sweep.space
    done = [r for r in records if r.best is not None and key in r.best]
    keys = [k for k in space if all(k in r.values for r in done)]
    if not done or not keys:
        return
    points = [{**r.values, key: r.best[key]} for r in done]  # type: ignore[index]
    logs = {k for k, spec in space.items() if spec["type"] == "loguniform"}
    pair = (
        ["train.weight_decay", "model.dropout"]
        if {"train.weight_decay", "model.dropout"} <= set(keys)
        else keys[:2]
    )
    star = next((i for i, r in enumerate(done) if r.trial_id == champion_id), None)
    if len(pair) == plots.MAP_AXES:
        png = plots.regularization_map(
            points,
            pair[0],
            pair[1],
            key,
            log_x=pair[0] in logs,
            log_y=pair[1] in logs,
            champion=star,
        )
        writer.log_png(client, run_id, png, "regularization_map.png")
    png = plots.parallel_coordinates(points, keys, key, logs)
    writer.log_png(client, run_id, png, "parallel_coordinates.png")
    fits = [(r.values, r.best or {}, r.diagnosis) for r in done]
    fit_png = plots.sweep_fit_map(space, keys, fits)
    if fit_png is not None:
        writer.log_png(client, run_id, fit_png, "fit_map.png")
