"""The rules of SPEC §2 as pure functions: (state, event or time, policy) -> outcome.

Nothing here does I/O or reads a clock. Time rules fire at their due time, computed from the
state, so the outcome is the same whether the scheduler ran hourly, daily or once.
"""

from __future__ import annotations

from datetime import datetime
from operator import attrgetter
from typing import NamedTuple

from core.models import (
    COMPLIANCE_REASONS,
    ENGAGEMENT_EVENTS,
    Action,
    ContactState,
    Decision,
    Event,
    Status,
    SuppressionReason,
    iso_utc,
)
from core.policy import Compiled, Policy

_ACTIVE, _ENGAGED, _DORMANT = Status.ACTIVE, Status.ENGAGED, Status.DORMANT
_REACTIVATED, _SUPPRESSED = Status.REACTIVATED, Status.SUPPRESSED
_COMPLIANCE_EXITS = {r.value: r for r in COMPLIANCE_REASONS}
_TRACKED = (
    "campaign_status", "engagement_score", "last_engagement_date", "reactivation_cycle",
    "reactivation_step", "unanswered_sends", "suppression_reason", "status_changed_at",
)  # fmt: skip
_snapshot = attrgetter(*_TRACKED)


class UnknownEventType(ValueError):
    """The policy gives no meaning to this event type."""


class Outcome(NamedTuple):
    state: ContactState
    decisions: list[Decision]


class Due(NamedTuple):
    at: datetime
    rule: str


def new_contact(contact_id: str, at: datetime) -> ContactState:
    return ContactState(contact_id, _ACTIVE, at, at, at, at)


def next_due(state: ContactState, policy: Policy) -> Due | None:
    """The earliest time rule that will fire for this contact if nothing else happens."""
    due = _due(state, policy.compiled)
    return None if due is None else Due(*due)


def _due(state: ContactState, c: Compiled) -> tuple[datetime, str] | None:
    # Plain tuples: this runs several times per event on the hot path.
    best: tuple[datetime, str] | None = None
    if state.engagement_score > 0 and state.last_engagement_date is not None:
        at = state.last_engagement_date + c.decay_after + state.decay_steps * c.decay_every
        best = (at, "decay")
    status = state.campaign_status
    if status is _ACTIVE or status is _REACTIVATED:
        anchor = state.stream_entered_at
        if state.last_engagement_date is not None and state.last_engagement_date > anchor:
            anchor = state.last_engagement_date
        due = (anchor + c.dormant_after, "inactivity")
    elif status is _DORMANT:
        if state.reactivation_step == 0:
            due = (state.status_changed_at + c.cooling, "cooling_done")
            sends = state.reactivation_cycle < c.max_cycles
        else:
            sends = state.reactivation_step < c.steps
            rule = "next_step" if sends else "no_response"
            due = (state.reactivation_step_at + c.step_wait, rule)  # type: ignore[operator]
        if sends and c.cap_max and len(state.send_times) >= c.cap_max:
            # The frequency cap delays the step until the oldest counted send leaves the window.
            free_at = state.send_times[-c.cap_max] + c.cap_window
            if free_at > due[0]:
                due = (free_at, due[1])
    else:
        return best
    # A decay due at the same instant goes first: it can turn Engaged into Active.
    return due if best is None or due[0] < best[0] else best


def advance(state: ContactState, now: datetime, policy: Policy) -> Outcome:
    """Fire every time rule due at or before `now`, each at its own due time."""
    decisions: list[Decision] = []
    c = policy.compiled
    due = _due(state, c)
    if (due is None or due[0] > now) and now <= state.as_of:
        return Outcome(state, decisions)
    state = state.copy()
    _advance_in_place(state, now, c, policy.version, decisions)
    return Outcome(state, decisions)


def _advance_in_place(
    state: ContactState, now: datetime, c: Compiled, version: str, decisions: list[Decision]
) -> None:
    due = _due(state, c)
    while due is not None and due[0] <= now:
        state.as_of = due[0]
        _fire(state, due, c, version, decisions)
        due = _due(state, c)
    if now > state.as_of:
        state.as_of = now


