"""The learning curve over training-set size: fit, interval, verdict (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.core import curve


def _law(n: float, a: float = 3.0, b: float = 0.5, c: float = 0.05) -> float:
    return a * n**-b + c


def _points(sizes: list[int], noise: float = 0.0, seed: int = 0) -> list[tuple[int, int, float]]:
    rng = np.random.default_rng(seed)
    return [(s, k, _law(s) + rng.normal(0, noise)) for s in sizes for k in range(3)]


def test_the_fit_recovers_a_power_law_with_its_floor() -> None:
    sizes = [100, 200, 400, 800, 1600]
    got = curve.fit(sizes, [_law(s) for s in sizes])
    assert got.a == pytest.approx(3.0, rel=0.02)
    assert got.b == pytest.approx(0.5, rel=0.01)
    assert got.c == pytest.approx(0.05, abs=0.002)


def test_fitted_on_the_smaller_sizes_it_predicts_the_largest() -> None:
    # the benchmark's check in small: fit 1/8..1/2, predict all rows, compare
    got = curve.analyse(_points([175, 350, 700], noise=0.004), factors=(2.0,), bootstrap=200)
    assert got.verdict == "helps"
    (p,) = got.predictions
    assert p.rows == 1400
    assert abs(p.loss - _law(1400)) / _law(1400) < 0.1
    assert p.low <= _law(1400) <= p.high
    assert 0 < p.half_width < 0.25


def test_a_curve_that_does_not_fall_gets_no_extrapolation() -> None:
    rng = np.random.default_rng(3)
    flat = [(s, k, 0.4 + rng.normal(0, 0.01)) for s in (100, 200, 400, 800) for k in range(3)]
    got = curve.analyse(flat, bootstrap=50)
    assert got.verdict == "flat" and not got.predictions and got.fit is None
    assert "no reliable extrapolation" in got.summary and "capacity or features" in got.summary
    rising = [(s, k, 0.3 + s / 4000) for s in (100, 200, 400, 800) for k in range(3)]
    assert curve.analyse(rising, bootstrap=50).verdict == "flat"


def test_a_fall_inside_the_seeds_noise_is_not_called_flat_or_helpful() -> None:
    # means fall by 0.06 (12%), but the seeds scatter by 0.1 at each size: more seeds would tell
    points = [
        (s, k, 0.5 - 0.02 * i + d)
        for i, s in enumerate((100, 200, 400, 800))
        for k, d in enumerate((-0.1, 0.0, 0.1))
    ]
    got = curve.analyse(points, bootstrap=50)
    assert got.verdict == "unreliable" and not got.predictions
    assert "more seeds would tell" in got.summary


def test_a_size_with_one_seed_does_not_count() -> None:
    points = _points([100, 200, 400, 800])
    one_each = [p for p in points if p[1] == 0]
    assert curve.analyse(one_each, bootstrap=10).verdict == "unreliable"
    # the 800-row size lost two of its seeds: three sizes remain
    got = curve.analyse([p for p in points if p[0] < 800 or p[1] == 0], bootstrap=50)
    assert got.sizes == [100, 200, 400]


def test_a_curve_that_turns_back_up_is_flagged() -> None:
    means = {100: 0.60, 200: 0.40, 400: 0.46, 800: 0.30}  # up by 0.06 between 200 and 400
    points = [(s, k, m + d) for s, m in means.items() for k, d in enumerate((-0.005, 0, 0.005))]
    got = curve.analyse(points, bootstrap=100)
    assert got.non_monotone and "non-monotone" in got.summary
    assert got.verdict in ("helps", "little")


def test_near_its_floor_more_data_helps_little() -> None:
    points = [
        (s, k, _law(s, a=0.5, c=0.3)) for s in (10_000, 20_000, 40_000, 80_000) for k in range(3)
    ]
    got = curve.analyse(points, bootstrap=50)
    assert got.verdict in ("flat", "little")
    assert "helps" != got.verdict


def test_too_few_sizes_make_no_curve() -> None:
    got = curve.analyse([(100, 0, 0.5), (200, 0, 0.4)], bootstrap=10)
    assert got.verdict == "unreliable" and not got.predictions


def test_sizes_are_fractions_of_the_rows_never_below_ten_per_class() -> None:
    assert curve.plan_sizes(1600) == [200, 400, 800, 1600]
    # 10 classes: at least 100 rows; 1/8 of 480 (60) is raised to 100
    assert curve.plan_sizes(480, classes=10) == [100, 120, 240, 480]
    with pytest.raises(ValueError, match="a curve needs 3"):
        curve.plan_sizes(150, classes=10)  # 100, 100, 100, 150: two sizes
