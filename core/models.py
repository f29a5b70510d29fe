"""The canonical records every part of the program speaks: events, contact state, decisions.

`Event` is a pydantic dataclass because it crosses trust boundaries (webhooks, files). Contact
state and decisions are slotted dataclasses validated by pydantic `TypeAdapter`s at the
boundaries: the engine creates millions of them, and a validated model costs ten times more
to build than the whole rule it records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, overload

import orjson
from pydantic import AwareDatetime, ConfigDict, Field, TypeAdapter, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

_ISO_CACHE: dict[datetime, str] = {}


@overload
def iso_utc(value: datetime) -> str: ...
@overload
def iso_utc(value: None) -> None: ...
@overload
def iso_utc(value: datetime | None) -> str | None: ...
def iso_utc(value: datetime | None) -> str | None:
    # The same instants recur (a decision's time is also the new status_changed_at, enrolment
    # times are rewritten with every snapshot): a lookup costs a tenth of isoformat().
    if value is None:
        return None
    text = _ISO_CACHE.get(value)
    if text is None:
        if len(_ISO_CACHE) > 200_000:
            _ISO_CACHE.clear()
        utc = value if value.tzinfo is UTC else value.astimezone(UTC)
        # The same text as isoformat(), in a third of the time.
        text = _ISO_CACHE[value] = orjson.dumps(utc)[1:-1].decode()
    return text


class Status(StrEnum):
    ACTIVE = "Active"
    ENGAGED = "Engaged"
    DORMANT = "Dormant"
    REACTIVATED = "Reactivated"
    SUPPRESSED = "Suppressed"


IN_SEND_STREAM = frozenset({Status.ACTIVE, Status.REACTIVATED})


class Transition(StrEnum):
    """A counted move between two states, as run summaries and metrics name it
    (`Active->Engaged`), or a contact's first decision (`enrolled`)."""

    ENROLLED = "enrolled"
    ACTIVE_ENGAGED = "Active->Engaged"
    ACTIVE_DORMANT = "Active->Dormant"
    ACTIVE_REACTIVATED = "Active->Reactivated"
    ACTIVE_SUPPRESSED = "Active->Suppressed"
    ENGAGED_ACTIVE = "Engaged->Active"
    ENGAGED_DORMANT = "Engaged->Dormant"
    ENGAGED_REACTIVATED = "Engaged->Reactivated"
    ENGAGED_SUPPRESSED = "Engaged->Suppressed"
    DORMANT_ACTIVE = "Dormant->Active"
    DORMANT_ENGAGED = "Dormant->Engaged"
    DORMANT_REACTIVATED = "Dormant->Reactivated"
    DORMANT_SUPPRESSED = "Dormant->Suppressed"
    REACTIVATED_ACTIVE = "Reactivated->Active"
    REACTIVATED_ENGAGED = "Reactivated->Engaged"
    REACTIVATED_DORMANT = "Reactivated->Dormant"
    REACTIVATED_SUPPRESSED = "Reactivated->Suppressed"
    SUPPRESSED_ACTIVE = "Suppressed->Active"
    SUPPRESSED_ENGAGED = "Suppressed->Engaged"
    SUPPRESSED_DORMANT = "Suppressed->Dormant"
    SUPPRESSED_REACTIVATED = "Suppressed->Reactivated"

    @classmethod
    def between(cls, source: Status, target: Status) -> Transition:
        return _TRANSITIONS[source, target]

    @property
    def metric_name(self) -> str:
        """`Transition_Active_Engaged`: the name a CloudWatch metric can carry."""
        return _METRIC_NAMES[self]


_TRANSITIONS = {
    (a, b): Transition[f"{a.name}_{b.name}"] for a in Status for b in Status if a is not b
}
_METRIC_NAMES = {t: f"Transition_{a.value}_{b.value}" for (a, b), t in _TRANSITIONS.items()}
_METRIC_NAMES[Transition.ENROLLED] = "Transition_enrolled"


class SuppressionReason(StrEnum):
    NO_RESPONSE = "no_response"
    UNSUBSCRIBE = "unsubscribe"
    HARD_BOUNCE = "hard_bounce"
    SPAM_COMPLAINT = "spam_complaint"


COMPLIANCE_REASONS = frozenset(
    {SuppressionReason.UNSUBSCRIBE, SuppressionReason.HARD_BOUNCE, SuppressionReason.SPAM_COMPLAINT}
)

ENGAGEMENT_EVENTS = frozenset({"open", "click", "high_intent_visit"})
DELIVERY_EVENTS = frozenset({"send"})
COMPLIANCE_EVENTS = frozenset({"unsubscribe", "hard_bounce", "spam_complaint", "resubscribe"})
LIFECYCLE_EVENTS = frozenset({"enroll"})
NON_ENGAGEMENT_EVENTS = DELIVERY_EVENTS | COMPLIANCE_EVENTS | LIFECYCLE_EVENTS


