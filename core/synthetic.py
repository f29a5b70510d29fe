"""The synthetic population both simulation paths share (`core.simulate` on the pipeline,
`core.coded.simulate` on the coded path): its configuration, the result and its daily rows,
the population's propensities and the simulated event ids.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import numpy as np

from crm_elasticity.core.models import Status

STATUSES = [s.value for s in Status]
START = datetime(2026, 1, 5, tzinfo=UTC)


class ListLevel(StrEnum):
    """Where a contact stands in what the CRM's dynamic lists would show on a day: its state,
    with suppressed contacts split by why (the values are `SimulationResult.daily`'s keys)."""

    ACTIVE = "Active"
    ENGAGED = "Engaged"
    DORMANT = "Dormant"
    REACTIVATED = "Reactivated"
    SUPPRESSED_NO_RESPONSE = "suppressed_no_response"
    SUPPRESSED_COMPLIANCE = "suppressed_compliance"

    @classmethod
    def of(cls, status: Status, no_response: bool) -> ListLevel:
        """The level of a contact in `status`; `no_response` says a suppression was for not
        responding (any other reason is a compliance one)."""
        if status is Status.SUPPRESSED:
            return cls.SUPPRESSED_NO_RESPONSE if no_response else cls.SUPPRESSED_COMPLIANCE
        return cls(status.value)

    @property
    def status(self) -> Status:
        return Status.SUPPRESSED if self.value.startswith("suppressed_") else Status(self.value)


SUPPRESSED = Status.SUPPRESSED
IN_SEND_STREAM_LEVELS = frozenset({ListLevel.ACTIVE, ListLevel.REACTIVATED})


@dataclass(frozen=True)
class SimulationConfig:
    contacts: int = 10_000
    days: int = 180
    seed: int = 7
    send_every_days: int = 7
    send_hour: int = 9
    warm_to_cold: float = 1 / 60
    cold_to_warm: float = 1 / 90
    signup_days: int = 60
    cold_factor: float = 0.08
    click_given_open: float = 0.3
    visit_per_day: float = 0.01
    form_given_visit: float = 0.2
    """A visitor fills in a form (`form_submit`) when the policy gives form submissions points."""
    unsubscribe_per_send: float = 0.001
    hard_bounce_per_send: float = 0.0005
    batch_size: int = 50_000


def simulated_event_id(serial: int) -> str:
    """Zero-padded, so ids sort as the events were made: events at the same instant are
    decided in id order, and the coded simulation sorts by the serial number itself."""
    return f"sim-{serial:012d}"


@dataclass
class SimulationResult:
    config: SimulationConfig
    policy_version: str
    store_path: str
    daily: list[dict[str, int]] = field(default_factory=list)
    sends: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)
    transitions: Counter = field(default_factory=Counter)
    ever: dict[str, int] = field(default_factory=dict)
    headline: dict[str, Any] = field(default_factory=dict)
    """Sends saved and the reactivation rate, read from the run's ledger by `core.report` (the
    same computation `report` shows, so the two agree)."""

    def summary(self) -> dict:
        saved = self.headline.get("sends_saved", {})
        back = self.headline.get("reactivation", {})
        return {
            "config": asdict(self.config),
            "policy_version": self.policy_version,
            "final": self.daily[-1] if self.daily else {},
            "sends": dict(self.sends),
            "sends_saved": saved,
            "reactivation": back,
            "engaged_rate_pct": round(100 * self.ever.get("Engaged", 0) / self.config.contacts, 1),
            "ever_in_state": self.ever,
            "events": dict(self.events),
            "transitions": dict(self.transitions),
        }

    def markdown(self) -> str:
        s = self.summary()
        final = s["final"]
        saved, back = s["sends_saved"], s["reactivation"]
        rows = "\n".join(f"| {k} | {final.get(k, 0):,} |" for k in STATUSES)
        return (
            f"# Elastic audience simulation\n\n"
            f"{self.config.contacts:,} contacts over {self.config.days} days "
            f"(seed {self.config.seed}, policy {self.policy_version}).\n\n"
            f"- Sends saved against a static list: {100 * saved.get('saved_share', 0):.1f}% "
            f"({saved.get('actual_sends', 0):,} actual sends: "
            f"{s['sends'].get('newsletter', 0):,} newsletter, "
            f"{s['sends'].get('reactivation', 0):,} reactivation; "
            f"{saved.get('static_list_sends', 0):,} static-list sends).\n"
            f"- Engaged rate: {s['engaged_rate_pct']}% of contacts reached the threshold.\n"
            f"- Reactivation rate: {100 * back.get('rate', 0):.1f}% "
            f"({back.get('comebacks', 0):,} comebacks of {back.get('dormancies', 0):,} "
            f"dormancies).\n\n"
            f"| state at the end | contacts |\n|---|---|\n{rows}\n"
        )


class Population:
    """Propensities and warm/cold spells, vectorised: one array entry per contact."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        n = config.contacts
        self.ids = np.array([f"c{i:07d}" for i in range(n)])
        self.index = {cid: i for i, cid in enumerate(self.ids.tolist())}
        self.open_p = self.rng.beta(2.0, 3.5, n)
        self.warm = self.rng.random(n) < 0.7
        self.reachable = np.ones(n, dtype=bool)

    def drift(self) -> None:
        c = self.config
        flip = self.rng.random(self.warm.size)
        self.warm = np.where(self.warm, flip >= c.warm_to_cold, flip < c.cold_to_warm)

    def open_probability(self, idx: np.ndarray) -> np.ndarray:
        base = self.open_p[idx]
        return np.where(self.warm[idx], base, base * self.config.cold_factor)


def fresh_day() -> Counter:
    """A day's reactivation-cycle counts, before anything happened."""
    return Counter({"step_1_sent": 0, "step_2_sent": 0, "comebacks": 0})


def day_row(levels: Counter[ListLevel], today: Counter, day: int) -> dict[str, int]:
    """One row of `SimulationResult.daily` (both simulation paths build it here): contacts per
    state at the day's end, suppression split by reason, and the day's cycle counts."""
    no_response = levels[ListLevel.SUPPRESSED_NO_RESPONSE]
    compliance = levels[ListLevel.SUPPRESSED_COMPLIANCE]
    row = {level.value: levels[level] for level in ListLevel if level.status is not SUPPRESSED}
    row["Suppressed"] = no_response + compliance
    row[ListLevel.SUPPRESSED_NO_RESPONSE.value] = no_response
    row[ListLevel.SUPPRESSED_COMPLIANCE.value] = compliance
    row.update(today)
    row["day"] = day
    return row
