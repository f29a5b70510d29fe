"""Proportions, their intervals and the test that decides a winner. Stdlib only.

Rates are binomial proportions (opens per send, reactivations per reactivation cycle), so the
intervals are Wilson score intervals, which stay inside [0, 1] and behave at small counts. The
difference between two rates uses Newcombe's hybrid score interval (built from the two Wilson
intervals); relative lift uses the Katz log interval of the rate ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

_NORMAL = NormalDist()


def z_for(level: float) -> float:
    """The two-sided critical value: 1.959964 for 0.95."""
    return _NORMAL.inv_cdf(0.5 + level / 2)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def excludes(self, value: float) -> bool:
        return value < self.low or value > self.high


def wilson(successes: int, trials: int, level: float = 0.95) -> Interval:
    if trials <= 0:
        return Interval(0.0, 1.0)
    z = z_for(level)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def newcombe_difference(x1: int, n1: int, x2: int, n2: int, level: float = 0.95) -> Interval:
    """Interval of p1 - p2 (Newcombe 1998, method 10)."""
    if n1 <= 0 or n2 <= 0:
        return Interval(-1.0, 1.0)
    p1, p2 = x1 / n1, x2 / n2
    a, b = wilson(x1, n1, level), wilson(x2, n2, level)
    d = p1 - p2
    low = d - math.sqrt((p1 - a.low) ** 2 + (b.high - p2) ** 2)
    high = d + math.sqrt((a.high - p1) ** 2 + (p2 - b.low) ** 2)
    return Interval(low, high)


def relative_lift(
    x1: int, n1: int, x2: int, n2: int, level: float = 0.95
) -> tuple[float | None, Interval | None]:
    """p1/p2 - 1 with the Katz log interval; None when a rate is zero (no ratio to speak of)."""
    if min(x1, x2, n1, n2) <= 0:
        return None, None
    ratio = (x1 / n1) / (x2 / n2)
    se = math.sqrt(1 / x1 - 1 / n1 + 1 / x2 - 1 / n2)
    z = z_for(level)
    return ratio - 1, Interval(ratio * math.exp(-z * se) - 1, ratio * math.exp(z * se) - 1)


def two_proportion_p_value(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    pooled = (x1 + x2) / (n1 + n2)
    if pooled in (0.0, 1.0):
        return 1.0
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = (x1 / n1 - x2 / n2) / se
    return 2 * (1 - _NORMAL.cdf(abs(z)))


def chi_square_uniformity(counts: list[int], weights: list[float] | None = None) -> float:
    """Pearson's chi-square statistic of observed counts against expected shares."""
    total = sum(counts)
    weights = weights or [1.0] * len(counts)
    scale = sum(weights)
    expected = [total * w / scale for w in weights]
    return sum((c - e) ** 2 / e for c, e in zip(counts, expected, strict=True))
