"""The ASHA ladder (``core.asha``): rungs placed as Tune places them, a trial paused at a rung
until enough are compared, promotion from the top, and the epochs it saves over FIFO."""

from __future__ import annotations

from typing import Any

from conftest import make_cfg
from orchestrator import config
from orchestrator.core import asha


def _cfg(**over: Any) -> config.Config:
    return make_cfg(**over)


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


def test_a_ladder_carried_over_ranks_new_trials_against_the_earlier_ones() -> None:
    """An autopilot round of a few trials: its first trial no longer waits at a rung for two
    more of its own round to lose to, nor wins a rung it would lose against the earlier
    rounds' trials there."""
    ladder = asha.Ladder([4, 12], 3, "min")
    ladder.carry(
        {
            "round1-a": [0.9] * 3 + [0.5] * 8 + [0.3] * 19,  # ran all 30: 0.5 at 4, 0.3 at 12
            "round1-b": [0.9] * 3 + [0.6] * 9,  # paused at 12 for good: 0.6 there
            "round1-c": [1.0] * 4,  # stopped at 4
            "round1-d": [1.2] * 4,
            "round1-e": [1.1] * 4,
        }
    )
    assert ladder.scores[4] == {
        "round1-a": 0.5,
        "round1-b": 0.6,
        "round1-c": 1.0,
        "round1-d": 1.2,
        "round1-e": 1.1,
    }
    assert ladder.promoted[4] == {"round1-a", "round1-b"} and ladder.promoted[12] == {"round1-a"}
    # top floor(6/3) = 2 at rung 4: 0.4 beats all but none: it goes on at once
    assert ladder.on_result("new", 4, 0.4) == asha.CONTINUE
    # 0.8 ranks 4th of 7: paused, and earlier promotions leave it nothing to earn
    assert ladder.on_result("worse", 4, 0.8) == asha.PAUSE and ladder.promotable() == []
    assert ladder.drain() == (None, ["worse"])  # rung 4 already sent on its share
    # at rung 12 the new trial must beat the earlier ones there too (0.3 and 0.6)
    assert ladder.on_result("new", 12, 0.45) == asha.PAUSE  # 2nd of 3: floor(3/3) = 1
    fresh = asha.Ladder([4, 12], 3, "min")
    assert fresh.on_result("new", 4, 0.4) == asha.PAUSE  # uncarried: waits for two more
