"""The Python API, for notebooks and for code that drives sweeps itself: the same work as
the CLI, with typed results instead of printed tables.

    import orchestrator
    result = orchestrator.sweep("jobs/configs/quickstart.yaml", {"sweep.num_samples": 4})
    result.champion_values, result.test_metrics, result.model_uri

``import orchestrator`` stays cheap: Ray and MLflow are imported by the first call that
needs them."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from orchestrator import config as config_mod
from orchestrator.config import Config

if TYPE_CHECKING:
    from orchestrator.sweep.autopilot import AutopilotSummary
    from orchestrator.sweep.data_curve import CurveSummary
    from orchestrator.sweep.driver import SweepSummary
    from orchestrator.sweep.train import TrainSummary


def load_config(
    config: str | os.PathLike[str] | Mapping[str, Any] | Config | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """A validated config from a YAML path, a mapping of sections, a ``Config`` or nothing
    (the defaults), with ``overrides`` (dotted key -> value, e.g. ``{"train.lr": 0.01}``)
    applied. A bad key or value raises ``ConfigError`` naming it, as the CLI's exit 2."""
    if isinstance(config, Config):
        raw = config_mod.to_dict(config)
    elif isinstance(config, Mapping):
        raw = _plain(config)
    elif config is None:
        raw = {}
    else:
        raw = config_mod.to_dict(config_mod.load(config))
    for key, value in (overrides or {}).items():
        if not isinstance(key, str):
            raise config_mod.ConfigError(str(key), "an override key must be text", "use a.b.c")
        config_mod.set_dotted(raw, key, _plain(value))
    return config_mod.restore(config_mod.from_dict(raw))


def _plain(value: Any) -> Any:
    """Mappings and sequences as the dicts and lists YAML would give."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def sweep(
    config: str | os.PathLike[str] | Mapping[str, Any] | Config | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    out: Callable[[str], None] = print,
    verbose: bool = False,
) -> SweepSummary:
    """Run a sweep to its champion (``orchestrator sweep``): every trial, the champion's
    values, its test scores and its registered model (``result.model_uri``)."""
    from orchestrator.execution import runtime

    cfg = load_config(config, overrides)
    runtime.ensure_env()
    from orchestrator.sweep import driver

    return driver.run(cfg, out=out, verbose=verbose)


def autopilot(
    config: str | os.PathLike[str] | Mapping[str, Any] | Config | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    out: Callable[[str], None] = print,
    verbose: bool = False,
) -> AutopilotSummary:
    """Rounds of search steered by the diagnosis, to the champion (``orchestrator
    autopilot``): the sweep's results (``champion_values``, ``test_metrics``,
    ``model_uri``) and ``rounds`` (each round's space, reasons and best), ``stop`` (why it
    stopped) and ``curve`` (the data curve, when the champion overfit)."""
    from orchestrator.execution import runtime

    cfg = load_config(config, overrides)
    runtime.ensure_env()
    from orchestrator.sweep import autopilot as autopilot_mod

    return autopilot_mod.run(cfg, out=out, verbose=verbose)


def train(
    config: str | os.PathLike[str] | Mapping[str, Any] | Config | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    out: Callable[[str], None] = print,
    verbose: bool = False,
) -> TrainSummary:
    """One training run of the config as it stands (``orchestrator train``): its MLflow
    run and its record (every epoch's metrics, the best epoch, the outcome)."""
    from orchestrator.execution import runtime

    cfg = load_config(config, overrides)
    runtime.ensure_env()
    from orchestrator.sweep import train as train_mod

    return train_mod.train_run(cfg, out=out, verbose=verbose)


def curve(
    experiment: str,
    storage: str = "results",
    *,
    out: Callable[[str], None] = print,
    verbose: bool = False,
) -> CurveSummary:
    """Would more data help? (``orchestrator curve``): the finished sweep's champion trained
    on 1/8 to all of its training rows, 3 seeds each, and the curve read
    (``result.result.verdict``, ``.predictions`` at 2x and 4x the rows, ``.summary``)."""
    from orchestrator.execution import runtime

    runtime.ensure_env()
    from orchestrator.sweep import data_curve

    return data_curve.run(experiment, storage, out=out, verbose=verbose)
