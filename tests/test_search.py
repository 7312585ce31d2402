"""The sweep's decisions, no Ray runtime: fitting trials onto nodes, what each searcher and
scheduler accepts, the ranking objective, and the driver's ledger across replays, PBT moves
and a resumed sweep (with a fake MLflow client)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from conftest import make_cfg
from jobs import bench_sweep
from orchestrator import config
from orchestrator.config import ConfigError
from orchestrator.core import asha, checkpoint, diagnosis, loop, placement, state
from orchestrator.core.prepare import prepare
from orchestrator.execution import trials
from orchestrator.sweep import hooks
from orchestrator.sweep.book import Book
from orchestrator.sweep.context import Context


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


# ---------------------------------------------------------------- ASHA by promotion


def test_rungs_are_placed_as_tunes_asha_places_them() -> None:
    cfg = _cfg(**{"sweep.grace_period": 1, "sweep.reduction_factor": 3, "train.epochs": 30})
    assert config.rungs(cfg) == [1, 3, 9, 27]
    assert config.rungs(_cfg(**{"train.epochs": 5})) == []  # grace 5: nothing to compare


def test_the_first_trial_pauses_at_a_rung_until_rf_trials_are_compared() -> None:
    ladder = asha.Ladder([1, 3], 3, "min")
    assert ladder.on_result("a", 1, 0.5) == asha.PAUSE  # nobody to beat is no free pass
    assert ladder.on_result("b", 1, 0.9) == asha.PAUSE
    assert ladder.promotable() == []
    assert ladder.gate(1) == 3  # room for one new trial besides the two paused
    assert ladder.on_result("c", 1, 0.7) == asha.PAUSE
    assert ladder.promotable() == ["a"]  # top floor(3/3) = 1
    assert ladder.gate(1) == 3  # three alive, none new: the free worker takes "a"
    ladder.promote("a")
    assert ladder.on_result("a", 2, 0.4) == asha.CONTINUE  # between rungs
    assert ladder.on_result("a", 3, 0.3) == asha.PAUSE  # alone at the next rung
    assert ladder.on_result("a", 1, 0.5) == asha.CONTINUE  # a replayed epoch


def test_a_trial_already_in_the_top_goes_on_without_pausing() -> None:
    ladder = asha.Ladder([1], 2, "max")  # accuracy: higher is better
    assert ladder.on_result("a", 1, 0.5) == asha.PAUSE
    assert ladder.on_result("b", 1, 0.9) == asha.CONTINUE  # top floor(2/2) = 1, and it is b
    assert ladder.promotable() == []  # a lost to b
    assert ladder.on_result("c", 1, float("nan")) == asha.PAUSE  # diverged ranks last
    assert ladder.on_result("d", 1, 0.8) == asha.CONTINUE  # top 2 of 4: b and d
    assert ladder.promotable() == []


def test_the_highest_rung_promotes_first_and_drain_leaves_one_full_budget_trial() -> None:
    ladder = asha.Ladder([1, 3], 3, "min")
    for t, v in zip("abcdef", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], strict=True):
        ladder.on_result(t, 1, v)
    assert ladder.promotable() == ["a", "b"]  # top floor(6/3) = 2, best first
    ladder.promote("a")
    ladder.promote("b")
    ladder.on_result("a", 3, 0.05)  # alone at rung 3: paused there
    ladder.on_result("b", 3, 0.04)
    assert ladder.promotable() == []  # two at rung 3: floor(2/3) = 0 promotions
    best, losers = ladder.drain()  # no new trial will come: rung 3 sends its best on
    assert (best, losers) == ("b", [])
    ladder.promote("b")
    best, losers = ladder.drain()
    assert best is None and losers == ["a"]  # rung 3 promoted its share
    for t in losers:
        ladder.forget(t)
    assert ladder.drain() == (None, ["c", "d", "e", "f"])  # rung 1 promoted a and b


def test_promotion_asha_runs_rungs_not_budgets_and_trains_the_best_to_the_end() -> None:
    """One worker, 27 configurations whose curves rank the same at every epoch: the paper's
    ASHA runs the rungs, not everyone to the budget, and still trains the best to the end."""
    import random

    rng = random.Random(0)
    finals = [rng.random() for _ in range(27)]
    curve = {str(i): [f + 1.0 / e for e in range(1, 10)] for i, f in enumerate(finals)}
    ladder, epochs, done = asha.Ladder([1, 3], 3, "min"), {t: 0 for t in curve}, []
    queue = list(curve)
    while True:
        due = ladder.promotable()
        if due:
            trial = due[0]
            ladder.promote(trial)
        elif queue:
            trial = queue.pop(0)
        else:
            best, losers = ladder.drain()
            for t in losers:
                ladder.forget(t)
            if best is None and not losers:
                break
            if best is None:
                continue
            ladder.promote(best)
            trial = best
        while epochs[trial] < 9:
            epochs[trial] += 1
            if ladder.on_result(trial, epochs[trial], curve[trial][epochs[trial] - 1]) == "pause":
                break
        else:
            done.append(trial)
    best = str(min(range(27), key=lambda i: finals[i]))
    # the best reached the budget, with a few others (asynchronous promotion sends on
    # whoever is in the top third *so far*, a little more than synchronous halving's 3)
    assert best in done and 3 <= len(done) <= 5
    assert set(epochs.values()) == {1, 3, 9}  # everyone stopped at a rung or the budget
    assert sum(epochs.values()) < 0.4 * 27 * 9  # FIFO would run all 243 epochs


def test_the_fast_path_is_a_single_worker_holding_its_own_resources() -> None:
    one = _cfg(**{"scaling.cpus_per_worker": 2})
    assert trials.fast_path(one) and trials.trial_resources(one) == {"cpu": 2, "gpu": 0}
    two = _cfg(**{"scaling.num_workers": 2})
    assert not trials.fast_path(two) and trials.trial_resources(two)["cpu"] == 0
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


# ---------------------------------------------------------------- the objective in the loop


def test_the_loop_reports_the_gap_and_the_penalized_objective(digits_path: Path) -> None:
    cfg = _cfg(
        **{
            "data.path": str(digits_path),
            "train.epochs": 2,
            "model.hidden": [32],
            "sweep.objective": "gap_penalized",
            "sweep.gap_penalty": 2.0,
        }
    )
    seam = loop.LocalSeam()
    loop.train(cfg, prepare(cfg).splits, seam)  # type: ignore[arg-type]
    for r in seam.reports:
        assert r["gap"] == pytest.approx(r["val_loss"] - r["train_loss"])
        assert r["objective"] == pytest.approx(r["val_loss"] + 2.0 * max(0.0, r["gap"]))
    assert config.rank_metric(cfg) == ("objective", "min")
    assert config.rank_metric(_cfg()) == ("val_loss", "min")


def test_a_run_that_had_ended_does_not_train_on_after_a_resume(
    digits_path: Path, tmp_path: Path
) -> None:
    cfg = _cfg(
        **{
            "data.path": str(digits_path),
            "train.epochs": 20,
            "model.hidden": [32],
            "train.early_stopping.patience": 1,
            "train.early_stopping.min_delta": 100.0,
        }
    )  # stops at epoch 2
    splits = prepare(cfg).splits
    kept: list[str] = []

    def keep(d: str) -> None:
        kept.append(str(tmp_path / "ckpt"))
        Path(kept[-1]).mkdir(exist_ok=True)
        (Path(kept[-1]) / checkpoint.CHECKPOINT_FILE).write_bytes(
            (Path(d) / checkpoint.CHECKPOINT_FILE).read_bytes()
        )

    first = loop.LocalSeam(on_checkpoint=keep)
    assert loop.train(cfg, splits, first) == "early_stopped" and len(first.reports) == 2  # type: ignore[arg-type]
    again = loop.LocalSeam(resume_from=kept[-1])
    assert loop.train(cfg, splits, again) == "early_stopped" and again.reports == []  # type: ignore[arg-type]


def test_a_restored_optimizer_takes_the_configs_hyperparameters() -> None:
    # PBT hands a trial another trial's checkpoint with new values: the config must win
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    old = _cfg(**{"train.lr": 0.01, "train.weight_decay": 0.1})
    opt = loop.make_optimizer(net, old)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for _ in range(5):
        opt.step()
        sched.step()
    fraction = opt.param_groups[0]["lr"] / 0.01
    new = _cfg(**{"train.lr": 0.001, "train.weight_decay": 0.5})
    loop.set_hyperparameters(opt, sched, new)
    assert opt.param_groups[0]["weight_decay"] == 0.5 and opt.param_groups[1]["weight_decay"] == 0
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001 * fraction)
    sched.step()
    assert opt.param_groups[0]["lr"] < 0.001


# ---------------------------------------------------------------- the driver's ledger


class FakeClient:
    """Just enough of MlflowClient for the ledger; records what was written."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.metrics: list[tuple[str, str, int]] = []
        self.values: dict[tuple[str, str, int], float] = {}
        self.ids: dict[str, str] = {}  # the outbox's placeholder -> real run ids

    def run_id(self, run_id: str | None) -> str | None:
        return self.ids.get(run_id, run_id) if run_id else run_id

    def create_run(self, exp_id: str, run_name: str, tags: dict[str, str]) -> Any:
        run_id = f"run{len(self.runs)}"
        self.runs[run_id] = {"tags": dict(tags), "status": "RUNNING"}
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id))

    def log_batch(self, run_id: str, metrics: list = (), params: list = ()) -> None:  # type: ignore[assignment]
        self.metrics += [(run_id, m.key, m.step) for m in metrics]
        self.values.update({(run_id, m.key, m.step): m.value for m in metrics})

    def log_text(self, *a: Any) -> None: ...

    def log_inputs(self, run_id: str, datasets: list) -> None:
        self.runs[run_id]["inputs"] = [d.dataset.name for d in datasets]

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str = "") -> None:
        with open(local_path, "rb") as f:
            assert f.read(4) == b"\x89PNG"
        self.runs[run_id].setdefault("artifacts", []).append(
            f"{artifact_path}/{Path(local_path).name}"
        )

    def set_tag(self, run_id: str, k: str, v: str) -> None:
        self.runs[run_id]["tags"][k] = v

    def set_terminated(self, run_id: str, status: str) -> None:
        self.runs[run_id]["status"] = status

    def update_run(self, run_id: str, status: str) -> None:
        self.runs[run_id]["status"] = status

    def search_runs(self, exp_ids: list, filter_string: str = "", **kw: Any) -> list:
        return [
            SimpleNamespace(
                info=SimpleNamespace(run_id=k, status=v["status"]),
                data=SimpleNamespace(tags=v["tags"]),
            )
            for k, v in self.runs.items()
            if f"'{v['tags'].get('orchestrator.trial_id')}'" in filter_string
            or "trial_id" not in filter_string
        ]

    def get_metric_history(self, run_id: str, key: str) -> list:
        return [
            SimpleNamespace(step=s, value=self.values[(r, k, s)])
            for r, k, s in self.metrics
            if r == run_id and k == key
        ]

    def get_run(self, run_id: str) -> Any:
        return SimpleNamespace(
            data=SimpleNamespace(tags=self.runs[run_id]["tags"]),
            info=SimpleNamespace(status=self.runs[run_id]["status"]),
        )

    def delete_run(self, run_id: str) -> None:
        del self.runs[run_id]


