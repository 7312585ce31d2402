"""Would more data help? The learning curve over training-set size, read honestly.

Validation loss against training rows is fitted with a power law and an irreducible term,

    loss(n) = a * n ** -b + c,   a >= 0, b > 0, c >= 0,

by least squares (for a fixed exponent ``b`` the model is linear in ``a`` and ``c``, so ``b``
is searched on a grid and refined, each step an exact small solve: no starting guess to get
wrong). The interval is a bootstrap over seeds: at each size the seeds' runs are drawn again
with replacement, the curve refitted, and the 10th and 90th percentiles of its predictions
kept (an 80% interval). It holds the seeds' noise only: each size is one subset of the
rows, and three parameters through four sizes leave the form of the curve itself untested.

Such curves are often ill-behaved: the LCDB 1.1 study (arXiv 2505.15657) finds about 14% of
learning curves non-monotone or non-convex. So before extrapolating, the curve must fall:
the mean loss at the most rows below that at the fewest by more than the seeds' noise.
A curve that does not is reported as "no reliable extrapolation", never a made-up number,
and a curve that falls but turns back up on the way is flagged, its interval kept as wide as
the bootstrap makes it. Pure numpy: no Ray, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

JSON_NAME = "data_curve.json"  # beside the sweep: the points, the fit, the verdict
PNG_NAME = "data_curve.png"  # and its picture; `report` shows both
FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1.0)  # of the training rows
SEEDS = 3
MIN_SIZES = 3  # fewer points than parameters make no curve
MIN_SEEDS = 2  # runs a size needs to count: the seeds' spread is the curve's noise
MIN_ROWS_PER_CLASS = 10  # the smallest size never has fewer rows per class than this
BOOTSTRAP = 1000
LEVEL = 0.8  # the interval's coverage
HELPS = 0.01  # a predicted fall of less than 1% at twice the rows is "little"
EXPONENTS = np.geomspace(0.01, 4.0, 160)  # the grid for b, refined around its best


@dataclass(frozen=True)
class Fit:
    """A fitted curve ``a * n ** -b + c`` and its sum of squared errors."""

    a: float
    b: float
    c: float
    sse: float

    def predict(self, rows: float | np.ndarray) -> float | np.ndarray:
        """The loss the curve gives at ``rows`` training rows."""
        return self.a * np.power(rows, -self.b) + self.c


@dataclass(frozen=True)
class Prediction:
    """The loss expected at ``rows``: the fit's value and its 80% bootstrap interval."""

    rows: int
    factor: float  # rows over the training rows the curve was measured up to
    loss: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        """Half the interval, relative to the prediction."""
        return (self.high - self.low) / 2 / self.loss if self.loss > 0 else math.inf


@dataclass(frozen=True)
class Curve:
    """The measured curve, its fit, its predictions and the verdict, in words and numbers.

    ``verdict`` is one of ``helps`` (more data would lower the loss by about ``gain`` at
    twice the rows), ``little`` (it falls, but by less than 1% at twice the rows: near the
    plateau), ``flat`` (the loss does not fall with more rows: capacity or features are the
    limit) or ``unreliable`` (too few points or seeds to say).
    """

    sizes: list[int]
    means: list[float]
    stds: list[float]
    verdict: str
    summary: str
    fit: Fit | None = None
    predictions: list[Prediction] = field(default_factory=list)
    gain: float | None = None  # relative fall of the loss at twice the rows
    non_monotone: bool = False

    def to_json(self) -> dict[str, object]:
        """Plain values, for a JSON artifact or the report."""
        return {
            "sizes": self.sizes,
            "means": self.means,
            "stds": self.stds,
            "verdict": self.verdict,
            "summary": self.summary,
            "fit": None
            if self.fit is None
            else {"a": self.fit.a, "b": self.fit.b, "c": self.fit.c},
            "predictions": [
                {"rows": p.rows, "factor": p.factor, "loss": p.loss, "low": p.low, "high": p.high}
                for p in self.predictions
            ],
            "gain": self.gain,
            "non_monotone": self.non_monotone,
        }


