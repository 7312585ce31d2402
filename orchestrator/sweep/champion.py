"""Stage 3, the champion: refit on train + validation (or the trial's own weights), the one
look at the test split, then registered in MLflow's model registry, or kept beside the
sweep for ``tracking replay`` when MLflow is away."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from orchestrator import config as config_mod
from orchestrator.config import Config
from orchestrator.core import checkpoint, loop, model, modelfile
from orchestrator.core import task as task_mod
from orchestrator.core.ledger import TrialRecord
from orchestrator.core.prepare import Prepared
from orchestrator.execution import trials
from orchestrator.sweep import screen, tuner
from orchestrator.sweep.context import Context
from orchestrator.tracking import champions

EXAMPLE_ROWS = 5  # test rows logged as the model's input example


@dataclass
class Champion:
    """The sweep's winner: its values, its test scores, and its registered version (None
    when MLflow was away at the end: kept for the replay)."""

    record: TrialRecord
    values: dict[str, Any]
    test_metrics: dict[str, float]
    version: str | None


def crown(ctx: Context, best: TrialRecord) -> Champion:
    """Train the champion's weights, score them once on the test split, register them."""
    # the values that produced the best epoch (a PBT trial's may have moved since)
    values = best.best_values or best.values
    cfg = config_mod.with_values(ctx.cfg, values)
    weights = _weights(ctx, cfg, best)
    # the stem's statistics are buffers: load_state_dict brings the trained ones
    net = model.network(cfg, ctx.prep.encoding, ctx.prep.task)
    net.load_state_dict(weights)
    spec = modelfile.spec_of(cfg, ctx.prep.encoding, ctx.prep.task)
    with screen.phase(ctx.out, "scoring the champion on the test split"):
        test_metrics, example = evaluate_test(net, ctx.prep)
    assert ctx.parent_id is not None
    version: str | None = None
    with screen.phase(ctx.out, "registering the champion in MLflow"):
        version = _register(ctx, cfg, best, net, example, spec, test_metrics)
    return Champion(best, values, test_metrics, version)


def _register(
    ctx: Context,
    cfg: Config,
    best: TrialRecord,
    net: torch.nn.Module,
    example: np.ndarray,
    spec: Any,
    test_metrics: dict[str, float],
) -> str | None:
    """The champion in the registry (its version), or kept for the replay when MLflow is
    away (None)."""
    assert ctx.parent_id is not None
    version: str | None = None
    if ctx.client.drain(block=True, patience=ctx.cfg.tracking.drain_timeout):
        # MLflow prints "Successfully registered model" and "Created version" to stderr:
        # the line register_champion prints says it, with the alias
        with contextlib.redirect_stderr(io.StringIO()):
            version = champions.register_champion(
                cfg,
                ctx.parent_id,
                net,
                example,
                spec,
                test_metrics,
                ctx.client.run_id(best.run_id) or "",
            )
    else:  # MLflow is still away: keep what registering needs, for the replay
        champions.keep_champion(
            ctx.path,
            cfg,
            ctx.parent_id,
            net,
            example,
            spec,
            test_metrics,
            best.run_id or "",
        )
    return version


def _weights(ctx: Context, cfg: Config, best: TrialRecord) -> dict[str, torch.Tensor]:
    """Refit on train + validation for the best epoch count (as scikit-learn's refit does),
    so the champion learns from every row but the test split; or take the trial's weights."""
    assert best.best is not None and best.checkpoint is not None
    if not cfg.sweep.refit:
        return checkpoint.load_checkpoint(best.checkpoint, cfg.sweep.storage_filesystem)["model"]
    epochs = int(best.best["epoch"])
    refit_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})
    trainable = trials.make_trainable(
        refit_cfg, ctx.stamp, ctx.storage, ctx.prep.summary, refit=True
    )
    name = f"{ctx.name}-refit-{time.strftime('%H%M%S')}"
    what = f"refitting the champion ({best.trial_id}) on train+validation for {epochs} epochs"
    with screen.phase(ctx.out, what):
        grid = tuner.make_tuner(
            refit_cfg, trainable, tuner.Search(), [], ctx.storage, name, filesystem=ctx.filesystem
        ).fit()
    result = grid[0]
    if result.error is not None:
        raise RuntimeError(f"the champion's refit failed: {result.error}")
    where = trials.final_checkpoint(result)
    return checkpoint.load_checkpoint(where, cfg.sweep.storage_filesystem)["model"]


@torch.no_grad()
def evaluate_test(net: torch.nn.Module, prep: Prepared) -> tuple[dict[str, float], np.ndarray]:
    """The one and only look at the test split. Also returns its first rows, the logged
    model's input example, so a streamed test split is read once."""
    first: list[np.ndarray] = []

    def batches() -> Iterator[loop.Batch]:
        for x, y in prep.test_batches():
            if not first:
                first.append(x[:EXAMPLE_ROWS].numpy())
            yield x, y

    scores = loop.evaluate(
        net.cpu(), batches(), prep.task, task_mod.loss_fn(prep.task), loop.LocalSeam(), "test"
    )
    return scores, first[0]
