"""Stage 2, confirmation: the top configurations rerun with fresh seeds, the champion chosen
by the mean over seeds."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from ray import tune

from orchestrator import config as config_mod
from orchestrator.analysis import progress
from orchestrator.core.ledger import TrialRecord
from orchestrator.execution import trials
from orchestrator.sweep import tuner
from orchestrator.sweep.book import Book
from orchestrator.sweep.context import Context
from orchestrator.tracking import schema


def confirm(ctx: Context, records: list[TrialRecord]) -> tuple[TrialRecord, list[dict[str, Any]]]:
    """Rerun the top ``confirm_top`` configurations with ``confirm_seeds`` fresh seeds each
    and choose the champion by the mean. Fresh seeds, not the searched one: the search
    picked each winner partly for its lucky seed, and counting that run again would keep
    the luck in the mean. Returns the champion and one row per configuration."""
    cfg, sw = ctx.cfg, ctx.cfg.sweep
    key, mode = config_mod.rank_metric(cfg)
    top = _top(records, key, mode, sw.confirm_top)
    sets = [
        {**r.values, "train.seed": cfg.train.seed + 1 + k}
        for r in top
        for k in range(sw.confirm_seeds)
    ]
    ctx.out(
        f"[confirm] {len(top)} best configuration(s) x {sw.confirm_seeds} seeds = "
        f"{len(sets)} runs, full budget"
    )
    book = Book(ctx, "confirm", len(sets))
    trainable = trials.make_trainable(cfg, ctx.stamp, ctx.storage, ctx.prep.summary)

    def search() -> tuner.Search:
        return tuner.Search(
            {trials.SET_KEY: tune.grid_search(sets)},
            searcher=tune.search.BasicVariantGenerator(max_concurrent=ctx.concurrency),
            concurrency=ctx.concurrency,
        )

    tuner.run_book(book, trainable, search, f"{ctx.name}-confirm")
    rows = _rows(top, book.records, key)
    if not rows:
        raise RuntimeError("no confirmation run finished; see the errors above")
    rows.sort(key=lambda row: row["mean"], reverse=mode == "max")
    for i, row in enumerate(rows):
        ctx.out(
            f"[confirm] {'*' if i == 0 else ' '} trial {row['trial_id']}: {key} "
            f"{row['mean']:.4f} +- {row['std']:.4f} over {row['n']} seeds "
            f"(search run {row['search']:.4f}; {row['score_key']} {row['score']:.4f})"
        )
        assert ctx.parent_id is not None
        ctx.client.set_tag(
            ctx.parent_id,
            f"{schema.CONFIRM}{row['trial_id']}",
            f"{key} mean={row['mean']:.5f} std={row['std']:.5f} n={row['n']}",
        )
    win = rows[0]
    assert ctx.parent_id is not None
    ctx.client.log_metric(ctx.parent_id, f"confirm_{key}_mean", win["mean"])
    ctx.client.log_metric(ctx.parent_id, f"confirm_{key}_std", win["std"])
    table = [{k: v for k, v in row.items() if k not in ("record", "runs")} for row in rows]
    return _champion(win, key, mode), table


def _top(records: list[TrialRecord], key: str, mode: str, n: int) -> list[TrialRecord]:
    """The ``n`` best configurations of the search (the same values drawn twice are one)."""
    done = [r for r in records if r.best is not None and r.status != "ERROR"]
    top: list[TrialRecord] = []
    for r in sorted(done, key=lambda r: r.best[key], reverse=mode == "max"):  # type: ignore[index]
        if _without_seed(r.values) not in {_without_seed(t.values) for t in top}:
            top.append(r)
    return top[:n]


def _rows(top: list[TrialRecord], runs: list[TrialRecord], key: str) -> list[dict[str, Any]]:
    """Per configuration: its confirmation runs and their mean, spread and accuracy."""
    rows: list[dict[str, Any]] = []
    for r in top:
        mine = [
            c
            for c in runs
            if c.best is not None
            and c.status != "ERROR"
            and _without_seed(c.values) == _without_seed(r.values)
        ]
        if not mine:
            continue
        scores = np.array([c.best[key] for c in mine])  # type: ignore[index]
        shown = progress.score_key(mine[0].best or {})  # the task's headline score
        accs = np.array([c.best.get(shown, np.nan) for c in mine])  # type: ignore[union-attr]
        rows.append(
            {
                "trial_id": r.trial_id,
                "values": r.values,
                "record": r,
                "runs": mine,
                "mean": float(scores.mean()),
                "std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
                "n": len(mine),
                "score_key": shown,
                "score": float(np.nanmean(accs)),
                "search": r.best[key],  # type: ignore[index]
            }
        )
    return rows


def _champion(win: dict[str, Any], key: str, mode: str) -> TrialRecord:
    """The winning configuration's record, scored by its mean, with the best seed's
    checkpoint and the median of the seeds' best epochs as the refit length (robust to one
    early or late seed)."""
    best_run = (min if mode == "min" else max)(win["runs"], key=lambda c: c.best[key])
    base: TrialRecord = win["record"]
    epochs = float(np.median([c.best["epoch"] for c in win["runs"]]))
    return TrialRecord(
        base.trial_id,
        base.values,
        base.run_id,
        base.epochs,
        {
            **(best_run.best or {}),
            key: win["mean"],
            "epoch": round(epochs),
            win["score_key"]: win["score"],
        },
        best_run.checkpoint,
        base.status,
    )


def _without_seed(values: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in values.items() if k != "train.seed"}, sort_keys=True)