def _trial(tid: str, **values: Any) -> Any:
    return SimpleNamespace(trial_id=tid, config=values, last_result={})


def _result(epoch: int, val_loss: float) -> dict[str, float]:
    return {
        "epoch": float(epoch),
        "val_loss": val_loss,
        "train_loss": val_loss / 2,
        "val_accuracy": 0.9,
    }


def _callback(client: FakeClient, out: list[str], resumed: bool = False) -> hooks.BookHooks:
    """Tune's hooks over a trial book of a 4-trial sweep, as Tune calls them."""
    prep = SimpleNamespace(fingerprint="fp", sizes=None, baseline=diagnosis.baseline([50, 50]))
    ctx = Context(_cfg(), prep, client, "exp", "parent", "s", "/results", 1, out.append, resumed)  # type: ignore[arg-type]
    return hooks.BookHooks(Book(ctx, "trial", 4), "x")


def test_replayed_epochs_are_logged_once_and_restarts_say_where_they_continue() -> None:
    client, out = FakeClient(), []
    cb = _callback(client, out)
    t = _trial("t1", **{"model.dropout": 0.1})
    cb.on_trial_start(0, [], t)
    for e in (1, 2, 3):
        cb.on_trial_result(0, [], t, _result(e, 1.0 / e))
    cb.on_trial_start(0, [], t)  # a retry from the epoch-2 checkpoint
    for e in (3, 4):
        cb.on_trial_result(0, [], t, _result(e, 1.0 / e))
    steps = [s for r, k, s in client.metrics if k == "val_loss"]
    assert steps == [1, 2, 3, 4]
    assert "[sweep] trial t1 continues from epoch 2" in out
    assert cb.book.by_id["t1"].best["epoch"] == 4
    cb.on_trial_complete(0, [], t)  # the finished trial's curves, as a picture on its run
    assert client.runs["run0"]["artifacts"] == ["plots/learning_curves.png"]


