"""Who may be sent what: consent, frequency cap, segments and programs that compete.

The engine enforces what it can see on its own: compliance exits suppress, holdout contacts
get `reactivation_step_withheld` instead of a send, and the frequency cap moves a due
reactivation step to when the window has room (`core.engine.next_due`). What only the CRM's
properties say (consent, market, industry, audience) is decided here, by `Governance`, in one
place for every path: connectors read the properties it names on every read, and the pipeline
gives each contact its segment's policy, with reactivation steps withheld while the contact
may not be emailed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from crm_elasticity.core.models import IN_SEND_STREAM, ContactState, Status
from crm_elasticity.core.policy import Policy

if TYPE_CHECKING:
    from crm_elasticity.core.mapping import EligibilitySpec, Mapping, SegmentSpec

TRUE_VALUES = frozenset({"true", "1", "yes", "y", "on", "opted_out", "opt-out"})
SEND_ACTIONS = frozenset({"reactivation_step_due"})


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value).strip()


def matches(where: MappingABC[str, str | list[str]], properties: MappingABC[str, Any]) -> bool:
    """Every key matches: equal to the value, or one of the list (case-insensitive)."""
    for key, wanted in where.items():
        have = _text(properties.get(key)).lower()
        options = wanted if isinstance(wanted, list) else [wanted]
        if have not in {str(o).strip().lower() for o in options}:
            return False
    return True


def segment_of(mapping: Mapping, properties: MappingABC[str, Any]) -> str | None:
    """The first segment (in file order) whose `where` the contact's properties match."""
    for segment in mapping.segments:
        if matches(segment.where, properties):
            return segment.name
    return None


def has_consent(mapping: Mapping, properties: MappingABC[str, Any]) -> bool:
    """Marketing consent from the mapping's consent property. Unknown counts as consent for an
    opt-out property (the CRM default) and as no consent for an opt-in one."""
    return _consents(mapping.eligibility, properties)


def _consents(spec: EligibilitySpec, properties: MappingABC[str, Any]) -> bool:
    if spec.consent_property is None:
        return True
    value = properties.get(spec.consent_property)
    flagged = _text(value).lower() in TRUE_VALUES
    if spec.consent_means == "opt_out":
        return not flagged
    return flagged


NO_CONSENT, NOT_IN_AUDIENCE = "no_consent", "not_in_audience"
OTHER_PROGRAM = "other_program"
"""Withheld because a program of higher priority takes the contact: `other_program:NAME`."""


@dataclass(frozen=True)
class Rival:
    """Another program of the same vendor that may take this program's contacts
    (`eligibility.competing`): what decides whether it takes one."""

    program: str
    eligibility: EligibilitySpec

    @property
    def rank(self) -> tuple[int, str]:
        return program_rank(self.program, self.eligibility)


def program_rank(program: str, eligibility: EligibilitySpec) -> tuple[int, str]:
    """Programs in the order they claim a contact both may email: the higher
    `eligibility.priority` first, equal priorities by name, so every path and machine decides
    alike."""
    return (-eligibility.priority, program)


def _takes(spec: EligibilitySpec, properties: MappingABC[str, Any]) -> bool:
    """Whether a program with this eligibility may email a contact with these properties, as
    far as they were read (a property not read cannot prove that it may)."""
    consent = spec.consent_property
    if consent is not None and (consent not in properties or not _consents(spec, properties)):
        return False
    audience = spec.audience
    return not audience or (
        all(k in properties for k in audience) and matches(audience, properties)
    )


class Governance:
    """What a contact's CRM properties decide, for every path alike: its segment, and whether
    the program may email it now. Built once per mapping (`core.experiments.compile_program`).

    Properties come as the connector read them: a name missing from them was not read, and
    decides nothing; a name present with no value is an unset property."""

    __slots__ = ("eligibility", "segments", "properties", "program", "ahead")

    def __init__(
        self, eligibility: EligibilitySpec, segments: Sequence[SegmentSpec], program: str = ""
    ) -> None:
        self.eligibility = eligibility
        self.segments = tuple(segments)
        self.program = program
        self.ahead: tuple[Rival, ...] = ()
        """Competing programs that take a contact before this one, in the order they do."""
        names: list[str] = []
        if eligibility.consent_property:
            names.append(eligibility.consent_property)
        names += list(eligibility.audience)
        for segment in self.segments:
            names += list(segment.where)
        self.properties: tuple[str, ...] = tuple(dict.fromkeys(names))
        """The contact properties a connector reads for this, in every read."""

    def compete(self, rivals: Sequence[Rival]) -> None:
        """The same vendor's other programs that may take this program's contacts
        (`eligibility.competing`): the ones ranked ahead of it take a contact both may email,
        and their consent and audience properties are read with this program's."""
        mine = program_rank(self.program, self.eligibility)
        self.ahead = tuple(sorted((r for r in rivals if r.rank < mine), key=lambda r: r.rank))
        names = list(self.properties)
        for rival in self.ahead:
            spec = rival.eligibility
            if spec.consent_property:
                names.append(spec.consent_property)
            names += list(spec.audience)
        self.properties = tuple(dict.fromkeys(names))

    def segment(self, properties: MappingABC[str, Any] | None) -> str | None:
        """The first segment (in file order) whose `where` the properties match."""
        if not properties:
            return None
        for segment in self.segments:
            if all(key in properties for key in segment.where) and matches(
                segment.where, properties
            ):
                return segment.name
        return None

    def withheld(self, properties: MappingABC[str, Any] | None) -> str | None:
        """Why the program may not email this contact now (None: it may, or nothing was read)."""
        if not properties:
            return None
        spec = self.eligibility
        consent = spec.consent_property
        if consent is not None and consent in properties and not _consents(spec, properties):
            return NO_CONSENT
        audience = spec.audience
        if (
            audience
            and all(k in properties for k in audience)
            and not matches(audience, properties)
        ):
            return NOT_IN_AUDIENCE
        for rival in self.ahead:
            if _takes(rival.eligibility, properties):
                return f"{OTHER_PROGRAM}:{rival.program}"
        return None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    not_before: datetime | None = None
    """For a frequency-cap refusal: when the window next has room."""


