"""Facts the sweep and the schedulers derive from a config, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config.schema import Config


def rank_metric(cfg: Config) -> tuple[str, str]:
    """The reported value trials are ranked by, and its mode."""
    if cfg.sweep.objective == "gap_penalized":
        return "objective", "min"
    return cfg.sweep.metric, cfg.sweep.mode


def asha_promotes(cfg: Config) -> bool:
    """Whether the sweep runs ASHA by promotion (trials pause at rungs) rather than stopping."""
    sw = cfg.sweep
    fast = cfg.scaling.num_workers == 1 and cfg.scaling.fast_path
    return sw.scheduler == "asha" and (
        sw.asha_mode == "promote" or (sw.asha_mode == "auto" and fast)
    )


def rungs(cfg: Config) -> list[int]:
    """ASHA's rung epochs: grace_period x reduction_factor^k, below train.epochs (as Tune's
    ASHAScheduler places its milestones)."""
    sw, epochs = cfg.sweep, cfg.train.epochs
    out, r = [], min(sw.grace_period, epochs)
    while r < epochs:
        out.append(r)
        r *= sw.reduction_factor
    return out


@dataclass(frozen=True)
class Goal:
    """What a training run is judged by, built once from the config (``goal``): what the
    sweep and its schedulers need from the loop, so the loop never reads ``sweep.*``."""

    stop_metric: str
    """The metric early stopping watches (``sweep.metric``)."""
    stop_mode: str
    rank_metric: str
    """The value trials are ranked by: ``sweep.metric``, or ``objective``."""
    rank_mode: str
    gap_penalty: float | None
    """With ``sweep.objective: gap_penalized``: the penalty of the reported ``objective``
    (val_loss + penalty x max(0, gap)); None reports no objective."""
    keep_epochs: frozenset[int]
    """Epochs that must have a checkpoint of their own: ASHA by promotion resumes a paused
    trial from the checkpoint of its rung (an older one would replay epochs)."""


def goal(cfg: Config) -> Goal:
    """The ``Goal`` of every run of this config."""
    sw = cfg.sweep
    metric, mode = rank_metric(cfg)
    return Goal(
        stop_metric=sw.metric,
        stop_mode=sw.mode,
        rank_metric=metric,
        rank_mode=mode,
        gap_penalty=sw.gap_penalty if sw.objective == "gap_penalized" else None,
        keep_epochs=frozenset(rungs(cfg) if asha_promotes(cfg) else ()),
    )