EARLIEST_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(2200, 1, 1, tzinfo=UTC)
"""Event times (and the times a run is evaluated at) must lie in [EARLIEST, LATEST). Nothing
real happened before the epoch or that far ahead, and the bound keeps every policy duration
added to an event time representable: the engine adds up to `core.policy.MAX_POLICY_DAYS` x 64
decay steps (about 6,400 years) to an instant, and Python's datetimes end in year 9999."""


def instant_problem(value: datetime) -> str | None:
    """Why `value` (aware) cannot be an event time, or None if it can."""
    if EARLIEST_INSTANT <= value < LATEST_INSTANT:
        return None
    return (
        f"{value.isoformat()} is outside the accepted range "
        f"{EARLIEST_INSTANT.date()} to {LATEST_INSTANT.date()} (not a real event time)"
    )


MAX_URL_CHARS = 2048
"""Longer than any link a mail client follows; also keeps one event far below a queue
message's size (SQS takes 256 KiB)."""
MAX_LABEL_CHARS = 256
"""campaign, variant and source: names, not documents."""


@pydantic_dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class Observation:
    """The CRM property value an event was read from. A CRM that resends current values
    (outbound messages, workflow snapshots, the poll) shows one occurrence many times: the
    pipeline compares this with the property's last seen value to count it once."""

    property: Annotated[str, Field(min_length=1, max_length=256)]
    value: Annotated[str, Field(max_length=4096)]
    changed_at: AwareDatetime | None = None
    """When the property took this value, when the vendor says so for this property (a
    webhook's property change time, a date property's own value); None for a snapshot."""