def apply_event(state: ContactState | None, event: Event, policy: Policy) -> Outcome:
    """Apply one event: enroll if unknown, fire the time rules due by then, then the event."""
    kind = event.type
    c = policy.compiled
    if kind not in c.known:
        raise UnknownEventType(f"event type '{kind}' is not known to the policy")
    at = event.occurred_at
    decisions: list[Decision] = []
    program = c.program
    if state is None:
        state = new_contact(event.contact_id, at)
        changes: dict = {"campaign_status": (None, _ACTIVE)}
        if program is not None:
            state.segment = program.segment
            state.experiments = program.assign(event.contact_id)
            changes["experiments"] = (None, state.experiments)
            if program.segment is not None:
                changes["segment"] = (None, program.segment)
        decisions.append(
            Decision(
                event.contact_id, at, "enroll", "enrolled", event.event_id, None, _ACTIVE,
                changes, policy.version, [], kind,
            )
        )  # fmt: skip
        if kind == "enroll":
            return Outcome(state, decisions)
    elif program is not None and len(state.experiments) < program.n_keys:
        # A contact the CRM had before the program (or before this experiment) joins it now.
        state = state.copy()
        old = state.experiments
        state.experiments = program.assign(state.contact_id, old)
        decisions.append(
            Decision(
                state.contact_id, at, "experiments", "assigned", event.event_id,
                state.campaign_status, state.campaign_status,
                {"experiments": (old or None, state.experiments)}, policy.version, [], kind,
            )
        )  # fmt: skip
        if kind == "enroll":
            return Outcome(state, decisions)
    elif kind == "enroll":
        return Outcome(state, decisions)
    else:
        state = state.copy()
    # Every path above left `state` a private copy: the rules may now change it in place.
    _advance_in_place(state, at, c, policy.version, decisions)
    before = _snapshot(state)
    if at < state.as_of:
        at = state.as_of  # a late event cannot rewind time rules already fired
    actions: list[Action] = []
    if kind == "send":
        rule, reason = _send(state, at, c)
        if c.cap_max:
            # Only the latest `cap_max` sends can hold a step back.
            times = sorted((*state.send_times, event.occurred_at))
            state.send_times = tuple(times[-c.cap_max :])
    elif kind in _COMPLIANCE_EXITS:
        rule, reason = _compliance_exit(state, at, _COMPLIANCE_EXITS[kind], actions)
    elif kind == "resubscribe":
        rule, reason = _resubscribe(state, at)
    else:
        rule, reason = _engage(state, event, at, c, actions)
    _record(
        state, before, at, rule, reason, event.event_id, policy.version, actions, decisions, kind
    )
    return Outcome(state, decisions)


def _record(
    state: ContactState,
    before: tuple,
    at: datetime,
    rule: str,
    reason: str,
    cause: str,
    version: str,
    actions: list[Action],
    decisions: list[Decision],
    event_type: str | None = None,
) -> None:
    after = _snapshot(state)
    if after == before and not actions:
        return
    changes = {
        name: (old, new)
        for name, old, new in zip(_TRACKED, before, after, strict=True)
        if new != old
    }
    if changes or actions:
        decisions.append(
            Decision(
                state.contact_id, at, rule, reason, cause, before[0], state.campaign_status,
                changes, version, actions, event_type,
            )
        )  # fmt: skip


def _set_status(state: ContactState, status: Status, at: datetime) -> None:
    state.campaign_status = status
    state.status_changed_at = at


def _engage(
    state: ContactState, event: Event, at: datetime, c: Compiled, actions: list[Action]
) -> tuple[str, str]:
    kind = event.type
    if kind not in c.points and kind not in ENGAGEMENT_EVENTS:
        raise UnknownEventType(f"event type '{kind}' has no points in the policy")
    score = state.engagement_score + c.points.get(kind, 0.0)
    state.engagement_score = state.base_score = score
    state.decay_steps = 0
    if state.last_engagement_date is None or event.occurred_at > state.last_engagement_date:
        state.last_engagement_date = event.occurred_at
    state.unanswered_sends = 0
    status = state.campaign_status
    if (status is _ACTIVE or status is _REACTIVATED) and score >= c.threshold:
        _set_status(state, _ENGAGED, at)
        if c.handoff:
            actions.append(Action("handoff_task", {"score": score, "trigger": kind}))
        return "engagement", "score_reached_threshold"
    if status is _DORMANT:
        _set_status(state, _REACTIVATED, at)
        state.reactivation_step, state.reactivation_step_at = 0, None
        return "engagement", "reactivated_from_dormant"
    if status is _SUPPRESSED and state.suppression_reason is SuppressionReason.NO_RESPONSE:
        _set_status(state, _REACTIVATED, at)
        state.suppression_reason = None
        actions.append(Action("alternate_channel_remove"))
        return "engagement", "reactivated_from_alternate_channel"
    return "engagement", kind