def test_a_pbt_move_updates_the_values_and_tags_the_run() -> None:
    client, out = FakeClient(), []
    cb = _callback(client, out)
    cb.on_trial_result(0, [], _trial("t1", **{"model.dropout": 0.1}), _result(1, 1.0))
    cb.on_trial_result(0, [], _trial("t1", **{"model.dropout": 0.3}), _result(2, 0.5))
    assert cb.book.by_id["t1"].values == {"model.dropout": 0.3}
    assert "model.dropout=0.3" in client.runs["run0"]["tags"]["orchestrator.values.epoch2"]


def test_the_ledger_survives_a_pickle_and_a_resume_finds_the_trials_runs() -> None:
    client, out = FakeClient(), []
    cb = hooks.attach(_callback(client, out).book, "/results/x")
    try:
        assert pickle.loads(pickle.dumps(cb)) is cb  # Tune's tuner.pkl gets the live one back
    finally:
        hooks.detach("/results/x")
    with pytest.raises(RuntimeError, match="orchestrator resume"):
        pickle.loads(pickle.dumps(cb))  # never a silent no-op callback
    t1, t2 = _trial("t1", **{"model.dropout": 0.1}), _trial("t2", **{"model.dropout": 0.2})
    cb.on_trial_result(0, [], t1, _result(1, 1.0))
    cb.on_trial_complete(0, [], t1)
    cb.on_trial_result(0, [], t2, _result(1, 1.0))
    state = pickle.loads(pickle.dumps(cb.get_state()))
    cb.on_trial_result(0, [], t2, _result(2, 0.9))  # after Tune's last save: MLflow has it
    t3 = _trial("t3", **{"model.dropout": 0.3})
    cb.on_trial_result(0, [], t3, _result(1, 0.8))  # a trial Tune's saved state never knew

    again = _callback(client, out, resumed=True)
    again.set_state(state)
    assert "restored 2 trial(s): 1 finished" in out[-1]
    again.on_trial_result(0, [], t2, _result(2, 0.9))  # replayed from its checkpoint
    again.on_trial_result(0, [], t2, _result(3, 0.8))
    t2_steps = [s for r, k, s in client.metrics if r == "run1" and k == "val_loss"]
    assert t2_steps == [1, 2, 3]
    again.book.forget_orphans()  # t3's run: Tune reruns that trial under a new id
    assert set(client.runs) == {"run0", "run1"}
    assert again.book.by_id["t2"].best["epoch"] == 3  # the replayed epoch is in the ledger too