def frequency_room_at(mapping: Mapping, send_times: Sequence[datetime], at: datetime) -> datetime:
    """The earliest time at or after `at` when one more send fits the rolling window."""
    cap = mapping.eligibility.frequency_cap
    if cap is None or len(send_times) < cap.max_sends:
        return at
    latest = sorted(send_times)[-cap.max_sends :]
    return max(at, latest[0] + timedelta(days=cap.window_days))


def check_send(
    mapping: Mapping,
    state: ContactState,
    properties: MappingABC[str, Any],
    at: datetime,
    reactivation: bool = False,
) -> Verdict:
    """May the program send this contact an email at `at`? Checked in the order a marketer
    would explain a refusal: consent, compliance, program state, holdout, frequency."""
    if not has_consent(mapping, properties):
        return Verdict(False, "no_consent")
    if state.campaign_status is Status.SUPPRESSED:
        return Verdict(False, f"suppressed:{state.suppression_reason or 'unknown'}")
    if reactivation:
        if state.campaign_status is not Status.DORMANT:
            return Verdict(False, "not_dormant")
        if state.experiments.get("holdout") == "holdout":
            return Verdict(False, "holdout")
    elif state.campaign_status not in IN_SEND_STREAM:
        return Verdict(False, f"not_in_send_stream:{state.campaign_status.value}")
    room = frequency_room_at(mapping, state.send_times, at)
    if room > at:
        return Verdict(False, "frequency_cap", room)
    return Verdict(True, "eligible")


def actionable(
    mapping: Mapping, state: ContactState, properties: MappingABC[str, Any], kind: str, at: datetime
) -> Verdict:
    """Gate for a connector about to act on an engine action that makes the CRM send."""
    if kind not in SEND_ACTIONS:
        return Verdict(True, "not_a_send")
    return check_send(mapping, state, properties, at, reactivation=True)


# ---- programs that compete for the same contact --------------------------------------------


@dataclass
class ProgramChoice:
    program: str | None
    candidates: list[str] = field(default_factory=list)

    @property
    def conflict(self) -> bool:
        return len(self.candidates) > 1


def in_audience(mapping: Mapping, properties: MappingABC[str, Any]) -> bool:
    audience = mapping.eligibility.audience
    return not audience or matches(audience, properties)


def choose_program(mappings: Sequence[Mapping], properties: MappingABC[str, Any]) -> ProgramChoice:
    """The program a contact belongs to when several would take it: highest
    `eligibility.priority` wins; equal priorities fall back to the program name so every
    machine decides alike."""
    candidates = [m for m in mappings if in_audience(m, properties) and has_consent(m, properties)]
    ranked = sorted(candidates, key=lambda m: program_rank(m.program, m.eligibility))
    return ProgramChoice(ranked[0].program if ranked else None, [m.program for m in ranked])


@dataclass
class ConflictReport:
    assigned: Counter = field(default_factory=Counter)
    conflicts: Counter = field(default_factory=Counter)
    """(winner, loser) -> contacts that matched both."""

    @property
    def total_conflicts(self) -> int:
        return sum(self.conflicts.values())


def resolve_programs(
    mappings: Sequence[Mapping],
    contacts: Iterable[tuple[str, MappingABC[str, Any]]],
) -> tuple[dict[str, str | None], ConflictReport]:
    """Assign each (contact id, properties) to one program and count the conflicts."""
    report = ConflictReport()
    chosen: dict[str, str | None] = {}
    for contact_id, properties in contacts:
        choice = choose_program(mappings, properties)
        chosen[contact_id] = choice.program
        if choice.program is not None:
            report.assigned[choice.program] += 1
        for loser in choice.candidates[1:]:
            report.conflicts[(choice.program, loser)] += 1
    return chosen, report


def earliest_due(mapping: Mapping) -> Policy:
    """A policy whose time rules fall due no later than any segment's. The connectors' "whose
    rules can be due" queries are built from it, so a segment with shorter waits (dormant after
    30 days where the default is 90) is found when its rules fall due."""
    program = mapping.policy.program
    policies = list(program.policies.values()) if program is not None else []
    if len(policies) <= 1:
        return mapping.policy
    base = mapping.policy
    decay = base.decay.model_copy(update={"after_days": min(p.decay.after_days for p in policies)})
    return base.model_copy(
        update={
            "dormant_after_days": min(p.dormant_after_days for p in policies),
            "cooling_days": min(p.cooling_days for p in policies),
            "step_wait_days": min(p.step_wait_days for p in policies),
            "reactivation_steps": max(p.reactivation_steps for p in policies),
            "decay": decay,
        }
    )
