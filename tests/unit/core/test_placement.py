"""Fitting trials onto the cluster's nodes (``core.placement``): how many run at once, by
CPUs, GPUs and the placement strategy, and a trial that fits nowhere named at once."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import make_cfg
from orchestrator import config
from orchestrator.config import ConfigError
from orchestrator.core import placement


def _cfg(**over: Any) -> config.Config:
    return make_cfg(**over)


# ---------------------------------------------------------------- fitting the cluster


def test_two_half_cpu_workers_fit_twice_on_two_cpus() -> None:
    cfg = _cfg(**{"scaling.num_workers": 2, "scaling.cpus_per_worker": 0.5})
    assert placement.trial_concurrency(cfg, {"CPU": 2}) == 2


def test_workers_spread_over_nodes_when_no_node_holds_them_all() -> None:
    cfg = _cfg(**{"scaling.num_workers": 2, "scaling.cpus_per_worker": 1})
    assert placement.trial_concurrency(cfg, {"CPU": 2}, nodes=[{"CPU": 1}, {"CPU": 1}]) == 1


def test_gpu_trials_are_counted_by_the_gpus_on_each_node() -> None:
    cfg = _cfg(**{"scaling.num_workers": 2, "scaling.use_gpu": True})
    nodes = [{"CPU": 16, "GPU": 1}, {"CPU": 16, "GPU": 1}, {"CPU": 16}]
    assert placement.trial_concurrency(cfg, {"CPU": 48, "GPU": 2}, nodes=nodes) == 1


def test_a_worker_bigger_than_every_node_fails_at_once_naming_what_is_missing() -> None:
    # 8 CPUs in total, but no node can hold one 4-CPU worker: Ray would wait forever
    cfg = _cfg(**{"scaling.num_workers": 1, "scaling.cpus_per_worker": 4})
    with pytest.raises(ConfigError) as e:
        placement.trial_concurrency(cfg, {"CPU": 8}, nodes=[{"CPU": 2}] * 4)
    assert e.value.key == "scaling.num_workers"
    assert "4 CPU" in e.value.problem and "biggest 2 CPU" in e.value.problem


def test_strict_spread_puts_each_worker_on_a_node_of_its_own() -> None:
    cfg = _cfg(**{"scaling.num_workers": 2, "scaling.placement_strategy": "STRICT_SPREAD"})
    # 4 CPUs on one node would hold two such trials packed, none strictly spread
    with pytest.raises(ConfigError) as e:
        placement.trial_concurrency(cfg, {"CPU": 4}, nodes=[{"CPU": 4}])
    assert "each on its own node" in e.value.problem
    assert placement.trial_concurrency(cfg, {"CPU": 4}, nodes=[{"CPU": 2}, {"CPU": 2}]) == 2
    assert placement.trial_concurrency(cfg, {"CPU": 3}, nodes=[{"CPU": 1}] * 3) == 1


def test_strict_pack_needs_one_node_for_the_whole_trial() -> None:
    cfg = _cfg(**{"scaling.num_workers": 2, "scaling.placement_strategy": "STRICT_PACK"})
    with pytest.raises(ConfigError):
        placement.trial_concurrency(cfg, {"CPU": 2}, nodes=[{"CPU": 1}, {"CPU": 1}])
    assert placement.trial_concurrency(cfg, {"CPU": 5}, nodes=[{"CPU": 4}, {"CPU": 1}]) == 2


def test_an_unknown_placement_strategy_is_refused_by_name() -> None:
    with pytest.raises(ConfigError) as e:
        _cfg(**{"scaling.placement_strategy": "spread-ish"})
    assert e.value.key == "scaling.placement_strategy"


def test_max_concurrent_caps_what_the_cluster_allows() -> None:
    cfg = _cfg(**{"sweep.max_concurrent": 3})
    assert placement.trial_concurrency(cfg, {"CPU": 16}) == 3
    assert placement.trial_concurrency(_cfg(), {"CPU": 16}) == 16


def test_a_streamed_trial_leaves_cpus_for_ray_data() -> None:
    cfg = _cfg(**{"scaling.num_workers": 1, "scaling.data_cpus": 1})
    assert placement.trial_concurrency(cfg, {"CPU": 4}, "stream") == 2
    assert placement.trial_concurrency(cfg, {"CPU": 4}, "memory") == 4


def test_ray_data_needs_a_whole_cpu_left_on_a_node() -> None:
    # Two workers of 0.75 CPU leave 0.5 CPU on each of two nodes: 1 CPU in all, but Ray Data
    # takes only whole CPUs per node, so no streamed trial fits.
    cfg = _cfg(**{"scaling.num_workers": 2, "scaling.cpus_per_worker": 0.75})
    nodes = [{"CPU": 1.25}, {"CPU": 1.25}]
    with pytest.raises(ConfigError) as e:
        placement.trial_concurrency(cfg, {"CPU": 2.5}, "stream", nodes=nodes)
    assert "Ray Data" in str(e.value)
    assert placement.trial_concurrency(cfg, {"CPU": 2.5}, "memory", nodes=nodes) == 1
    # 0.5 + 0.5 workers on a 2-CPU node leave a whole CPU: it fits.
    half = _cfg(**{"scaling.num_workers": 2, "scaling.cpus_per_worker": 0.5})
    assert placement.trial_concurrency(half, {"CPU": 2}, "stream", nodes=[{"CPU": 2}]) == 1


@pytest.mark.parametrize("value", [0.4, 1.5])
def test_a_fraction_of_a_cpu_for_ray_data_is_refused_by_name(value: float) -> None:
    with pytest.raises(ConfigError) as e:
        _cfg(**{"scaling.data_cpus": value})
    assert e.value.key == "scaling.data_cpus" and "whole" in str(e.value)