def test_a_resume_keeps_runs_its_ledger_knows_by_a_placeholder_id() -> None:
    # created while MLflow was away: the ledger holds the outbox's placeholder, MLflow the
    # real id; the run is the trial's own, not an orphan to delete
    client, out = FakeClient(), []
    cb = _callback(client, out)
    t1 = _trial("t1", **{"model.dropout": 0.1})
    cb.on_trial_result(0, [], t1, _result(1, 1.0))
    client.ids["offline-1"] = cb.book.by_id["t1"].run_id
    cb.book.by_id["t1"].run_id = "offline-1"
    cb.book.forget_orphans()
    assert set(client.runs) == {"run0"}


def test_resume_finds_the_newest_sweep_or_says_what_to_pass(tmp_path: Path) -> None:
    for stamp in ("20260101-000000", "20260102-000000"):
        (tmp_path / f"exp-{stamp}").mkdir()
        (tmp_path / f"exp-{stamp}" / state.STATE_FILE).write_text("{}")
    (tmp_path / "exp-20260103-000000-confirm").mkdir()
    assert state.find_sweep("exp", str(tmp_path)).name == "exp-20260102-000000"
    given = state.find_sweep(str(tmp_path / "exp-20260101-000000"), "nowhere")
    assert given.name == "exp-20260101-000000"
    with pytest.raises(ConfigError) as e:
        state.find_sweep("other", str(tmp_path))
    assert e.value.key == "EXPERIMENT" and "--storage" in e.value.fix


