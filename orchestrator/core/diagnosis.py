"""Bias/variance diagnosis: each trial labelled from its whole learning curve, with the
reasons in numbers and the fixes as config keys.

Losses are compared with the *baseline*: the cross-entropy of always predicting the
training split's class frequencies (what a model that learned nothing from the features
scores), so the thresholds (``diagnosis.*``, fractions of the baseline's loss) mean the same
on any data set. Both curves are read smoothed (the median of each epoch and its two
neighbours, the median of the last three at the end), so one noisy epoch flips nothing.

- ``diverged``: a loss became NaN or infinite; or training loss ended above
  ``diverge_ratio`` x the baseline (or above the baseline and ``diverge_ratio`` x its own
  minimum: it learned, then lost it); or validation loss ended above ``diverge_ratio`` x
  the baseline while training loss stayed above half of it (confidently wrong without
  having memorized anything, unlike an overfit run).
- ``undetermined``: fewer than ``min_epochs`` epochs; or stopped by the scheduler (pruned)
  while validation loss was still falling by more than ``falling_ratio`` x the baseline over
  the last quarter of its epochs (at least 6); or stopped early with a high training loss
  still falling fast enough to get under the bias line within that many epochs again; or
  failed with an error: not a finished run.

Otherwise two questions, each read over the whole run:

- high bias: the *lowest* training loss of the run is above ``underfit_loss_ratio`` x the
  baseline (it never fit its own training rows); never when training accuracy reached 100%,
  nor for a run stopped early while its training loss was falling that fast;
- high variance: validation loss ended more than ``rise_ratio`` x the baseline above its
  minimum (wherever the minimum fell), or validation loss ends more than ``gap_ratio`` x the
  baseline above training loss, or the accuracy gap is above ``accuracy_gap`` while the loss
  gap is above half of ``gap_ratio``.

``underfit`` is bias alone, ``overfit`` variance alone, ``both`` the two together and
``good_fit`` neither: the sweet spot. ``diverged`` and ``undetermined`` never steer the next
search space (``propose``). The thresholds were tuned on a corpus of labelled curves
(tests/curves/corpus.json, made by ``python -m jobs.curves``) and scored on held-out sets.

Pure code: the driver calls it when a trial ends and tags its run with the result.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from orchestrator import config as config_mod
from orchestrator.config import DiagnosisConfig

LABELS = ("underfit", "good_fit", "overfit", "both", "diverged", "undetermined")
STEERING = ("underfit", "good_fit", "overfit", "both")  # labels that may change the space
SMOOTHED = 3  # the median of three (an epoch and its two neighbours): shorter curves stay raw
WHOLE_PERCENT = 0.095  # shares that round to 10% or more print whole; smaller keep a decimal
FITTED_ACCURACY = 0.999  # 100% training accuracy, give or take a row in a thousand: it fit
VISIBLE_RISE = 0.1  # validation loss ended 10% above its best: the reason says it rose
HIGH_ACCURACY = 0.95  # from 95% up, the overfit reason quotes training accuracy, not loss


@dataclass(frozen=True)
class Baseline:
    """What a model that learned nothing from the features scores: losses are read against it."""

    loss: float  # the trivial predictor's: class frequencies (cross-entropy), the training
    # mean (MSE on standardized targets: 1), label frequencies (mean binary cross-entropy)
    accuracy: float  # always predicting the most frequent class (NaN: not classes)


def baseline(class_counts: list[int] | Any) -> Baseline:
    """The baseline of a training split from its rows per class (NaN when it has none)."""
    counts = [float(c) for c in class_counts if c > 0]
    total = sum(counts)
    if total <= 0:
        return Baseline(math.nan, math.nan)
    priors = [c / total for c in counts]
    return Baseline(-sum(p * math.log(p) for p in priors), max(priors))


def describe(base: Baseline) -> str:
    """The baseline in words: its loss, and its accuracy where the task has one."""
    acc = f", accuracy {base.accuracy:.3f}" if math.isfinite(base.accuracy) else ""
    return f"baseline (the trivial predictor) loss {base.loss:.3f}{acc}"


@dataclass
class Diagnosis:
    """A trial's label, why (in numbers) and what to change (as config keys)."""

    label: str
    reasons: str  # one or two sentences, with the numbers
    fixes: list[str]  # what to change, as config keys
    facts: dict[str, float] = field(default_factory=dict)  # the figures the label read


