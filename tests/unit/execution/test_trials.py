"""What each searcher and scheduler accepts and how it is built from the config, the fast
path's resources and retries, PBT's clamping and a confirm run's values (``execution.trials``;
no Ray runtime)."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import make_cfg
from orchestrator import config
from orchestrator.config import ConfigError
from orchestrator.core import placement
from orchestrator.execution import trials


def _cfg(**over: Any) -> config.Config:
    return make_cfg(**over)


# ---------------------------------------------------------------- searchers, schedulers


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"sweep.searcher": "grid"}, "sweep.space.train.l1"),  # loguniform cannot be enumerated
        (
            {
                "sweep.searcher": "optuna",
                "sweep.space.model.dropout": {"type": "grid", "values": [0.1, 0.2]},
            },
            "sweep.space.model.dropout",
        ),
        (
            {"sweep.scheduler": "pbt", "scaling.num_workers": 2, "sweep.refit": False},
            "sweep.scheduler",
        ),
        (
            {"sweep.scheduler": "pbt", "scaling.fast_path": False, "sweep.refit": False},
            "sweep.scheduler",
        ),
        ({"sweep.scheduler": "hyperband", "sweep.brackets": 0}, "sweep.brackets"),
        (
            {
                "sweep.scheduler": "pbt",
                "sweep.refit": False,
                "sweep.space.model.hidden": {"type": "choice", "values": [[64], [128]]},
            },
            "sweep.space.model.hidden",
        ),
        ({"sweep.scheduler": "pbt"}, "sweep.refit"),  # a refit cannot replay a pbt schedule
        (
            {"sweep.scheduler": "pbt", "sweep.refit": False, "sweep.perturbation_interval": 30},
            "sweep.perturbation_interval",
        ),
        (
            {"sweep.scheduler": "pbt", "sweep.refit": False, "train.checkpoint_every": 3},
            "train.checkpoint_every",
        ),
        (
            {"sweep.space.scaling.num_workers": {"type": "choice", "values": [1, 2]}},
            "sweep.space.scaling.num_workers",
        ),  # resources are the sweep's, not a trial's
        (
            {"sweep.space.train.epochs": {"type": "choice", "values": [5, 10]}},
            "sweep.space.train.epochs",
        ),
        (
            {
                "sweep.objective": "gap_penalized",
                "sweep.metric": "val_accuracy",
                "sweep.mode": "max",
            },
            "sweep.objective",
        ),
        ({"sweep.confirm_seeds": 1}, "sweep.confirm_seeds"),
        ({"sweep.searcher": "bayes"}, "sweep.searcher"),
        ({"sweep.scheduler": "pbt", "sweep.refit": False, "sweep.space": {}}, "sweep.space"),
        ({"sweep.asha_mode": "eager"}, "sweep.asha_mode"),
        ({"sweep.asha_mode": "promote", "scaling.num_workers": 2}, "sweep.asha_mode"),
        ({"sweep.asha_mode": "promote", "sweep.scheduler": "median"}, "sweep.asha_mode"),
    ],
)
def test_what_a_searcher_or_scheduler_cannot_do_is_a_config_error(over: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        _cfg(**over)
    assert e.value.key == key


def test_the_default_space_is_the_regularization_axis() -> None:
    assert set(_cfg().sweep.space) == {"train.l1", "train.weight_decay", "model.dropout"}


def test_the_grid_searcher_enumerates_choices_once_each() -> None:
    cfg = _cfg(
        **{
            "sweep.searcher": "grid",
            "sweep.num_samples": 8,
            "sweep.space": {
                "model.dropout": {"type": "grid", "values": [0.0, 0.2, 0.4]},
                "model.hidden": {"type": "choice", "values": [[64], [256]]},
            },
        }
    )
    space = trials.search_space(cfg)
    assert space["model.hidden"] == {"grid_search": [[64], [256]]}
    assert trials.num_samples(cfg) == 1 and trials.total_trials(cfg) == 6
    random = _cfg(
        **{
            "sweep.num_samples": 4,
            "sweep.space": {"model.dropout": {"type": "grid", "values": [0.0, 0.2, 0.4]}},
        }
    )
    assert trials.total_trials(random) == 12  # Tune's rule: num_samples x grid


def test_each_searcher_and_scheduler_is_built_from_the_config() -> None:
    from ray.tune import schedulers
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    assert isinstance(trials.searcher(_cfg(), 2), BasicVariantGenerator)
    assert isinstance(trials.searcher(_cfg(**{"sweep.searcher": "optuna"}), 2), ConcurrencyLimiter)
    from orchestrator.execution.tune_asha import PromotionASHA

    # ASHA promotes single-worker trials (pausing one is a checkpoint) and stops DDP ones
    assert isinstance(trials.scheduler(_cfg()), PromotionASHA)
    assert isinstance(
        trials.scheduler(_cfg(**{"scaling.num_workers": 2})), schedulers.AsyncHyperBandScheduler
    )
    kinds = {
        "asha": schedulers.AsyncHyperBandScheduler,
        "hyperband": schedulers.AsyncHyperBandScheduler,
        "median": schedulers.MedianStoppingRule,
        "pbt": schedulers.PopulationBasedTraining,
    }
    for name, kind in kinds.items():
        cfg = _cfg(
            **{
                "sweep.scheduler": name,
                "sweep.refit": name != "pbt",
                "sweep.asha_mode": "stop" if name == "asha" else "auto",
            }
        )
        assert isinstance(trials.scheduler(cfg), kind)
    assert trials.scheduler(_cfg(**{"sweep.scheduler": "fifo"})) is None
    hyperband = trials.scheduler(_cfg(**{"sweep.scheduler": "hyperband", "sweep.brackets": 2}))
    assert len(hyperband._brackets) == 2
    # grace 5, reduction 3, 30 epochs: brackets start at 5 and 15; one at 45 would stop nothing
    assert trials.hyperband_brackets(_cfg(**{"sweep.brackets": 5})) == 2
    assert trials.pbt_mutations(_cfg())["model.dropout"].lower == 0.0


def test_the_fast_path_is_a_single_worker_holding_its_own_resources() -> None:
    one = _cfg(**{"scaling.cpus_per_worker": 2})
    assert trials.fast_path(one) and trials.trial_resources(one) == {"cpu": 2, "gpu": 0}
    two = _cfg(**{"scaling.num_workers": 2})
    assert not trials.fast_path(two) and trials.trial_resources(two)["cpu"] == 0
    # a multi-worker trial only steers: on the head where the cluster has the head resource
    head = {"CPU": 8.0, placement.HEAD_RESOURCE: placement.HEAD_AMOUNT}
    steer = trials.trial_resources(two, head)
    assert steer[placement.HEAD_RESOURCE] == placement.STEER_AMOUNT and steer["cpu"] == 0
    assert placement.HEAD_RESOURCE not in trials.trial_resources(two, {"CPU": 8.0})
    assert placement.HEAD_RESOURCE not in trials.trial_resources(one, head)  # runs anywhere
    assert not trials.fast_path(_cfg(**{"scaling.fast_path": False}))


def test_a_fast_path_trial_retries_for_the_worker_and_for_the_sweep() -> None:
    assert trials.max_failures(_cfg(**{"sweep.max_failures": 1, "scaling.max_failures": 2})) == 3
    ddp = _cfg(**{"sweep.max_failures": 1, "scaling.max_failures": 2, "scaling.num_workers": 2})
    assert trials.max_failures(ddp) == 1  # the TorchTrainer restarts its own workers
    assert trials.max_failures(_cfg(**{"sweep.max_failures": -1})) == -1


def test_pbt_perturbations_stay_inside_the_searched_ranges() -> None:
    space = {
        "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
        "train.batch_size": {"type": "randint", "low": 16, "high": 128},
    }
    assert trials.clamp({"model.dropout": 0.6, "train.batch_size": 300, "x": 1}, space) == {
        "model.dropout": 0.5,
        "train.batch_size": 127,
        "x": 1,
    }


def test_a_confirm_run_unpacks_its_values() -> None:
    packed = {trials.SET_KEY: {"model.dropout": 0.2, "train.seed": 3}}
    assert trials.values_of(packed) == {"model.dropout": 0.2, "train.seed": 3}
    assert trials.values_of({"model.dropout": 0.1}) == {"model.dropout": 0.1}


def test_a_warm_started_tpe_models_from_the_earlier_trials_at_once() -> None:
    cfg = _cfg(**{"sweep.searcher": "optuna"})
    cold = trials.searcher(cfg, 2).searcher._sampler
    assert cold._n_startup_trials == 10  # Optuna's default: 10 random trials first
    warm = trials.searcher(cfg, 2, ([{"model.dropout": 0.1}], [0.3])).searcher._sampler
    assert warm._n_startup_trials == 0
