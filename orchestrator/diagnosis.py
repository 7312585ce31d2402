"""Bias/variance diagnosis: each trial labelled ``underfit``, ``good_fit`` or ``overfit``
from its own learning curves, with the reasons in numbers and the fixes as config keys.

Losses are compared with the *baseline*: the cross-entropy of always predicting the
training split's class frequencies (what a model that learned nothing from the features
scores), so the thresholds mean the same on any data set. The rules, in order:

1. ``underfit`` (high bias): at its best validation epoch the trial's training loss is
   still above ``underfit_loss_ratio`` x the baseline's loss: it cannot fit even the rows
   it trains on.
2. ``overfit`` (high variance), either of:
   - the generalization gap (validation minus training loss) at the last epoch is above
     ``gap_ratio`` x the baseline's loss;
   - validation loss bottomed out early (at or before ``early_fraction`` of the epochs run)
     and had risen by more than ``rise_ratio`` x the baseline's loss by the last epoch,
     while training loss kept falling.
3. ``good_fit`` otherwise: the sweet spot.

Pure code: the driver calls it when a trial ends and tags its run with the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from orchestrator.config import DiagnosisConfig

LABELS = ("underfit", "good_fit", "overfit")


@dataclass(frozen=True)
class Baseline:
    loss: float  # cross-entropy of predicting the training split's class frequencies
    accuracy: float  # always predicting the most frequent class


def baseline(class_counts: list[int] | Any) -> Baseline:
    counts = [float(c) for c in class_counts if c > 0]
    total = sum(counts)
    if total <= 0:
        return Baseline(math.nan, math.nan)
    priors = [c / total for c in counts]
    return Baseline(-sum(p * math.log(p) for p in priors), max(priors))


@dataclass
class Diagnosis:
    label: str
    reasons: str  # one sentence, with the numbers
    fixes: list[str]  # what to change, as config keys


def diagnose(history: list[dict[str, float]], base: Baseline, cfg: Any,
             th: DiagnosisConfig | None = None) -> Diagnosis | None:
    """The label of one trial from its per-epoch rows (``epoch``, ``train_loss``,
    ``val_loss``); ``cfg`` is the trial's own config (for the fixes' current values);
    ``th`` the thresholds (``diagnosis.*`` of the config).
    None when there is nothing to judge (no epoch, or no baseline)."""
    th = th or DiagnosisConfig()
    rows = sorted({int(r["epoch"]): r for r in history
                   if "train_loss" in r and "val_loss" in r}.items())
    if not rows or not math.isfinite(base.loss) or base.loss <= 0:
        return None
    epochs = [e for e, _ in rows]
    train = [r["train_loss"] for _, r in rows]
    val = [r["val_loss"] for _, r in rows]
    if not all(math.isfinite(v) for v in train + val):
        return Diagnosis("underfit", "training diverged (a loss became NaN or infinite)",
                         [f"lower train.lr (now {_v(cfg, 'train.lr')})"])
    best = min(range(len(val)), key=lambda i: val[i])
    last = len(rows) - 1
    bias = train[best] / base.loss
    gap = (val[last] - train[last]) / base.loss
    rise = (val[last] - val[best]) / base.loss
    early = epochs[best] <= th.early_fraction * epochs[last] and best < last
    still_learning = train[last] < train[best]
    if bias > th.underfit_loss_ratio:
        return Diagnosis(
            "underfit",
            f"training loss {train[best]:.3f} at the best epoch ({epochs[best]}) is "
            f"{bias:.0%} of the baseline's {base.loss:.3f} (above "
            f"{th.underfit_loss_ratio:.0%}): the model cannot fit even its training rows",
            _underfit_fixes(cfg, still_falling=val[last] <= min(val)))
    if gap > th.gap_ratio or (early and rise > th.rise_ratio and still_learning):
        why = []
        if gap > th.gap_ratio:
            why.append(f"validation loss {val[last]:.3f} vs training loss {train[last]:.3f} "
                       f"at the last epoch: a gap of {gap:.0%} of the baseline's loss "
                       f"(above {th.gap_ratio:.0%})")
        if early and rise > th.rise_ratio and still_learning:
            why.append(f"validation loss bottomed at epoch {epochs[best]} of {epochs[last]} "
                       f"({val[best]:.3f}) and rose to {val[last]:.3f} while training loss "
                       f"kept falling ({train[best]:.3f} -> {train[last]:.3f})")
        return Diagnosis("overfit", "; ".join(why), _overfit_fixes(cfg))
    return Diagnosis(
        "good_fit",
        f"training loss {train[best]:.3f} ({bias:.0%} of the baseline's {base.loss:.3f}) and "
        f"validation loss {val[best]:.3f} at epoch {epochs[best]}, gap {gap:.0%} of the "
        "baseline at the end: the sweet spot", [])


def _v(cfg: Any, dotted: str) -> Any:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def _underfit_fixes(cfg: Any, still_falling: bool) -> list[str]:
    fixes = [f"more capacity: raise model.hidden (now {_v(cfg, 'model.hidden')})",
             f"less regularization: lower train.weight_decay (now "
             f"{_v(cfg, 'train.weight_decay'):.3g}), train.l1 (now {_v(cfg, 'train.l1'):.3g}),"
             f" model.dropout (now {_v(cfg, 'model.dropout'):.3g})",
             "more or better features (columns of data.path)"]
    if still_falling:
        fixes.append(f"train longer: raise train.epochs (now {_v(cfg, 'train.epochs')}; "
                     "validation loss was still falling)")
    return fixes


def _overfit_fixes(cfg: Any) -> list[str]:
    capped = _v(cfg, "data.max_train_rows")
    return [
        "more data" + (f": raise or drop data.max_train_rows (now {capped})" if capped
                       else " (more rows in data.path)"),
        f"stronger L2: raise train.weight_decay (now {_v(cfg, 'train.weight_decay'):.3g})",
        f"L1: raise train.l1 (now {_v(cfg, 'train.l1'):.3g})",
        f"more dropout: raise model.dropout (now {_v(cfg, 'model.dropout'):.3g})",
        f"early stopping: set train.early_stopping.patience (now "
        f"{_v(cfg, 'train.early_stopping.patience')})",
        f"augmentation: train.augment: true (now {_v(cfg, 'train.augment')})",
        f"less capacity: lower model.hidden (now {_v(cfg, 'model.hidden')})",
    ]


# ---------------------------------------------------------------- the sweep's next space

EDGE = 0.1  # a best value in the outer tenth of its range sits on the boundary


def _scale(spec: dict[str, Any]) -> tuple[Any, Any]:
    """To and from the axis the range is searched on (log10 for loguniform)."""
    if spec["type"] == "loguniform":
        return math.log10, lambda v: 10 ** v
    return float, float


def propose(points: list[dict[str, Any]], space: dict[str, dict[str, Any]], metric: str,
            mode: str, cfg: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The next ``sweep.space`` from a finished sweep's trials (each point: the searched
    values, the best ``metric`` and the ``label``), and why, change by change:

    - every trial underfit: more capacity (``model.hidden`` searched at 2x and 4x the
      current width) and less regularization (log ranges moved down: the bottom a
      hundredfold, the top tenfold; linear ones cut to their lowest tenth);
    - otherwise, for each numeric key: where the best trial sits on a range's edge, the
      range is extended past that edge (tenfold on a log scale, half its width on a
      linear one, within what the key allows); elsewhere it is narrowed to the span of the
      best quarter of the trials (at least 3), widened by a margin.
    """
    done = [p for p in points if math.isfinite(p.get(metric, math.nan))]
    if not done:
        return dict(space), ["no trial finished an epoch: nothing to go on"]
    ranked = sorted(done, key=lambda p: p[metric], reverse=mode == "max")
    best, top = ranked[0], ranked[:max(3, len(ranked) // 4)]
    new: dict[str, dict[str, Any]] = {k: dict(v) for k, v in space.items()}
    why: list[str] = []
    labels = [p.get("label") for p in done]
    if labels and all(lab == "underfit" for lab in labels):
        width = list(_value(cfg, "model.hidden") or [64])
        new["model.hidden"] = {"type": "choice",
                               "values": [[2 * w for w in width], [4 * w for w in width]]}
        why.append(f"every trial underfit: more capacity, model.hidden searched over 2x and 4x "
                   f"{width}")
        for key in REGULARIZERS:
            if key in new and new[key]["type"] in ("uniform", "loguniform"):
                spec = new[key]
                if spec["type"] == "loguniform":  # a hundredfold lower at the bottom
                    spec["low"], spec["high"] = _round(spec["low"] / 100), _round(
                        spec["high"] / 10)
                else:
                    spec["high"] = _round(spec["low"] + (spec["high"] - spec["low"]) / 10)
                why.append(f"{key}: less regularization, searched over [{spec['low']:.3g}, "
                           f"{spec['high']:.3g}]")
        return new, why
    for key, spec in space.items():
        if spec["type"] not in ("uniform", "loguniform") or key not in best:
            continue
        to, back = _scale(spec)
        lo, hi = to(spec["low"]), to(spec["high"])
        span = hi - lo
        if span <= 0:
            continue
        at = (to(best[key]) - lo) / span
        limit_lo, limit_hi = LIMITS.get(key, (-math.inf, math.inf))
        seen = [to(p[key]) for p in done if key in p]
        lowest, highest = to(best[key]) <= min(seen), to(best[key]) >= max(seen)
        # on an edge: in the range's outer tenth, or the most extreme value drawn that
        # way and in the outer quarter (the trend points past the edge)
        if at <= EDGE or at >= 1 - EDGE or (lowest and at <= 0.25) or (highest and at >= 0.75):
            down = at <= 0.5
            step = 1.0 if spec["type"] == "loguniform" else span / 2
            floor = -math.inf if spec["type"] == "loguniform" and limit_lo <= 0 else to(limit_lo)
            if down:
                new_lo, new_hi = max(lo - step, floor), lo + span / 2
            else:
                new_lo = hi - span / 2
                new_hi = min(hi + step, to(limit_hi) if math.isfinite(limit_hi) else math.inf)
            if (new_lo, new_hi) == (lo, hi) or new_hi <= new_lo:
                continue
            new[key] = {**spec, "low": _round(back(new_lo)), "high": _round(back(new_hi))}
            why.append(f"{key}: the best trial ({best[key]:.3g}) sits on the "
                       f"{'lower' if down else 'upper'} edge of [{spec['low']:.3g}, "
                       f"{spec['high']:.3g}]: extended to [{new[key]['low']:.3g}, "
                       f"{new[key]['high']:.3g}]")
        else:
            vals = [to(p[key]) for p in top if key in p]
            margin = span * 0.1
            new_lo, new_hi = max(lo, min(vals) - margin), min(hi, max(vals) + margin)
            if new_hi - new_lo >= span * 0.9:
                continue  # the good trials are spread over the whole range: keep it
            new[key] = {**spec, "low": _round(back(new_lo)), "high": _round(back(new_hi))}
            why.append(f"{key}: the best {len(top)} trials lie in [{back(min(vals)):.3g}, "
                       f"{back(max(vals)):.3g}]: narrowed to [{new[key]['low']:.3g}, "
                       f"{new[key]['high']:.3g}] around the best ({best[key]:.3g})")
    if not why:
        why.append("the best trials are spread over every range and none sits on an edge: "
                   "keep the space, search it with more trials")
    return new, why


REGULARIZERS = ("train.weight_decay", "train.l1", "model.dropout")
LIMITS = {"model.dropout": (0.0, 0.95), "train.weight_decay": (0.0, math.inf),
          "train.l1": (0.0, math.inf), "train.lr": (0.0, math.inf),
          "train.augment_noise": (0.0, math.inf)}


def _value(cfg: Any, dotted: str) -> Any:
    return _v(cfg, dotted) if cfg is not None else None


def _round(v: float) -> float:
    return float(f"{v:.4g}")
