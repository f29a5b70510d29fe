"""Experiment and holdout results, aggregated from the ledger's daily roll-up as a
`core.ledger_reader.LedgerReader` hands it out (through `core.ledger_view`).

Rates are per trial: opens and clicks per send for main-stream experiments, reactivations per
reactivation cycle for reactivation experiments and the holdout (a cycle starts at reactivation
step 1, sent or withheld; it counts as a reactivation when the contact engages again before the
sequence ends). Variants are read from each decision's `arm`: the contact's assignment JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crm_elasticity.core.ledger_view import LedgerView
from crm_elasticity.core.proportions import (
    newcombe_difference,
    relative_lift,
    two_proportion_p_value,
    wilson,
)

if TYPE_CHECKING:
    from crm_elasticity.core.ledger_reader import LedgerReader
    from crm_elasticity.core.mapping import ExperimentSpec, Mapping

LEVEL = 0.95
SOURCE = "report_rows"
"""The table of `core.ledger_view` every report query reads: roll-up rows inside the window."""

_ARM_MEASURES = """
SELECT arm,
  SUM(CASE WHEN rule = 'send' THEN n ELSE 0 END),
  SUM(CASE WHEN rule = 'engagement' AND event_type = 'open' THEN n ELSE 0 END),
  SUM(CASE WHEN rule = 'engagement' AND event_type = 'click' THEN n ELSE 0 END),
  SUM(CASE WHEN reason = 'reactivation_step_1' THEN n ELSE 0 END),
  SUM(CASE WHEN reason = 'reactivated_from_dormant' AND cycle > 0 THEN n ELSE 0 END)
FROM report_rows GROUP BY arm
"""


def arm_counts(reader: LedgerReader, since: datetime | None = None) -> dict[str, Counts]:
    """Per experiment arm, the window's measures, from the reader's roll-up."""
    view = LedgerView(reader, since, contacts=False)
    try:
        return counts_by_arm(view)
    finally:
        view.close()


@dataclass
class Counts:
    sends: int = 0
    opens: int = 0
    clicks: int = 0
    cycles: int = 0
    reactivations: int = 0

    def add(self, other: Counts) -> None:
        self.sends += other.sends
        self.opens += other.opens
        self.clicks += other.clicks
        self.cycles += other.cycles
        self.reactivations += other.reactivations

    def trial(self, metric: str) -> tuple[int, int]:
        """(successes, trials) of a metric, successes capped at trials."""
        if metric == "open":
            return min(self.opens, self.sends), self.sends
        if metric == "click":
            return min(self.clicks, self.sends), self.sends
        return min(self.reactivations, self.cycles), self.cycles


def counts_by_arm(store: LedgerView) -> dict[str, Counts]:
    return {row[0]: Counts(*(int(v or 0) for v in row[1:])) for row in store.execute(_ARM_MEASURES)}


def counts_by_assignment(by_arm: dict[str, Counts], key: str) -> dict[str, Counts]:
    """Sum the arms by one assignment key (an experiment name, or `holdout`)."""
    out: dict[str, Counts] = {}
    for arm, counts in by_arm.items():
        if not arm:
            continue
        value = json.loads(arm).get(key)
        if value is None:
            continue
        out.setdefault(value, Counts()).add(counts)
    return out


@dataclass
class ArmResult:
    name: str
    exposures: int
    successes: int
    rate: float
    low: float
    high: float
    sends: int
    opens: int
    clicks: int
    cycles: int
    reactivations: int
    diff: float | None = None
    diff_low: float | None = None
    diff_high: float | None = None
    lift: float | None = None
    lift_low: float | None = None
    lift_high: float | None = None
    p_value: float | None = None


@dataclass
class ExperimentResult:
    name: str
    element: str
    stage: str
    metric: str
    baseline: str
    arms: list[ArmResult] = field(default_factory=list)
    winner: str | None = None
    verdict: str = ""
    significance: float = 0.05
    min_sample: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    name: str,
    element: str,
    stage: str,
    metric: str,
    groups: dict[str, Counts],
    order: list[str],
    baseline: str,
    significance: float,
    min_sample: int,
) -> ExperimentResult:
    """Rates with Wilson intervals, each arm against the baseline, and a winner only when the
    best arm beats every other at `significance` (Bonferroni-corrected) with enough trials."""
    result = ExperimentResult(
        name, element, stage, metric, baseline, significance=significance, min_sample=min_sample
    )
    base = groups.get(baseline, Counts())
    bx, bn = base.trial(metric)
    for variant in order:
        c = groups.get(variant, Counts())
        x, n = c.trial(metric)
        ci = wilson(x, n, LEVEL)
        arm = ArmResult(
            variant,
            n,
            x,
            x / n if n else 0.0,
            ci.low,
            ci.high,
            c.sends,
            c.opens,
            c.clicks,
            c.cycles,
            c.reactivations,
        )
        if variant != baseline and n and bn:
            d = newcombe_difference(x, n, bx, bn, LEVEL)
            arm.diff, arm.diff_low, arm.diff_high = x / n - bx / bn, d.low, d.high
            arm.lift, lift_ci = relative_lift(x, n, bx, bn, LEVEL)
            if lift_ci is not None:
                arm.lift_low, arm.lift_high = lift_ci.low, lift_ci.high
            arm.p_value = two_proportion_p_value(x, n, bx, bn)
        result.arms.append(arm)
    short = [a for a in result.arms if a.exposures < min_sample]
    if short:
        names = ", ".join(f"{a.name} {a.exposures}" for a in short)
        result.verdict = f"minimum sample of {min_sample} not reached ({names})"
        return result
    best = max(result.arms, key=lambda a: a.rate)
    others = [a for a in result.arms if a is not best]
    alpha = significance / max(1, len(others))
    worst_p = max(
        two_proportion_p_value(best.successes, best.exposures, o.successes, o.exposures)
        for o in others
    )
    if worst_p < alpha:
        result.winner = best.name
        result.verdict = f"{best.name} wins: p={worst_p:.2g} < {alpha:.2g}"
    else:
        result.verdict = f"no significant difference: p={worst_p:.2g} >= {alpha:.2g}"
    return result


def experiment_results(
    store: LedgerReader | LedgerView,
    mapping: Mapping,
    spec: ExperimentSpec,
    since: datetime | None = None,
    by_arm: dict[str, Counts] | None = None,
) -> ExperimentResult:
    if by_arm is None:
        by_arm = counts_by_arm(store) if isinstance(store, LedgerView) else arm_counts(store, since)
    groups = counts_by_assignment(by_arm, spec.name)
    order = [v.name for v in spec.variants]
    baseline = spec.default or order[0]
    return compare(
        spec.name,
        spec.element,
        spec.stage,
        spec.metric,
        groups,
        order,
        baseline,
        spec.significance,
        spec.min_sample,
    )


def holdout_results(
    store: LedgerReader | LedgerView,
    mapping: Mapping,
    since: datetime | None = None,
    by_arm: dict[str, Counts] | None = None,
) -> ExperimentResult | None:
    """Reactivation rate of treated contacts against the held-out ones."""
    spec = mapping.holdout
    if spec is None:
        return None
    if by_arm is None:
        by_arm = counts_by_arm(store) if isinstance(store, LedgerView) else arm_counts(store, since)
    groups = counts_by_assignment(by_arm, "holdout")
    order = ["holdout", "treated"]
    return compare(
        "holdout",
        "reactivation sends",
        "reactivation",
        "reactivation",
        groups,
        order,
        "holdout",
        spec.significance,
        spec.min_sample,
    )