def test_epochs_to_reach_counts_in_arrival_order() -> None:
    results = [{"val_accuracy": a} for a in (0.5, 0.9, 0.8, 0.97, 0.99)]
    assert bench_sweep.epochs_to_reach(results, 0.97) == 4
    assert bench_sweep.epochs_to_reach(results, 1.0) == 5  # never: charged every epoch


def test_epochs_that_only_mlflow_saw_before_the_kill_rejoin_the_ledger() -> None:
    # The driver logged epochs 2-3 and the trial finished, after Tune's last save (epoch 1):
    # the resumed trial reports nothing more, so the ledger must take them from MLflow.
    client, out = FakeClient(), []
    cb = _callback(client, out)
    t = _trial("t1", **{"model.dropout": 0.1})
    cb.on_trial_result(0, [], t, _result(1, 1.0))
    state = pickle.loads(pickle.dumps(cb.get_state()))
    for e in (2, 3):
        cb.on_trial_result(0, [], t, {**_result(e, 1.0 / e), "checkpoint_path": f"/ckpt/{e}"})
    again = _callback(client, out, resumed=True)
    again.set_state(state)
    rec = again.book.by_id["t1"]
    assert rec.epochs == 3 and rec.best["epoch"] == 3 and rec.checkpoint == "/ckpt/3"
    assert rec.logged == 3


def test_epochs_still_in_the_dead_drivers_outbox_reach_mlflow_on_resume() -> None:
    # Tune saved a ledger with epochs 1-3 of t1 and t2 finished; the driver died before its
    # outbox sent t1's epoch 3 and t2's end. The resume sends both from the ledger.
    client, out = FakeClient(), []
    cb = _callback(client, out)
    t1, t2 = _trial("t1", **{"model.dropout": 0.1}), _trial("t2", **{"model.dropout": 0.2})
    for e in (1, 2, 3):
        cb.on_trial_result(0, [], t1, _result(e, 1.0 / e))
    cb.on_trial_result(0, [], t2, _result(1, 0.5))
    cb.book.by_id["t2"].status = "TERMINATED"  # the ledger knew; MLflow never heard
    state = pickle.loads(pickle.dumps(cb.get_state()))
    client.metrics = [m for m in client.metrics if not (m[0] == "run0" and m[2] == 3)]
    assert client.runs["run1"]["status"] == "RUNNING"
    again = _callback(client, out, resumed=True)
    again.set_state(state)
    steps = sorted(s for r, k, s in client.metrics if r == "run0" and k == "val_loss")
    assert steps == [1, 2, 3] and again.book.by_id["t1"].logged == 3
    assert client.runs["run1"]["status"] == "FINISHED"
    assert client.runs["run1"]["tags"]["orchestrator.status"] == "pruned"  # 1 of 30 epochs


def test_epochs_a_killed_driver_never_received_are_filled_in_from_the_checkpoint(
    tmp_path: Path,
) -> None:
    # A DDP trial's worker group went on from its epoch-4 checkpoint, but the killed driver
    # had received epochs 1-2 only: 3 and 4 come from that checkpoint's history.
    client, out = FakeClient(), []
    cb = _callback(client, out)
    t = _trial("t1", **{"model.dropout": 0.1})
    for e in (1, 2):
        cb.on_trial_result(0, [], t, _result(e, 1.0 / e))
    ckpt = tmp_path / "checkpoint_5"
    ckpt.mkdir()
    (ckpt / checkpoint.HISTORY_FILE).write_text(
        json.dumps([_result(e, 1.0 / e) for e in range(1, 6)])
    )
    cb.on_trial_start(0, [], t)
    cb.on_trial_result(0, [], t, {**_result(5, 0.2), "checkpoint_path": str(ckpt)})
    steps = sorted(s for r, k, s in client.metrics if k == "val_loss")
    assert steps == [1, 2, 3, 4, 5]
    assert [h["epoch"] for h in cb.book.by_id["t1"].history] == [1, 2, 3, 4, 5]
    assert "epochs 3-4 recovered" in out[-1]