def plan_sizes(train_rows: int, classes: int = 0) -> list[int]:
    """The training-set sizes to measure: 1/8, 1/4, 1/2 and all of ``train_rows``, none
    below ``MIN_ROWS_PER_CLASS`` times the classes (10 rows per class on average): a size
    below that is raised to it, and a size that then repeats another counts once. Fewer
    than three sizes cannot make a curve."""
    floor = max(MIN_ROWS_PER_CLASS * classes, 2)
    sizes = sorted({max(floor, round(train_rows * f)) for f in FRACTIONS if train_rows > 0})
    sizes = [s for s in sizes if s <= train_rows]
    if len(sizes) < MIN_SIZES:
        raise ValueError(
            f"{train_rows} training rows make {len(sizes)} distinct size(s) of at least "
            f"{floor} rows ({MIN_ROWS_PER_CLASS} per class): a curve needs {MIN_SIZES}; "
            "use more data"
        )
    return sizes


def fit(rows: Sequence[float], losses: Sequence[float]) -> Fit:
    """The least-squares power law with an irreducible term through the points."""
    n = np.asarray(rows, dtype=float)
    y = np.asarray(losses, dtype=float)
    a, c, sse = _solve(n, y, EXPONENTS)
    i = int(np.argmin(sse))
    best = Fit(float(a[i]), float(EXPONENTS[i]), float(c[i]), float(sse[i]))
    # the grid's step is about 4%: refine within it, never past the grid's ends
    lo, hi = max(best.b / 1.06, EXPONENTS[0]), min(best.b * 1.06, EXPONENTS[-1])
    for _ in range(30):  # golden-section search on the exponent
        m = np.array([hi - (hi - lo) / 1.618, lo + (hi - lo) / 1.618])
        _, _, e = _solve(n, y, m)
        lo, hi = (lo, m[1]) if e[0] <= e[1] else (m[0], hi)
    b = np.clip(np.array([(lo + hi) / 2]), EXPONENTS[0], EXPONENTS[-1])
    a, c, sse = _solve(n, y, b)
    return Fit(float(a[0]), float(b[0]), float(c[0]), float(sse[0])) if sse[0] < best.sse else best


