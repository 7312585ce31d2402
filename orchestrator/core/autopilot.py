"""The autopilot's decisions, as pure functions: round 1's broad space, how the budget is
split, what the diagnosis of a round's best trials makes of the next round's space, and
when to stop. No Ray, no MLflow: the driver that runs the rounds lives in the sweep layer.

The chart the product is built on says what to do on each side of the sweet spot, and
``steer`` follows it: underfit, more capacity and less regularization; overfit, more
regularization, less capacity and augmentation; both, capacity and regularization up; then,
for each searched range, a best value on an edge extends it, and a clear sweet spot narrows
around it (``diagnosis.propose``); a best size on the edge of the sizes searched extends
them the same way. ``diverged`` and ``undetermined`` trials never steer, and underfit trials
whose validation loss had stopped improving while they trained on (noise, not capacity,
holds them back) steer as a sweet spot.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from orchestrator.core import diagnosis

FIRST_SHARE = 0.4  # of the search budget, for round 1 (broad); each later round gets half that
MIN_ROUND = 4  # trials: a smaller round cannot find a best quarter
MAX_DEPTH = 4  # hidden layers at most, when high bias asks for a deeper model
MIN_CHOICES = 2  # a narrowed choice keeps at least two values: one would stop searching it
MIN_ROUNDS = 3  # the stop rule looks at the improvement of two rounds over the one before
CURVE_RUNS = 12  # `orchestrator curve`: 4 sizes x 3 seeds, at the end when overfit
LATE = 0.9  # a best epoch in the last tenth of the planned epochs: still improving at the end
SETTLED = 4  # validation loss flat or rising for the last quarter of a run (>= 3 epochs):
# it had stopped improving while its training went on
MAX_EPOCHS_FACTOR = 4  # longer training stops at 4x the configured train.epochs
REGULARIZERS = ("train.weight_decay", "train.l1", "model.dropout")
MAX_REGULARIZATION = {  # where "more" stops: past these a model learns nothing
    "train.weight_decay": 1.0,
    "train.l1": 0.1,
    "model.dropout": 0.9,
}
WIDE = {  # round 1's ranges of the regularizers
    "train.weight_decay": {"type": "loguniform", "low": 1e-6, "high": 0.1},
    "train.l1": {"type": "loguniform", "low": 1e-7, "high": 1e-3},
    "model.dropout": {"type": "uniform", "low": 0.0, "high": 0.6},
}


def broad_space(cfg: Any, declared: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Round 1's space, built from the config, and a line per key saying why.

    - capacity: for the built-in kinds, ``model.hidden`` over depths 1-3 and half, the same
      and twice the configured width; for a factory, the ``search_space`` it declares for
      its arguments (``declared``); without one, no capacity key;
    - L2 (``train.weight_decay``), L1 (``train.l1``) and, for the built-in kinds, dropout,
      over wide ranges; the learning rate a decade either side of the configured one;
    - augmentation where the data has a shape (``data.shape``: images).
    """
    space: dict[str, Any] = {}
    why: list[str] = []
    kind = cfg.model.kind
    if kind in ("mlp", "cnn"):
        width = int(cfg.model.hidden[0]) if cfg.model.hidden else 64
        widths = sorted({max(4, width // 2), width, width * 2})
        choices = [[w] * depth for depth in (1, 2, 3) for w in widths]
        space["model.hidden"] = {"type": "choice", "values": choices}
        why.append(
            f"model.hidden: capacity, depth 1-3 x width {', '.join(map(str, widths))} "
            f"(around the configured {cfg.model.hidden})"
        )
    elif declared:
        space.update(declared)
        why.append(f"{', '.join(declared)}: capacity, as {kind} declares it (search_space)")
    else:
        why.append(
            f"no capacity key: {kind} declares no search_space for its arguments "
            "(regularization and learning rate only)"
        )
    for key, spec in WIDE.items():
        if key == "model.dropout" and kind not in ("mlp", "cnn"):
            continue  # a factory's model has its own dropout, if any
        space[key] = dict(spec)
        why.append(f"{key}: {_range(spec)}")
    lr = float(cfg.train.lr)
    space["train.lr"] = {"type": "loguniform", "low": _round(lr / 10), "high": _round(lr * 10)}
    why.append(f"train.lr: a decade either side of {lr:g}")
    if cfg.data.shape is not None:
        space["train.augment"] = {"type": "choice", "values": [False, True]}
        why.append("train.augment: the data has a shape (images): random shifts on or off")
    return space, why


@dataclass(frozen=True)
class Budget:
    """How ``autopilot.budget_trials`` is spent: ``rounds`` (trials per search round, at
    most), the confirmation's runs and the data curve's (0 when the budget cannot hold it)."""

    rounds: list[int]
    confirm: int
    curve: int

    def describe(self) -> str:
        """One line for the terminal and the autopilot's run."""
        search = sum(self.rounds)
        curve = f", {self.curve} for the data curve if overfit" if self.curve else ""
        return (
            f"{search + self.confirm + self.curve} trials: up to {len(self.rounds)} rounds of "
            f"{' + '.join(map(str, self.rounds))} ({search} searching), {self.confirm} "
            f"confirming{curve}"
        )


def plan_budget(trials: int, confirm_runs: int, max_rounds: int = 6) -> Budget:
    """Split ``trials`` (everything included): the confirmation's runs and the curve's come
    off the top (the curve only when the search keeps at least ``MIN_ROUNDS`` rounds of
    ``MIN_ROUND`` after it); round 1 gets ``FIRST_SHARE`` of the rest, each later round half
    that, the last one what remains. ValueError when not even the minimum fits."""
    search = trials - confirm_runs - CURVE_RUNS
    curve = CURVE_RUNS
    if search < MIN_ROUND * MIN_ROUNDS:
        search, curve = trials - confirm_runs, 0
    if search < MIN_ROUND * MIN_ROUNDS:
        raise ValueError(
            f"{trials} trials leave {search} to search after {confirm_runs} confirmation runs: "
            f"at least {MIN_ROUND * MIN_ROUNDS + confirm_runs} are needed ({MIN_ROUNDS} rounds "
            f"of {MIN_ROUND})"
        )
    first = max(MIN_ROUND, round(search * FIRST_SHARE))
    later = max(MIN_ROUND, round(first / 2))
    if first + later * (MIN_ROUNDS - 1) > search:  # a small budget: equal rounds, 3 at least
        first = later = MIN_ROUND
    rounds, left = [first], search - first
    while left >= MIN_ROUND and len(rounds) < max_rounds:
        take = later if left - later >= MIN_ROUND else left
        rounds.append(take)
        left -= take
    if left:  # too few for a round of their own: the last round takes them
        rounds[-1] += left
    return Budget(rounds, confirm_runs, curve)


def stop_reason(bests: list[float], min_improvement: float, mode: str = "min") -> str | None:
    """Why to stop after the rounds whose best ranking metric (the best so far, each round)
    is ``bests``; None to go on. It stops when the relative improvement of the best was
    below ``min_improvement`` in each of the last two rounds (so never before round 3)."""
    if len(bests) < MIN_ROUNDS:
        return None
    gains = [_gain(bests[i - 1], bests[i], mode) for i in (-2, -1)]
    if all(g < min_improvement for g in gains):
        return (
            f"the best improved by {gains[0]:.2%} and {gains[1]:.2%} in the last two rounds, "
            f"both below autopilot.min_improvement ({min_improvement:.0%})"
        )
    return None


def _gain(before: float, after: float, mode: str) -> float:
    if not (math.isfinite(before) and math.isfinite(after)) or before == 0:
        return math.inf if math.isfinite(after) and not math.isfinite(before) else 0.0
    change = (before - after) if mode == "min" else (after - before)
    return change / abs(before)


def best_quarter(
    points: list[dict[str, Any]], metric: str, mode: str
) -> tuple[list[dict[str, Any]], str | None]:
    """The round's best quarter (at least 3) of the trials that may steer, and the label
    most of them carry (None: no trial may steer)."""
    done = [
        p
        for p in points
        if math.isfinite(p.get(metric, math.nan)) and p.get("label") in diagnosis.STEERING
    ]
    if not done:
        return [], None
    ranked = sorted(done, key=lambda p: p[metric], reverse=mode == "max")
    top = ranked[: max(3, math.ceil(len(ranked) / 4))]
    label = Counter(p["label"] for p in top).most_common(1)[0][0]
    return top, label


def steer(
    points: list[dict[str, Any]],
    space: dict[str, Any],
    metric: str,
    mode: str,
    cfg: Any,
) -> tuple[dict[str, Any], str | None, list[str]]:
    """The next round's space from this round's trials (searched values, ``metric``,
    ``label``), the label of its best quarter, and a line per change saying why."""
    points, settled = _noise_bound(points, metric, mode)
    top, label = best_quarter(points, metric, mode)
    if label is None:
        return (
            dict(space),
            None,
            ["no trial may steer (all diverged, undetermined or unfinished): the space is kept"],
        )
    share = f"{sum(p['label'] == label for p in top)} of the best {len(top)} are {label}"
    if settled and label == "good_fit":
        new, label, why = _sweet_spot(points, top, space, metric, mode, cfg, share)
        return new, label, [settled, *why]
    if label in ("underfit", "both"):
        # diagnosis.propose's high-bias rule, read from the best quarter alone
        new, why = diagnosis.propose([{**p, "label": label} for p in top], space, metric, mode, cfg)
        grown = _more_capacity(top, space)
        if grown is not None:  # from the best trials' sizes, not the configured one
            new["model.hidden"] = grown
            why = [w for w in why if "model.hidden" not in w]
            why.insert(
                0,
                f"model.hidden: more capacity, the best quarter's sizes, twice as wide and one "
                f"layer deeper ({grown['values']})",
            )
        if label == "underfit" and "train.augment" in new:  # augmentation regularizes too
            new["train.augment"] = {"type": "choice", "values": [False]}
            why.append("train.augment: off (less regularization)")
        elif "train.augment" in new:  # both: searchable again (an overfit round forced it on)
            new["train.augment"] = {"type": "choice", "values": [False, True]}
        return new, label, [f"{share}: {w}" for w in why]
    if label == "overfit":
        return _overfit(top, space, cfg, share)
    return _sweet_spot(points, top, space, metric, mode, cfg, share)


def _sweet_spot(
    points: list[dict[str, Any]],
    top: list[dict[str, Any]],
    space: dict[str, Any],
    metric: str,
    mode: str,
    cfg: Any,
    share: str,
) -> tuple[dict[str, Any], str, list[str]]:
    """A clear sweet spot: each range narrowed around the best, or extended past an edge
    the best sits on (``diagnosis.propose``), and each choice narrowed to the best
    quarter's values."""
    new, why = diagnosis.propose(points, space, metric, mode, cfg)
    grown = _capacity_edge(top, new)
    narrowed = _narrow_choices(top, new)
    if grown is not None:
        new["model.hidden"], line = grown
        narrowed.pop("model.hidden", None)
        why.append(line)
    new.update(narrowed)
    why += [
        f"{key}: the best quarter chose {len(spec['values'])} of its values: "
        f"narrowed to {spec['values']}"
        for key, spec in narrowed.items()
    ]
    return new, "good_fit", [f"{share}: {w}" for w in why]


def _capacity_edge(
    top: list[dict[str, Any]], space: dict[str, Any]
) -> tuple[dict[str, Any], str] | None:
    """A best size on the edge of the sizes searched, extended past it like a range's
    edge: the largest offered grows (twice as wide, one layer deeper), the smallest shrinks
    (half as wide, one layer shallower); the best quarter's sizes stay. None when the best
    sits inside, or ``model.hidden`` is not a searched choice."""
    spec = space.get("model.hidden")
    if spec is None or spec["type"] != "choice" or len(spec["values"]) < MIN_CHOICES:
        return None
    best = top[0].get("model.hidden")
    sizes = sorted((list(v) for v in spec["values"]), key=_units)
    if best is None or list(best) not in sizes:
        return None
    best = list(best)
    if _units(best) == _units(sizes[-1]):
        side, beyond = "largest", [[2 * w for w in best]]
        beyond += [best + [best[-1]]] if len(best) < MAX_DEPTH else []
    elif _units(best) == _units(sizes[0]):
        side, beyond = "smallest", [[max(4, w // 2) for w in best]]
        beyond += [best[:-1]] if len(best) > 1 else []
    else:
        return None
    values: list[list[int]] = []
    for h in [best, *(list(p["model.hidden"]) for p in top if "model.hidden" in p), *beyond]:
        if h not in values:
            values.append(h)
    if len(values) < MIN_CHOICES:  # nothing past the edge (the smallest size already)
        return None
    line = (
        f"model.hidden: the best trial ({best}) is the {side} size searched: extended past it "
        f"to {values}"
    )
    return {"type": "choice", "values": values}, line


def _units(hidden: list[int]) -> int:
    """A size's weights between hidden layers plus its units: what orders capacity (wider
    and deeper are both more)."""
    return sum(hidden) + sum(a * b for a, b in zip(hidden, hidden[1:], strict=False))


def _noise_bound(
    points: list[dict[str, Any]], metric: str, mode: str
) -> tuple[list[dict[str, Any]], str]:
    """The points with the best quarter's ``underfit`` trials whose validation loss had
    stopped improving read as ``good_fit``, and a note saying so ('' when none).

    The diagnosis calls a trial underfit when its training loss stays high, which noise in
    the labels (or an irreducible error in a regression) causes as well as too little
    capacity. The round tells them apart: a model short of capacity still improves on the
    validation rows while it trains; one held back by the noise stops improving there
    while its training goes on (``best_epoch`` a quarter of its run or more before its
    end, at least 3 epochs). More capacity and less regularization would then fit the
    noise: the round steers as a sweet spot (narrowing around its best) instead."""
    top, label = best_quarter(points, metric, mode)
    if label != "underfit":
        return points, ""
    flat = {id(p) for p in top if p["label"] == "underfit" and _settled(p)}
    if len(flat) * 2 <= sum(p["label"] == "underfit" for p in top):
        return points, ""
    epochs = sorted({f"{p['best_epoch']} of {p['ran']}" for p in top if id(p) in flat})
    note = (
        f"{len(flat)} of the best {len(top)} are underfit by the diagnosis (high training "
        f"loss), yet their validation loss stopped improving at epoch {', '.join(epochs)} "
        "while training went on: the noise in the data, not capacity, holds them back; "
        "narrowed as a sweet spot, not grown"
    )
    return [{**p, "label": "good_fit"} if id(p) in flat else p for p in points], note


def _settled(p: dict[str, Any]) -> bool:
    """Validation loss flat or rising for the last quarter of a run (at least 3 epochs)."""
    ran, best = int(p.get("ran") or 0), int(p.get("best_epoch") or 0)
    return ran > 0 and best > 0 and ran - best >= max(3, ran // SETTLED)


def longer(
    points: list[dict[str, Any]], metric: str, mode: str, epochs: int, configured: int
) -> tuple[int, list[str]]:
    """The next round's ``train.epochs``, and why when it changes. Epochs are a budget on
    an edge like any range's: when most of the best quarter trained every planned epoch
    and had their best in the last tenth of them (still improving when the schedule ran
    out), twice the epochs, up to ``MAX_EPOCHS_FACTOR`` x the configured ones. ``points``
    carry ``best_epoch`` and ``ran`` (epochs trained) beside their values."""
    top, _ = best_quarter(points, metric, mode)
    cap = configured * MAX_EPOCHS_FACTOR
    if not top or epochs >= cap:
        return epochs, []
    late = [
        p
        for p in top
        if p.get("ran", 0) >= epochs and p.get("best_epoch", 0) >= math.ceil(LATE * epochs)
    ]
    if len(late) * 2 <= len(top):
        return epochs, []
    more = min(2 * epochs, cap)
    return more, [
        f"{len(late)} of the best {len(top)} were still improving at the end (their best "
        f"epoch in the last tenth of {epochs}): train.epochs {epochs} -> {more}"
    ]


def _more_capacity(top: list[dict[str, Any]], space: dict[str, Any]) -> dict[str, Any] | None:
    """High bias: ``model.hidden`` over the best quarter's sizes, each twice as wide and each
    one layer deeper (up to ``MAX_DEPTH``); the sizes themselves stay, so the trials that
    chose them still warm the next round's TPE. None when the space searches no
    ``model.hidden`` choice (a factory grows through its own arguments)."""
    spec = space.get("model.hidden")
    if spec is None or spec["type"] != "choice":
        return None
    kept = [list(p["model.hidden"]) for p in top if "model.hidden" in p]
    if not kept:
        return None
    values: list[list[int]] = []
    for h in kept:
        for v in (h, [2 * w for w in h], h + [h[-1]] if len(h) < MAX_DEPTH else None):
            if v is not None and v not in values:
                values.append(v)
    return {"type": "choice", "values": values}


def _narrow_choices(top: list[dict[str, Any]], space: dict[str, Any]) -> dict[str, Any]:
    """A sweet spot narrows a choice too (``diagnosis.propose`` narrows ranges only): each
    searched choice keeps the values the best quarter chose, when that is at least two
    and fewer than it offered (one value would stop searching the key)."""
    out = {}
    for key, spec in space.items():
        if spec["type"] != "choice":
            continue
        chosen = [v for v in spec["values"] if any(p.get(key) == v for p in top)]
        if len(spec["values"]) > len(chosen) >= MIN_CHOICES:
            out[key] = {**spec, "values": chosen}
    return out


def _overfit(
    top: list[dict[str, Any]], space: dict[str, Any], cfg: Any, share: str
) -> tuple[dict[str, Any], str, list[str]]:
    """More regularization (each regularizer's range from the best quarter's lowest value up
    past its top: tenfold on a log scale, half its width on a linear one, within
    ``MAX_REGULARIZATION``), less capacity (the best quarter's hidden sizes and half of
    them), augmentation on where it is searched."""
    new = {k: dict(v) for k, v in space.items()}
    why = []
    for key in REGULARIZERS:
        spec = new.get(key)
        if spec is None or spec["type"] not in ("uniform", "loguniform"):
            continue
        seen = [float(p[key]) for p in top if key in p]
        low = min(seen) if seen else spec["low"]
        limit = min(diagnosis.LIMITS.get(key, (0.0, math.inf))[1], MAX_REGULARIZATION[key])
        if spec["type"] == "loguniform":
            low = max(low, spec["low"])
            high = min(max(spec["high"] * 10, low * 100), limit)
        else:
            high = min(spec["high"] + (spec["high"] - spec["low"]) / 2, limit)
        new[key] = {**spec, "low": _round(low), "high": _round(high)}
        why.append(f"{share}: {key}: more regularization, {_range(new[key])}")
    hidden = new.get("model.hidden")
    if hidden is not None and hidden["type"] == "choice":
        kept = [list(p["model.hidden"]) for p in top if "model.hidden" in p]
        if not kept:  # no best trial says which size: keep the choice as it was
            kept = [list(v) for v in hidden["values"]]
        smaller = [[max(4, w // 2) for w in h] for h in kept]
        values = []
        for h in kept + smaller:
            if h not in values:
                values.append(h)
        new["model.hidden"] = {"type": "choice", "values": values}
        why.append(
            f"{share}: model.hidden: less capacity, the best quarter's sizes and half of them "
            f"({values})"
        )
    if "train.augment" in new:
        new["train.augment"] = {"type": "choice", "values": [True]}
        why.append(f"{share}: train.augment: on (the data has a shape)")
    if not why:
        why.append(f"{share}: nothing searched that regularizes: the space is kept")
    return new, "overfit", why


def warm_start(
    points: list[dict[str, Any]], space: dict[str, Any], metric: str
) -> tuple[list[dict[str, Any]], list[float]]:
    """What the next round's TPE is told of the earlier rounds: each trial's searched values
    (the space's keys only) and its best ``metric``, for the trials whose every value lies in
    the new space. Optuna holds a trial only against its space's distributions, so a value
    outside a narrowed range (or a choice no longer offered) leaves that trial out rather
    than being moved, which would credit a result to values that never produced it."""
    kept: list[dict[str, Any]] = []
    rewards: list[float] = []
    for p in points:
        score = p.get(metric)
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            continue
        if all(key in p and _inside(p[key], spec) for key, spec in space.items()):
            kept.append({key: p[key] for key in space})
            rewards.append(float(score))
    return kept, rewards


def _inside(value: Any, spec: dict[str, Any]) -> bool:
    kind = spec["type"]
    if kind in ("uniform", "loguniform"):
        return isinstance(value, (int, float)) and spec["low"] <= value <= spec["high"]
    if kind == "randint":
        return isinstance(value, int) and spec["low"] <= value < spec["high"]
    if kind == "choice":
        return any(value == v and type(value) is type(v) for v in spec["values"])
    return False  # a grid is enumerated, never sampled: nothing to warm


def _range(spec: dict[str, Any]) -> str:
    return f"{spec['type']} [{spec['low']:.3g}, {spec['high']:.3g}]"


def _round(v: float) -> float:
    return float(f"{v:.4g}")