def _send(state: ContactState, at: datetime, c: Compiled) -> tuple[str, str]:
    state.unanswered_sends += 1
    status = state.campaign_status
    if (status is _ACTIVE or status is _REACTIVATED) and (
        state.unanswered_sends >= c.max_unanswered_sends
    ):
        _go_dormant(state, at)
        return "send", "unanswered_sends"
    return "send", "sent"


def _compliance_exit(
    state: ContactState, at: datetime, reason: SuppressionReason, actions: list[Action]
) -> tuple[str, str]:
    current = state.suppression_reason
    if state.campaign_status is _SUPPRESSED and current in COMPLIANCE_REASONS:
        return "compliance", "already_suppressed"
    if current is SuppressionReason.NO_RESPONSE:
        actions.append(Action("alternate_channel_remove"))
    _suppress(state, at, reason)
    return "compliance", reason.value


def _resubscribe(state: ContactState, at: datetime) -> tuple[str, str]:
    if state.campaign_status is _SUPPRESSED and state.suppression_reason in COMPLIANCE_REASONS:
        _set_status(state, _ACTIVE, at)
        state.suppression_reason = None
        state.unanswered_sends = 0
        state.stream_entered_at = at
    return "compliance", "resubscribed"


def _go_dormant(state: ContactState, at: datetime) -> None:
    _set_status(state, _DORMANT, at)
    state.reactivation_step, state.reactivation_step_at = 0, None


def _suppress(state: ContactState, at: datetime, reason: SuppressionReason) -> None:
    _set_status(state, _SUPPRESSED, at)
    state.suppression_reason = reason
    state.reactivation_step, state.reactivation_step_at = 0, None


def _fire(
    state: ContactState, due: Due, c: Compiled, version: str, decisions: list[Decision]
) -> None:
    before = _snapshot(state)
    at, rule = due
    actions: list[Action] = []
    reason = rule
    if rule == "decay":
        reason = _decay(state, at, c)
    elif rule == "inactivity":
        _go_dormant(state, at)
    elif rule == "cooling_done" and state.reactivation_cycle >= c.max_cycles:
        _suppress(state, at, SuppressionReason.NO_RESPONSE)
        actions.append(Action("alternate_channel_add"))
        reason = "reactivation_cycles_exhausted"
    elif rule in ("cooling_done", "next_step"):
        planned = (
            state.status_changed_at + c.cooling
            if state.reactivation_step == 0
            else state.reactivation_step_at + c.step_wait  # type: ignore[operator]
        )
        if state.reactivation_step == 0:
            state.reactivation_cycle += 1
        state.reactivation_step += 1
        state.reactivation_step_at = at
        actions.append(_step_action(state, c, planned, at))
        reason = f"reactivation_step_{state.reactivation_step}"
    else:  # no_response after the last step
        _suppress(state, at, SuppressionReason.NO_RESPONSE)
        actions.append(Action("alternate_channel_add"))
    cause = f"time:{rule}@{iso_utc(at)}"
    _record(state, before, at, "time:" + rule, reason, cause, version, actions, decisions)


def _step_action(state: ContactState, c: Compiled, planned: datetime, at: datetime) -> Action:
    """The send a reactivation step triggers, or its withholding for a holdout contact (whose
    timeline still advances, so its natural reactivation rate stays comparable)."""
    program = c.program
    if program is None:
        step = state.reactivation_step
        return Action("reactivation_step_due", {"step": step, "cycle": state.reactivation_cycle})
    if program.n_keys and len(state.experiments) < program.n_keys:
        state.experiments = program.assign(state.contact_id, state.experiments)
    detail = program.step_detail(state, state.reactivation_step)
    if at > planned:
        detail["delayed_from"] = planned.isoformat()
        detail["delay_reason"] = "frequency_cap"
    if state.experiments.get("holdout") == "holdout":
        return Action("reactivation_step_withheld", detail)
    return Action("reactivation_step_due", detail)


def _decay(state: ContactState, at: datetime, c: Compiled) -> str:
    state.decay_steps += 1
    score = round(state.base_score * c.decay_factor**state.decay_steps, 4)
    state.engagement_score = score if score >= c.decay_floor else 0.0
    if state.campaign_status is _ENGAGED and state.engagement_score < c.threshold:
        _set_status(state, _ACTIVE, at)
        return "score_decayed_below_threshold"
    return "score_decayed"