def _solve(
    n: np.ndarray, y: np.ndarray, exponents: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each exponent, the best ``a >= 0`` and ``c >= 0`` and their squared error: the
    unconstrained solve, or the best with one of them held at 0 where it goes negative.
    All exponents at once (a row each)."""
    x = np.power(n[None, :], -exponents[:, None])
    xm, ym = x.mean(axis=1), y.mean()
    var = ((x - xm[:, None]) ** 2).sum(axis=1)
    a = np.divide(
        ((x - xm[:, None]) * (y - ym)).sum(axis=1), var, where=var > 0, out=np.zeros_like(var)
    )
    c = ym - a * xm
    a_only = np.maximum(0.0, (x @ y) / (x * x).sum(axis=1))  # c held at 0
    options = [
        (a, c, (a >= 0) & (c >= 0)),
        (a_only, np.zeros_like(a), np.ones_like(a, dtype=bool)),
        (np.zeros_like(a), np.full_like(a, max(0.0, ym)), np.ones_like(a, dtype=bool)),  # flat
    ]
    errors = [
        np.where(ok, ((aa[:, None] * x + cc[:, None] - y) ** 2).sum(axis=1), np.inf)
        for aa, cc, ok in options
    ]
    pick = np.argmin(np.stack(errors), axis=0)
    rows = np.arange(len(exponents))
    return (
        np.stack([o[0] for o in options])[pick, rows],
        np.stack([o[1] for o in options])[pick, rows],
        np.stack(errors)[pick, rows],
    )


def analyse(
    points: Sequence[tuple[int, int, float]],
    factors: Sequence[float] = (2.0, 4.0),
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
) -> Curve:
    """Read a measured curve: ``points`` are (training rows, seed, best validation loss).
    Predictions are at ``factors`` times the most rows measured."""
    by_size: dict[int, list[float]] = {}
    for rows, _, loss in points:
        if math.isfinite(loss):
            by_size.setdefault(int(rows), []).append(float(loss))
    # a size needs two seeds at least: one has no spread, and the noise would read as none
    by_size = {n: v for n, v in by_size.items() if len(v) >= MIN_SEEDS}
    sizes = sorted(by_size)
    means = [float(np.mean(by_size[s])) for s in sizes]
    stds = [float(np.std(by_size[s], ddof=1)) if len(by_size[s]) > 1 else 0.0 for s in sizes]
    if len(sizes) < MIN_SIZES:
        return Curve(
            sizes,
            means,
            stds,
            "unreliable",
            f"no reliable extrapolation: {len(sizes)} size(s) finished with {MIN_SEEDS} "
            f"seeds or more, a curve needs {MIN_SIZES}",
        )
    # Falls? The mean at the most rows below the mean at the fewest by more than twice the
    # standard error of their difference (the seeds' noise), and by more than 1%.
    first, last = by_size[sizes[0]], by_size[sizes[-1]]
    noise = math.sqrt(_var_of_mean(first) + _var_of_mean(last))
    fall = means[0] - means[-1]
    if fall > HELPS * abs(means[0]) and fall <= 2 * noise:
        return Curve(
            sizes,
            means,
            stds,
            "unreliable",
            f"no reliable extrapolation: validation loss falls from {means[0]:.4g} at "
            f"{sizes[0]:,} rows to {means[-1]:.4g} at {sizes[-1]:,}, but by less than twice "
            f"the seeds' noise ({noise:.3g}): more seeds would tell",
        )
    if fall <= HELPS * abs(means[0]):
        return Curve(
            sizes,
            means,
            stds,
            "flat",
            f"no reliable extrapolation: validation loss does not fall with more rows "
            f"({means[0]:.4g} at {sizes[0]:,} rows, {means[-1]:.4g} at {sizes[-1]:,}): "
            "more data is unlikely to help; capacity or features are the limit",
        )
    # Turns back up between neighbouring sizes by more than their noise: non-monotone.
    non_monotone = any(
        means[i + 1] - means[i]
        > 2 * math.sqrt(_var_of_mean(by_size[sizes[i]]) + _var_of_mean(by_size[sizes[i + 1]]))
        for i in range(len(sizes) - 1)
    )
    fitted = fit([s for s in sizes for _ in by_size[s]], [v for s in sizes for v in by_size[s]])
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        xs, ys = [], []
        for s in sizes:
            vals = by_size[s]
            picked = rng.choice(vals, size=len(vals), replace=True)
            xs += [s] * len(vals)
            ys += list(picked)
        draws.append(fit(xs, ys))
    top = sizes[-1]
    tail = (1 - LEVEL) / 2 * 100
    predictions = []
    for f in factors:
        rows = round(top * f)
        boot = np.array([d.predict(rows) for d in draws])
        predictions.append(
            Prediction(
                rows,
                f,
                float(fitted.predict(rows)),
                float(np.percentile(boot, tail)),
                float(np.percentile(boot, 100 - tail)),
            )
        )
    now = float(fitted.predict(top))
    at_two = next((p for p in predictions if p.factor == 2.0), predictions[0])  # noqa: PLR2004
    gain = (now - at_two.loss) / now if now > 0 else 0.0
    # helps: a fall of 1% or more at twice the rows, and the interval's top below today's loss
    verdict = "helps" if gain >= HELPS and at_two.high < now else "little"
    said = "; ".join(
        f"{p.factor:g}x the rows ({p.rows:,}): {p.loss:.4g} "
        f"({LEVEL:.0%} interval {p.low:.4g} to {p.high:.4g})"
        for p in predictions
    )
    head = (
        f"more data would help: validation loss about {gain:.1%} lower at twice the rows"
        if verdict == "helps"
        else f"more data would help little: about {gain:.1%} lower at twice the rows, "
        f"{'within its interval' if gain >= HELPS else f'near the floor of {fitted.c:.4g}'}"
    )
    warn = (
        "; the curve turns back up between sizes (non-monotone): read the numbers with care"
        if non_monotone
        else ""
    )
    return Curve(
        sizes,
        means,
        stds,
        verdict,
        f"{head}. Expected {said}{warn}",
        fitted,
        predictions,
        gain,
        non_monotone,
    )


def _var_of_mean(values: list[float]) -> float:
    return float(np.var(values, ddof=1)) / len(values) if len(values) > 1 else 0.0
