"""Facts the sweep and the schedulers derive from a config, in one place."""

from __future__ import annotations

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