def _smooth(values: list[float]) -> list[float]:
    """Median of each point and its neighbours: a one-epoch spike or dip disappears."""
    if len(values) < SMOOTHED:
        return list(values)
    inner = [statistics.median(values[i - 1 : i + 2]) for i in range(1, len(values) - 1)]
    return [statistics.median(values[:3])] + inner + [statistics.median(values[-3:])]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fall(values: list[float]) -> float:
    """How far a series fell from its first to its last point, read from the median of the
    slopes between every pair of points (Theil-Sen): one outlying epoch does not move it."""
    slopes = [
        (values[j] - values[i]) / (j - i)
        for i in range(len(values))
        for j in range(i + 1, len(values))
    ]
    return -statistics.median(slopes) * (len(values) - 1) if slopes else 0.0


def _pct(v: float) -> str:
    return f"{v:.0%}" if abs(v) >= WHOLE_PERCENT or v == 0 else f"{v:.1%}"


def diagnose(
    history: list[dict[str, float]],
    base: Baseline,
    cfg: Any,
    th: DiagnosisConfig | None = None,
    planned_epochs: int | None = None,
) -> Diagnosis | None:
    """The label of one trial from its per-epoch rows (``epoch``, ``train_loss``,
    ``val_loss``, optional ``train_accuracy``/``val_accuracy`` and the loop's
    ``early_stopped``/``diverged`` flags); ``cfg`` is the trial's own config (for the fixes'
    current values and, unless ``planned_epochs`` is given, ``train.epochs``); ``th`` the
    thresholds (``diagnosis.*`` of the config). A run shorter than planned that carries no
    flag was stopped by the scheduler (pruned). None when there is nothing to judge."""
    th = th or DiagnosisConfig()
    rows = _clean_rows(history)
    if not rows or not math.isfinite(base.loss) or base.loss <= 0:
        return None
    c = _curves(rows, base.loss, planned_epochs or _v(cfg, "train.epochs"))

    # ---- diverged: nothing else can be read from a blown-up run
    diverged = _diverged(c, th, cfg)
    if diverged is not None:
        return diverged
    facts = _facts(c)

    # ---- undetermined: too short, or pruned before it had settled
    unsettled = _unsettled(c, th, facts)
    if unsettled is not None:
        return Diagnosis("undetermined", unsettled, _undetermined_fixes(cfg), facts)

    # ---- bias and variance, each read over the whole run
    bias, variance, cut_short = _bias_variance(c, th, facts)
    kept = _kept_weights(c, cfg)
    if variance and bias:
        return Diagnosis("both", _both_reason(c, th, facts, kept), _both_fixes(cfg), facts)
    if variance:
        return Diagnosis("overfit", _overfit_reason(c, th, facts, kept), _overfit_fixes(cfg), facts)
    if cut_short:
        return Diagnosis(
            "undetermined", _cut_short_reason(c, facts), _undetermined_fixes(cfg), facts
        )
    still_falling = _still_falling(c, th)
    if bias:
        why = _underfit_reason(c, th, facts, still_falling)
        return Diagnosis("underfit", why, _underfit_fixes(cfg, still_falling), facts)
    return Diagnosis("good_fit", _good_fit_reason(c, facts, cfg, still_falling), [], facts)


