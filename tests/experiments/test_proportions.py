"""The statistics against published values."""

from __future__ import annotations

import pytest

from crm_elasticity.core.experiment_results import Counts, compare
from crm_elasticity.core.proportions import (
    newcombe_difference,
    relative_lift,
    two_proportion_p_value,
    wilson,
    z_for,
)


def test_critical_value():
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-6)


@pytest.mark.parametrize(
    ("x", "n", "low", "high"),
    [
        (5, 10, 0.2366, 0.7634),  # Wilson (1927) / Newcombe (1998) table
        (0, 10, 0.0, 0.2775),
        (81, 263, 0.2553, 0.3662),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_interval_matches_published_values(x, n, low, high):
    ci = wilson(x, n)
    assert ci.low == pytest.approx(low, abs=5e-4)
    assert ci.high == pytest.approx(high, abs=5e-4)


def test_newcombe_difference_matches_the_paper_example():
    # Newcombe (1998), example (a): 56/70 vs 48/80, method 10 -> 0.0524 to 0.3339.
    ci = newcombe_difference(56, 70, 48, 80)
    assert ci.low == pytest.approx(0.0524, abs=5e-4)
    assert ci.high == pytest.approx(0.3339, abs=5e-4)


def test_relative_lift_uses_the_katz_log_interval():
    lift, ci = relative_lift(56, 70, 48, 80)
    assert lift == pytest.approx(1 / 3)
    assert ci.low == pytest.approx(0.0766, abs=5e-4)
    assert ci.high == pytest.approx(0.6512, abs=5e-4)
    assert relative_lift(0, 10, 5, 10) == (None, None)


def test_two_proportion_p_value():
    # Pearson chi-square of [[56, 14], [48, 32]] is 7.023 (1 df): p = 0.00805.
    assert two_proportion_p_value(56, 70, 48, 80) == pytest.approx(0.00805, abs=1e-5)
    assert two_proportion_p_value(5, 10, 5, 10) == pytest.approx(1.0)


def test_a_winner_needs_significance_and_the_minimum_sample():
    strong = {"A": Counts(sends=5000, opens=1000), "B": Counts(sends=5000, opens=1200)}
    result = compare("s", "subject", "main", "open", strong, ["A", "B"], "A", 0.05, 1000)
    assert result.winner == "B"
    assert result.arms[1].diff == pytest.approx(0.04)
    assert result.arms[1].diff_low > 0
    small = compare("s", "subject", "main", "open", strong, ["A", "B"], "A", 0.05, 6000)
    assert small.winner is None and "minimum sample" in small.verdict
    close = {"A": Counts(sends=5000, opens=1000), "B": Counts(sends=5000, opens=1020)}
    tie = compare("s", "subject", "main", "open", close, ["A", "B"], "A", 0.05, 1000)
    assert tie.winner is None and "no significant difference" in tie.verdict


def test_more_variants_need_a_bonferroni_corrected_p_value():
    # B beats A and C at p ~ 0.04 each: enough for one comparison, not for two.
    groups = {
        "A": Counts(sends=3000, opens=600),
        "B": Counts(sends=3000, opens=665),
        "C": Counts(sends=3000, opens=600),
    }
    p = two_proportion_p_value(665, 3000, 600, 3000)
    assert 0.025 < p < 0.05
    result = compare("s", "subject", "main", "open", groups, ["A", "B", "C"], "A", 0.05, 100)
    assert result.winner is None
