"""The rules that span sections, in one place (each section's own rules sit beside its
fields in ``schema.py``). Every rule raises ``ConfigError(dotted key, problem, fix)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.config.errors import ConfigError, check
from orchestrator.config.schema import Config, get

PBT_MUTABLE = frozenset(
    {
        "train.lr",
        "train.weight_decay",
        "train.l1",
        "model.dropout",
        "train.augment",
        "train.augment_noise",
        "train.augment_shift",
        "train.batch_size",
    }
)
"""What PBT may change mid-run: keys that keep the model's shape (a trial's weights go on)."""

# Resources, the data checked at the door, the schedulers' budget and where results go are
# decided once for the whole sweep; a trial may only change how it trains.
UNSEARCHABLE = frozenset({"train.epochs", "train.checkpoint_every"})


def cross_section(cfg: Config) -> None:
    """Rules between sections (the search space apart: ``space``)."""
    d, m, t, s, sw = cfg.data, cfg.model, cfg.train, cfg.scaling, cfg.sweep
    check(
        m.kind != "cnn" or d.shape is not None,
        "data.shape",
        "is not set but model.kind is cnn",
        "set data.shape: [channels, height, width], e.g. [1, 8, 8] for digits",
    )
    check(
        t.batch_size >= s.num_workers * t.grad_accum_steps,
        "train.batch_size",
        f"{t.batch_size} cannot be split into {s.num_workers} workers x "
        f"{t.grad_accum_steps} micro-batches",
        "raise train.batch_size (or lower scaling.num_workers)",
    )
    single_fast = s.num_workers == 1 and s.fast_path
    check(
        sw.scheduler != "pbt" or single_fast,
        "sweep.scheduler",
        f"pbt clones trials through Tune checkpoints, which only single-worker trials on "
        f"the fast path write; got scaling.num_workers={s.num_workers}, "
        f"scaling.fast_path={s.fast_path}",
        "set scaling.num_workers: 1 (and fast_path: true), or use scheduler asha or median",
    )
    check(
        sw.asha_mode != "promote" or single_fast,
        "sweep.asha_mode",
        f"promote pauses and resumes trials through Tune checkpoints, which only "
        f"single-worker trials on the fast path write; got scaling.num_workers="
        f"{s.num_workers}, scaling.fast_path={s.fast_path}",
        "set scaling.num_workers: 1, or sweep.asha_mode: stop",
    )
    if sw.scheduler == "pbt":
        check(
            sw.perturbation_interval < t.epochs,
            "sweep.perturbation_interval",
            f"{sw.perturbation_interval} is not below train.epochs ({t.epochs}): pbt would "
            "never perturb",
            "use e.g. train.epochs / 5",
        )
        check(
            sw.perturbation_interval % t.checkpoint_every == 0,
            "train.checkpoint_every",
            f"pbt clones the checkpoint of a perturbation epoch; every "
            f"{t.checkpoint_every} epochs does not divide sweep.perturbation_interval "
            f"({sw.perturbation_interval})",
            "set train.checkpoint_every: 1",
        )
        check(
            not sw.refit and not sw.confirm_seeds,
            "sweep.refit",
            "a pbt trial's score comes from a schedule of values that a refit or a seed "
            "rerun from scratch cannot replay",
            "set sweep.refit: false and "
            "sweep.confirm_seeds: 0 (the champion keeps the trial's own weights)",
        )


def space(cfg: Config, with_values: Callable[[Config, dict[str, Any]], Config]) -> None:
    """The search space against the rest of the config: each key real and searchable, each
    range end a valid config (``with_values`` builds one), and what the searcher and the
    scheduler can do with it."""
    sw = cfg.sweep
    check(
        sw.scheduler != "pbt" or bool(sw.space),
        "sweep.space",
        "pbt needs at least one key to mutate",
        "add e.g. train.weight_decay: {type: loguniform, low: 1e-6, high: 1e-1}",
    )
    check(
        not sw.confirm_seeds or "train.seed" not in sw.space,
        "sweep.confirm_seeds",
        "confirmation varies train.seed, which the search also varies",
        "remove train.seed from sweep.space, or set sweep.confirm_seeds: 0",
    )
    for dotted, spec in sw.space.items():
        key = f"sweep.space.{dotted}"
        try:
            get(cfg, dotted)
        except KeyError:
            raise ConfigError(
                key,
                f"'{dotted}' is not a config key",
                "search a real key, e.g. train.weight_decay or model.dropout",
            ) from None
        check(
            (dotted.startswith(("train.", "model.")) or dotted == "data.max_train_rows")
            and dotted not in UNSEARCHABLE,
            key,
            "only training and model settings (and data.max_train_rows) can be searched",
            "search e.g. train.weight_decay, train.lr or model.hidden; set the rest outside "
            "sweep.space",
        )
        if spec["type"] in ("choice", "grid"):
            for v in spec["values"]:
                _candidate(cfg, dotted, v, f"{key}.values", with_values)
        else:
            _candidate(cfg, dotted, spec["low"], key, with_values)
            if spec["type"] != "randint":  # randint's high is exclusive
                _candidate(cfg, dotted, spec["high"], key, with_values)
    _searcher(cfg)


def _candidate(
    cfg: Config,
    dotted: str,
    value: Any,
    key: str,
    with_values: Callable[[Config, dict[str, Any]], Config],
) -> None:
    """A sampled value must itself make a valid config: check the range ends now."""
    try:
        with_values(cfg, {dotted: value})
    except ConfigError as e:
        raise ConfigError(
            key, f"the value {value!r} would be invalid: {e.problem}", e.fix
        ) from None


def _searcher(cfg: Config) -> None:
    """What each searcher and scheduler can do with the space, checked before any trial."""
    sw = cfg.sweep
    kinds = {k: spec["type"] for k, spec in sw.space.items()}
    for k, kind in kinds.items():
        check(
            sw.searcher != "grid" or kind in ("grid", "choice"),
            f"sweep.space.{k}",
            f"the grid searcher needs a list of values, got type {kind}",
            "write {type: grid, values: [...]}, or use searcher random or optuna",
        )
        check(
            sw.searcher != "optuna" or kind != "grid",
            f"sweep.space.{k}",
            "optuna samples; it cannot enumerate a grid",
            "use type choice, or searcher grid",
        )
        check(
            sw.scheduler != "pbt" or k in PBT_MUTABLE,
            f"sweep.space.{k}",
            "pbt hands a trial's weights to another configuration, so it can only "
            "change keys that keep the model's shape",
            f"search only {', '.join(sorted(PBT_MUTABLE))}, or use scheduler asha",
        )