@dataclass(frozen=True)
class _Curves:
    """One run's curves as ``diagnose`` reads them: raw, smoothed, and where they bottom out."""

    rows: list[dict[str, float]]
    b: float  # the baseline's loss: every loss is read as a fraction of it
    planned: Any  # the epochs the run was planned for
    epochs: list[int]
    early_stopped: bool
    train_raw: list[float]
    val_raw: list[float]
    train: list[float]  # smoothed
    val: list[float]  # smoothed
    tacc: list[float]
    vacc: list[float]
    acc: bool  # both accuracies, finite at every epoch
    top_acc: float  # the highest training accuracy (NaN without accuracies)
    low: int  # the index of the smoothed validation minimum
    best: int  # the index of the raw validation minimum

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def window(self) -> int:
        """The epochs a trend is read over: the last quarter, at least 6 (all of a shorter run)."""
        return min(self.n, max(6, self.n // 4))


def _clean_rows(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The rows with an epoch and both losses, one per epoch (the last wins), in epoch order."""
    return [
        r
        for _, r in sorted(
            {
                int(r["epoch"]): r
                for r in history
                if "epoch" in r and _number(r.get("train_loss")) and _number(r.get("val_loss"))
            }.items()
        )
    ]


def _curves(rows: list[dict[str, float]], b: float, planned: Any) -> _Curves:
    epochs = [int(r["epoch"]) for r in rows]
    train_raw = [float(r["train_loss"]) for r in rows]
    val_raw = [float(r["val_loss"]) for r in rows]
    # accuracies are read only when every epoch has them (a classifier's, all finite)
    tacc = [float(r.get("train_accuracy", math.nan)) for r in rows]
    vacc = [float(r.get("val_accuracy", math.nan)) for r in rows]
    acc = all(math.isfinite(v) for v in tacc + vacc)
    train, val = _smooth(train_raw), _smooth(val_raw)
    # how far validation rose is read on the smoothed curve (one lucky epoch is not a
    # minimum); the epoch named is the raw minimum, whose weights the sweep keeps
    low = min(range(len(rows)), key=lambda i: val[i])
    best = min(range(len(rows)), key=lambda i: val_raw[i])
    return _Curves(
        rows=rows,
        b=b,
        planned=planned or epochs[-1],
        epochs=epochs,
        early_stopped=any(r.get("early_stopped") for r in rows),
        train_raw=train_raw,
        val_raw=val_raw,
        train=train,
        val=val,
        tacc=tacc,
        vacc=vacc,
        acc=acc,
        top_acc=max(tacc) if acc else math.nan,
        low=low,
        best=best,
    )


def _diverged(c: _Curves, th: DiagnosisConfig, cfg: Any) -> Diagnosis | None:
    """The run's ``diverged`` label; None when it did not diverge."""
    bad = next(
        (
            i
            for i in range(c.n)
            if c.rows[i].get("diverged")
            or not (math.isfinite(c.train_raw[i]) and math.isfinite(c.val_raw[i]))
        ),
        None,
    )
    if bad is not None:
        return Diagnosis(
            "diverged",
            f"training diverged at epoch {c.epochs[bad]}: a loss became NaN or infinite",
            _diverged_fixes(cfg),
            {"epoch": c.epochs[bad]},
        )
    b, train, val = c.b, c.train, c.val
    # Blown up, though finite: training loss ended above diverge_ratio x the baseline, or
    # worse than the baseline and diverge_ratio x its own minimum (it learned, then lost
    # it); or validation loss ended above diverge_ratio x the baseline while training loss
    # stayed above half of it (confidently wrong, without memorizing the training rows,
    # which is what an overfit run's high validation loss comes from).
    train_blown = train[-1] > th.diverge_ratio * b or (
        train[-1] > b and train[-1] > th.diverge_ratio * min(train)
    )
    val_blown = val[-1] > th.diverge_ratio * b and train[-1] > 0.5 * b
    if not (train_blown or val_blown):
        return None
    which, end = ("training", train[-1]) if train_blown else ("validation", val[-1])
    return Diagnosis(
        "diverged",
        f"{which} loss ended at {end / b:.3g}x the baseline's {b:.3f} "
        f"(training loss {train[-1]:.4g} at the end, {min(train):.4g} at its lowest; "
        f"diagnosis.diverge_ratio = {th.diverge_ratio:g}): the optimization blew up",
        _diverged_fixes(cfg),
        {"end_loss_ratio": end / b},
    )


def _facts(c: _Curves) -> dict[str, float]:
    b, train, val, val_raw, low, best = c.b, c.train, c.val, c.val_raw, c.low, c.best
    facts = {
        "epochs": float(c.epochs[-1]),
        "planned_epochs": float(c.planned),
        "best_epoch": float(c.epochs[best]),
        "baseline_loss": b,
        "train_min_ratio": min(train) / b,
        "val_min_ratio": val[low] / b,
        "val_end_ratio": val[-1] / b,
        "rise_ratio": (val[-1] - val[low]) / b,
        "gap_end_ratio": (val[-1] - train[-1]) / b,
        "gap_best_ratio": (val_raw[best] - c.train_raw[best]) / b,
    }
    if c.acc:
        facts.update(
            {
                "train_accuracy_max": c.top_acc,
                "accuracy_gap_end": c.tacc[-1] - c.vacc[-1],
                "accuracy_gap_best": c.tacc[best] - c.vacc[best],
            }
        )
    return facts


def _unsettled(c: _Curves, th: DiagnosisConfig, facts: dict[str, float]) -> str | None:
    """Why the run is too short or was pruned before it settled (adding ``fall_ratio`` to
    ``facts`` once it is long enough to read); None when it can be judged."""
    n = c.n
    if n < th.min_epochs:
        return (
            f"only {n} epoch{'s' * (n != 1)} (fewer than "
            f"diagnosis.min_epochs = {th.min_epochs}): too few to tell"
        )
    pruned = c.epochs[-1] < c.planned and not c.early_stopped
    window = c.window
    fall = _fall(c.val_raw[-window:]) / c.b
    facts["fall_ratio"] = fall
    if pruned and fall > th.falling_ratio:
        return (
            f"stopped by the scheduler at epoch {c.epochs[-1]} of {c.planned} while "
            f"validation loss was still falling ({fall:.0%} of the baseline's {c.b:.3f} over its "
            f"last {window - 1} epochs, above diagnosis.falling_ratio = {th.falling_ratio:.0%}): "
            "not a finished run"
        )
    return None


def _bias_variance(
    c: _Curves, th: DiagnosisConfig, facts: dict[str, float]
) -> tuple[bool, bool, bool]:
    """High bias, high variance, and whether a run that reads as high bias was cut short
    while it could still fit (adding ``train_pace_ratio`` to ``facts``)."""
    fitted = c.acc and c.top_acc >= FITTED_ACCURACY
    # A run stopped before its planned epochs (early stopping, the scheduler) whose training
    # loss was still falling fast enough to get under the line within as many epochs again
    # had not shown it cannot fit its rows: its training was cut short, not its capacity.
    window, b = c.window, c.b
    pace = _fall(c.train_raw[-window:]) / (window - 1) / b if window > 1 else 0.0
    reachable = (
        c.epochs[-1] < c.planned and c.train[-1] / b - pace * window <= th.underfit_loss_ratio
    )
    facts["train_pace_ratio"] = pace
    bias = facts["train_min_ratio"] > th.underfit_loss_ratio and not fitted and not reachable
    rise, gap = facts["rise_ratio"], facts["gap_end_ratio"]
    acc_gap = facts.get("accuracy_gap_end", 0.0)
    variance = (
        rise > th.rise_ratio
        or gap > th.gap_ratio
        or (acc_gap > th.accuracy_gap and gap > th.gap_ratio / 2)
    )
    cut_short = reachable and facts["train_min_ratio"] > th.underfit_loss_ratio and not fitted
    return bias, variance, cut_short


def _still_falling(c: _Curves, th: DiagnosisConfig) -> bool:
    k = min(3, c.n - 1)
    return c.val[-1] <= c.val[c.low] and (c.val[-1 - k] - c.val[-1]) / c.b > th.falling_ratio


# ---- the reasons' wording


def _kept_weights(c: _Curves, cfg: Any) -> str:
    kept_epoch, restored = _kept(c.rows, cfg, c.early_stopped)
    return (
        f"the restored epoch-{kept_epoch} weights"
        if restored
        else f"the epoch-{kept_epoch} weights the sweep keeps"
    )


def _gap_text(c: _Curves, facts: dict[str, float]) -> str:
    acc_text = (
        f"; accuracy {_pct(c.tacc[-1])} training vs {_pct(c.vacc[-1])} validation" if c.acc else ""
    )
    return f"a gap of {_pct(facts['gap_end_ratio'])} of the baseline's loss at the end{acc_text}"


def _lowest(c: _Curves) -> str:
    return f"validation loss was lowest at epoch {c.epochs[c.best]} ({c.val_raw[c.best]:.3f})"


def _train_min(c: _Curves, facts: dict[str, float]) -> str:
    return f"{_pct(facts['train_min_ratio'])} of the baseline's {c.b:.3f}"


def _seen(c: _Curves, th: DiagnosisConfig, facts: dict[str, float]) -> str:
    """What validation loss did after its minimum."""
    lowest, at_best = _lowest(c), c.val_raw[c.best]
    rel = (c.val[-1] - at_best) / at_best if at_best > 0 else 0.0
    return (
        f"{lowest} and rose {_pct(rel)} after it"
        if facts["rise_ratio"] > th.rise_ratio or rel > VISIBLE_RISE
        else f"{lowest} and ended at {c.val[-1]:.3f}"
    )


def _both_reason(c: _Curves, th: DiagnosisConfig, facts: dict[str, float], kept: str) -> str:
    return (
        f"training loss never fell below {_train_min(c, facts)} (above "
        f"{_pct(th.underfit_loss_ratio)}: high bias) and {_seen(c, th, facts)} "
        f"({_gap_text(c, facts)}: high variance); {kept} are the best this configuration can "
        "do: raise capacity together with regularization or data"
    )


def _overfit_reason(c: _Curves, th: DiagnosisConfig, facts: dict[str, float], kept: str) -> str:
    fit = (
        f"training accuracy reached {_pct(c.top_acc)}"
        if c.acc and c.top_acc >= HIGH_ACCURACY
        else f"training loss fell to {_train_min(c, facts)}"
    )
    return (
        f"{_seen(c, th, facts)} while {fit} ({_gap_text(c, facts)}); {kept} are the best this "
        "configuration can do; add weight decay, dropout, augmentation or data so training "
        "can go on without losing validation"
    )


def _cut_short_reason(c: _Curves, facts: dict[str, float]) -> str:
    return (
        f"stopped at epoch {c.epochs[-1]} of {c.planned} while training loss "
        f"({_train_min(c, facts)}) was still falling fast enough to fit its rows within "
        f"{c.window} more epochs: not a finished run"
    )


def _underfit_reason(
    c: _Curves, th: DiagnosisConfig, facts: dict[str, float], still_falling: bool
) -> str:
    return (
        f"training loss never fell below {_train_min(c, facts)} (above "
        f"{_pct(th.underfit_loss_ratio)}) and validation follows it ({_gap_text(c, facts)}): "
        "the model cannot fit even its training rows"
        + ("; validation loss was still falling at the end" if still_falling else "")
    )


def _good_fit_reason(c: _Curves, facts: dict[str, float], cfg: Any, still_falling: bool) -> str:
    return (
        f"training loss reached {_train_min(c, facts)}, {_lowest(c)} ({_gap_text(c, facts)}): "
        "the sweet spot"
    ) + (
        f"; validation loss was still falling: more epochs (train.epochs, now "
        f"{_v(cfg, 'train.epochs')}) may gain a little"
        if still_falling
        else ""
    )


def failed(epochs: int) -> Diagnosis:
    """The label of a trial that ended with an error: whatever its curve shows, it is not a
    finished run, and it must not steer the next space."""
    return Diagnosis(
        "undetermined",
        f"the trial failed after {epochs} epoch"
        f"{'s' * (epochs != 1)} (its run's orchestrator.error says why): not a "
        "finished run",
        [],
    )


def _kept(rows: list[dict[str, float]], cfg: Any, early_stopped: bool) -> tuple[int, bool]:
    """The epoch whose weights the run ends with, found as the loop finds it: early stopping
    restores its last improvement of ``sweep.metric`` by more than ``min_delta`` (when
    ``train.early_stopping.restore_best``); otherwise the sweep keeps the best epoch of what
    trials are ranked on (ties: the later one)."""
    from orchestrator.core.ledger import better
    from orchestrator.core.loop import EarlyStopper  # the loop's own rule, not a copy of it

    metric, mode = config_mod.rank_metric(cfg) if cfg is not None else ("val_loss", "min")
    if early_stopped and (_v(cfg, "train.early_stopping.restore_best") is not False):
        es_metric = _v(cfg, "sweep.metric") or "val_loss"
        stopper = EarlyStopper(
            0, _v(cfg, "train.early_stopping.min_delta") or 0.0, _v(cfg, "sweep.mode") or "min"
        )
        improved = [int(r["epoch"]) for r in rows if stopper.update(r.get(es_metric, math.nan))[0]]
        if improved:
            return improved[-1], True
    best: dict[str, float] | None = None
    for r in rows:  # the ledger's rule: at least as good moves the best to the later epoch
        if math.isfinite(r.get(metric, math.nan)) and better(
            r[metric], best[metric] if best else None, mode
        ):
            best = r
    return int((best or rows[-1])["epoch"]), False


def _v(cfg: Any, dotted: str) -> Any:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def _g(cfg: Any, dotted: str) -> str:
    v = _v(cfg, dotted)
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _capacity(cfg: Any) -> str:
    """The capacity knob: ``model.hidden`` of a built-in kind, a factory's own arguments."""
    kind = _v(cfg, "model.kind")
    if kind in (None, "mlp", "cnn"):
        return f"model.hidden (now {_v(cfg, 'model.hidden')})"
    return f"the capacity arguments of {kind} (model.args now {_v(cfg, 'model.args')})"


def _underfit_fixes(cfg: Any, still_falling: bool) -> list[str]:
    fixes = [
        f"more capacity: raise {_capacity(cfg)}",
        f"less regularization: lower train.weight_decay (now "
        f"{_g(cfg, 'train.weight_decay')}), train.l1 (now {_g(cfg, 'train.l1')}),"
        f" model.dropout (now {_g(cfg, 'model.dropout')})",
        "more or better features (columns of data.path)",
    ]
    if still_falling:
        fixes.append(
            f"train longer: raise train.epochs (now {_v(cfg, 'train.epochs')}; "
            "validation loss was still falling)"
        )
    return fixes


def _overfit_fixes(cfg: Any) -> list[str]:
    capped = _v(cfg, "data.max_train_rows")
    return [
        "more data"
        + (
            f": raise or drop data.max_train_rows (now {capped})"
            if capped
            else " (more rows in data.path)"
        ),
        f"stronger L2: raise train.weight_decay (now {_g(cfg, 'train.weight_decay')})",
        f"more dropout: raise model.dropout (now {_g(cfg, 'model.dropout')})",
        f"L1: raise train.l1 (now {_g(cfg, 'train.l1')})",
        f"augmentation: train.augment: true (now {_v(cfg, 'train.augment')})",
        f"early stopping: set train.early_stopping.patience (now "
        f"{_v(cfg, 'train.early_stopping.patience')})",
        f"less capacity: lower {_capacity(cfg)}",
    ]


def _both_fixes(cfg: Any) -> list[str]:
    capped = _v(cfg, "data.max_train_rows")
    return [
        f"more capacity: raise {_capacity(cfg)} together with "
        "one of the following, so the extra capacity learns signal rather than noise",
        f"stronger regularization: raise train.weight_decay (now "
        f"{_g(cfg, 'train.weight_decay')}) or model.dropout (now {_g(cfg, 'model.dropout')})",
        "more data"
        + (
            f": raise or drop data.max_train_rows (now {capped})"
            if capped
            else " (more rows in data.path), or cleaner labels"
        ),
        f"augmentation: train.augment: true (now {_v(cfg, 'train.augment')})",
    ]


def _diverged_fixes(cfg: Any) -> list[str]:
    fixes = [f"lower train.lr (now {_g(cfg, 'train.lr')}), tenfold to start with"]
    if _v(cfg, "train.precision") == "fp16":
        fixes.append("train.precision: bf16 or fp32 (now fp16, whose range overflows)")
    if _v(cfg, "train.optimizer") == "sgd":
        fixes.append("train.optimizer: adamw (now sgd), which adapts its step size")
    return fixes


def _undetermined_fixes(cfg: Any) -> list[str]:
    return [
        f"let trials run longer before they are judged: raise sweep.grace_period (now "
        f"{_v(cfg, 'sweep.grace_period')}) or train.epochs (now {_v(cfg, 'train.epochs')})"
    ]


# ---------------------------------------------------------------- the sweep's next space

EDGE = 0.1  # a best value in the outer tenth of its range sits on the boundary
TREND_EDGE = 0.25  # the most extreme value drawn, in the outer quarter: the trend points past
MIDDLE = 0.5  # a best value up to the middle of its range is on the lower edge
UP_STEP = 0.5  # decades a log-scaled range grows past its upper edge: more learning rate,
# L1 or L2 than worked meets a cliff (the model diverges or stops learning), so half a decade


def _scale(spec: dict[str, Any]) -> tuple[Any, Any]:
    """To and from the axis the range is searched on (log10 for loguniform)."""
    if spec["type"] == "loguniform":
        return math.log10, lambda v: 10**v
    return float, float


def propose(
    points: list[dict[str, Any]], space: dict[str, dict[str, Any]], metric: str, mode: str, cfg: Any
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The next ``sweep.space`` from a finished sweep's trials (each point: the searched
    values, the best ``metric`` and the ``label``), and why, change by change. Trials
    labelled ``diverged`` or ``undetermined`` are left out: they never steer.

    - every trial high bias (``underfit`` or ``both``): more capacity (``model.hidden``
      searched at 2x and 4x the current width); with it, when every trial is ``underfit``,
      less regularization (log ranges moved down: the bottom a hundredfold, the top
      tenfold; linear ones cut to their lowest tenth), and when every trial is ``both``,
      more (log ranges moved up: the bottom tenfold, the top a hundredfold; linear ones
      to their upper half and past it), so the extra capacity learns signal, not noise;
    - otherwise, for each numeric key: where the best trial sits on a range's edge, the
      range is extended past that edge (tenfold down or half a decade up on a log scale,
      half its width on a linear one, within what the key allows); elsewhere it is
      narrowed to the span of the best quarter of the trials (at least 3), widened by a
      margin.
    """
    finished = [p for p in points if math.isfinite(p.get(metric, math.nan))]
    done = [p for p in finished if p.get("label") not in NEVER_STEER]
    if not finished:
        return dict(space), ["no trial finished an epoch: nothing to go on"]
    if not done:
        return dict(space), [
            "every trial diverged or stopped too early to judge "
            "(undetermined): nothing to steer by; lower train.lr or raise "
            "sweep.grace_period"
        ]
    ranked = sorted(done, key=lambda p: p[metric], reverse=mode == "max")
    best, top = ranked[0], ranked[: max(3, len(ranked) // 4)]
    new: dict[str, dict[str, Any]] = {k: dict(v) for k, v in space.items()}
    why: list[str] = []
    if len(done) < len(finished):
        why.append(f"{len(finished) - len(done)} diverged or undetermined trial(s) left out")
    labels = {p.get("label") for p in done}
    factory = _value(cfg, "model.kind") not in (None, "mlp", "cnn")
    if labels <= {"underfit", "both"}:
        counts = ", ".join(
            f"{sum(p.get('label') == lab for p in done)} {lab}"
            for lab in ("underfit", "both")
            if lab in labels
        )
        if factory:  # model.hidden would change nothing of a factory's model
            why.append(
                f"every trial high bias ({counts}): more capacity, through the factory's own "
                f"arguments (search the model.args.* that add capacity to "
                f"{_value(cfg, 'model.kind')})"
            )
        else:
            width = list(_value(cfg, "model.hidden") or [64])
            new["model.hidden"] = {
                "type": "choice",
                "values": [[2 * w for w in width], [4 * w for w in width]],
            }
            why.append(
                f"every trial high bias ({counts}): more capacity, model.hidden searched "
                f"over 2x and 4x {width}"
            )
        if len(labels) == 1:
            down = labels == {"underfit"}
            for key in REGULARIZERS:
                if key in new and new[key]["type"] in ("uniform", "loguniform"):
                    new[key] = _shift(key, new[key], down)
                    why.append(
                        f"{key}: {'less' if down else 'more'} regularization"
                        f"{'' if down else ' alongside the capacity'}, searched over "
                        f"[{new[key]['low']:.3g}, {new[key]['high']:.3g}]"
                    )
            return new, why
        space = {k: v for k, v in space.items() if k != "model.hidden"}
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
        if (
            at <= EDGE
            or at >= 1 - EDGE
            or (lowest and at <= TREND_EDGE)
            or (highest and at >= 1 - TREND_EDGE)
        ):
            down = at <= MIDDLE
            step = (1.0 if down else UP_STEP) if spec["type"] == "loguniform" else span / 2
            floor = -math.inf if spec["type"] == "loguniform" and limit_lo <= 0 else to(limit_lo)
            if down:
                new_lo, new_hi = max(lo - step, floor), lo + span / 2
            else:
                new_lo = hi - span / 2
                new_hi = min(hi + step, to(limit_hi) if math.isfinite(limit_hi) else math.inf)
            if (new_lo, new_hi) == (lo, hi) or new_hi <= new_lo:
                continue
            new[key] = {**spec, "low": _round(back(new_lo)), "high": _round(back(new_hi))}
            why.append(
                f"{key}: the best trial ({best[key]:.3g}) sits on the "
                f"{'lower' if down else 'upper'} edge of [{spec['low']:.3g}, "
                f"{spec['high']:.3g}]: extended to [{new[key]['low']:.3g}, "
                f"{new[key]['high']:.3g}]"
            )
        else:
            vals = [to(p[key]) for p in top if key in p]
            margin = span * 0.1
            new_lo, new_hi = max(lo, min(vals) - margin), min(hi, max(vals) + margin)
            if new_hi - new_lo >= span * 0.9:
                continue  # the good trials are spread over the whole range: keep it
            new[key] = {**spec, "low": _round(back(new_lo)), "high": _round(back(new_hi))}
            why.append(
                f"{key}: the best {len(top)} trials lie in [{back(min(vals)):.3g}, "
                f"{back(max(vals)):.3g}]: narrowed to [{new[key]['low']:.3g}, "
                f"{new[key]['high']:.3g}] around the best ({best[key]:.3g})"
            )
    if not why:
        why.append(
            "the best trials are spread over every range and none sits on an edge: "
            "keep the space, search it with more trials"
        )
    return new, why


def _shift(key: str, spec: dict[str, Any], down: bool) -> dict[str, Any]:
    """A regularizer's range moved down (less) or up (more) as ``propose`` describes."""
    lo, hi = spec["low"], spec["high"]
    limit = LIMITS.get(key, (0.0, math.inf))[1]
    if spec["type"] == "loguniform":
        lo, hi = (lo / 100, hi / 10) if down else (lo * 10, min(hi * 100, limit))
    elif down:
        hi = lo + (hi - lo) / 10
    else:
        lo, hi = lo + (hi - lo) / 2, min(hi + (hi - lo) / 2, limit)
    return {**spec, "low": _round(lo), "high": _round(hi)}


REGULARIZERS = ("train.weight_decay", "train.l1", "model.dropout")
NEVER_STEER = ("diverged", "undetermined")
LIMITS = {
    "model.dropout": (0.0, 0.95),
    "train.weight_decay": (0.0, math.inf),
    "train.l1": (0.0, math.inf),
    "train.lr": (0.0, math.inf),
    "train.augment_noise": (0.0, math.inf),
}


def _value(cfg: Any, dotted: str) -> Any:
    return _v(cfg, dotted) if cfg is not None else None


def _round(v: float) -> float:
    return float(f"{v:.4g}")