@pydantic_dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class Event:
    """One canonical event. Custom engagement types are valid when the policy gives them points.

    A pydantic dataclass, not a `BaseModel`: validating one from JSON costs half as much
    (2.6 vs 4.2 us here), and every replayed or received event is validated. Read and write
    it through `EVENT`."""

    event_id: Annotated[str, Field(min_length=1, max_length=512)]
    contact_id: Annotated[str, Field(min_length=1, max_length=256)]
    type: Annotated[str, Field(min_length=1, max_length=64)]
    occurred_at: AwareDatetime
    campaign: Annotated[str | None, Field(max_length=MAX_LABEL_CHARS)] = None
    variant: Annotated[str | None, Field(max_length=MAX_LABEL_CHARS)] = None
    url: Annotated[str | None, Field(max_length=MAX_URL_CHARS)] = None
    source: Annotated[str | None, Field(max_length=MAX_LABEL_CHARS)] = None
    observed: Observation | None = None
    """Set for events read from a CRM property (signals); None for everything else."""

    @field_validator("occurred_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        # One tzinfo object everywhere: comparing datetimes whose tzinfo objects differ costs
        # a utcoffset() call on each side, and the engine compares on every event.
        value = value if value.tzinfo is UTC else value.astimezone(UTC)
        if EARLIEST_INSTANT <= value < LATEST_INSTANT:  # both sides UTC: a plain comparison
            return value
        raise ValueError(instant_problem(value))


EVENT: TypeAdapter[Event] = TypeAdapter(Event)
"""`EVENT.validate_json(text)`, `EVENT.validate_python(mapping)`, `EVENT.dump_json(event)`."""


STATE_COLOURS = {
    "Active": "#4C78A8",
    "Engaged": "#54A24B",
    "Dormant": "#B279A2",
    "Reactivated": "#F58518",
    "Suppressed": "#9D9D9D",
}
"""One colour per state in every plot the project draws (colour-blind-safe Tableau hues)."""

CANONICAL_FIELDS = (
    "campaign_status",
    "last_engagement_date",
    "engagement_score",
    "reactivation_cycle",
    "status_changed_at",
    "unanswered_sends",
    "reactivation_step",
    "suppression_reason",
)
"""Fields a mapping must place in the CRM. The first four are what the program is known by."""


@dataclass(slots=True)
class ContactState:
    """Everything the rules need to know about one contact, as of `as_of`.

    `base_score` is the score right after the last engagement; the visible
    `engagement_score` is it decayed `decay_steps` times, each step due at a fixed offset from
    the last engagement, so decay never depends on how often the scheduler ran.
    `stream_entered_at` is when silence started counting for a contact who never engaged since
    (enrollment or resubscribe).
    """

    contact_id: str
    campaign_status: Status
    enrolled_at: datetime
    as_of: datetime
    status_changed_at: datetime
    stream_entered_at: datetime
    engagement_score: float = 0.0
    base_score: float = 0.0
    last_engagement_date: datetime | None = None
    decay_steps: int = 0
    reactivation_cycle: int = 0
    reactivation_step: int = 0
    reactivation_step_at: datetime | None = None
    unanswered_sends: int = 0
    suppression_reason: SuppressionReason | None = None
    experiments: dict[str, str] = field(default_factory=dict)
    """Experiment name -> variant, plus `holdout` -> holdout/treated, fixed at enrollment.
    Replaced, never changed in place: copies share it."""
    segment: str | None = None
    """The mapping segment whose policy overrides apply, fixed at enrollment."""
    send_times: tuple[datetime, ...] = ()
    """The latest sends, as many as the frequency cap counts (empty without a cap)."""

    def copy(self) -> ContactState:
        return ContactState(
            self.contact_id,
            self.campaign_status,
            self.enrolled_at,
            self.as_of,
            self.status_changed_at,
            self.stream_entered_at,
            self.engagement_score,
            self.base_score,
            self.last_engagement_date,
            self.decay_steps,
            self.reactivation_cycle,
            self.reactivation_step,
            self.reactivation_step_at,
            self.unanswered_sends,
            self.suppression_reason,
            self.experiments,
            self.segment,
            self.send_times,
        )

    def canonical_values(self) -> dict[str, Any]:
        """The canonical fields as the CRM should hold them."""
        return {name: getattr(self, name) for name in CANONICAL_FIELDS}


@dataclass(slots=True)
class Action:
    """Something a connector must do beyond setting fields.

    kinds: `reactivation_step_due` (step, cycle, format, variants), `reactivation_step_withheld`
    (the same detail, for a holdout contact: nothing may be sent), `alternate_channel_add`,
    `alternate_channel_remove`, `handoff_task` (sales hand-off on Engaged).
    """

    kind: str
    detail: dict[str, Any] = field(default_factory=dict)


class Rule(StrEnum):
    """What a decision applied (`Decision.rule`): the ledger's text, unchanged."""

    ENROLL = "enroll"
    EXPERIMENTS = "experiments"
    ENGAGEMENT = "engagement"
    SEND = "send"
    COMPLIANCE = "compliance"
    ORDER = "order"
    """A late event decided at the contact's current time."""
    WRITE_BACK = "write_back"
    """The CRM refused the write of a decision's values."""
    TIME_DECAY = "time:decay"
    TIME_INACTIVITY = "time:inactivity"
    TIME_COOLING_DONE = "time:cooling_done"
    TIME_NEXT_STEP = "time:next_step"
    TIME_NO_RESPONSE = "time:no_response"


class Reason(StrEnum):
    """Why, for the reasons the rules name themselves (`Decision.reason`). Other reasons are
    data: an engagement below the threshold gives its event type, a compliance exit its
    `SuppressionReason`, a withheld step the governance reason, a failed write-back the CRM's
    refusal."""

    ENROLLED = "enrolled"
    ASSIGNED = "assigned"
    SCORE_REACHED_THRESHOLD = "score_reached_threshold"
    REACTIVATED_FROM_DORMANT = "reactivated_from_dormant"
    REACTIVATED_FROM_ALTERNATE_CHANNEL = "reactivated_from_alternate_channel"
    SENT = "sent"
    UNANSWERED_SENDS = "unanswered_sends"
    ALREADY_SUPPRESSED = "already_suppressed"
    SUPPRESSION_REASON_REPLACED = "suppression_reason_replaced"
    RESUBSCRIBED = "resubscribed"
    INACTIVITY = "inactivity"
    NO_RESPONSE = "no_response"
    REACTIVATION_CYCLES_EXHAUSTED = "reactivation_cycles_exhausted"
    REACTIVATION_STEP_1 = "reactivation_step_1"
    REACTIVATION_STEP_2 = "reactivation_step_2"
    REACTIVATION_STEP_3 = "reactivation_step_3"
    REACTIVATION_STEP_4 = "reactivation_step_4"
    REACTIVATION_STEP_5 = "reactivation_step_5"
    SCORE_DECAYED = "score_decayed"
    SCORE_DECAYED_BELOW_THRESHOLD = "score_decayed_below_threshold"
    REVISED = "revised"
    """A late event re-decided the contact from its place (`core.order`)."""
    DECIDED_LATE = "decided_late"

    @classmethod
    def step(cls, n: int) -> Reason:
        """`reactivation_step_<n>`, for n in 1..5 (a policy has at most five steps)."""
        return _STEP_REASONS[n - 1]


_STEP_REASONS = (
    Reason.REACTIVATION_STEP_1,
    Reason.REACTIVATION_STEP_2,
    Reason.REACTIVATION_STEP_3,
    Reason.REACTIVATION_STEP_4,
    Reason.REACTIVATION_STEP_5,
)
STEP_REASONS = frozenset(_STEP_REASONS)
"""The reasons of a reactivation step's decision (`Reason.step(n)`)."""


@dataclass(slots=True, kw_only=True)
class Decision:
    """One rule applied to one contact: what changed, why, and under which policy. Built with
    keywords only: eleven fields in a row are too easy to shift by one."""

    contact_id: str
    at: datetime
    rule: str
    reason: str
    cause: str
    """The event id that caused it, or `time:<rule>@<due time>` for a time rule."""
    from_status: Status | None
    to_status: Status
    changes: dict[str, tuple[Any, Any]]
    policy_version: str
    actions: list[Action] = field(default_factory=list)
    event_type: str | None = None
    """The type of the event that caused it (None for time rules): reports count opens and
    clicks per experiment variant from it."""


CONTACT_STATE = TypeAdapter(ContactState)
DECISION = TypeAdapter(Decision)
