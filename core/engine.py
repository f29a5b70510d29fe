"""The program's rules (README, "How it works") as pure functions:
(state, event or time, policy) -> outcome.

Nothing here does I/O or reads a clock. Time rules fire at their due time, computed from the
state, so the outcome is the same whether the scheduler ran hourly, daily or once.

`apply_event` and `advance` never touch the state they are given. The pipeline, which owns
the states it loaded, calls `apply_owned` and `advance_owned` instead: the same rules, changing
the state in place, because a copy per event costs as much as the rule it protects. Each rule
records its own before/after values as it changes a field (a property test folds them back
into the state), rather than diffing snapshots of the state around it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from crm_elasticity.core.models import (
    COMPLIANCE_REASONS,
    Action,
    ContactState,
    Decision,
    Event,
    Reason,
    Rule,
    Status,
    SuppressionReason,
    iso_utc,
)
from crm_elasticity.core.policy import Compiled, Policy

_ACTIVE, _ENGAGED, _DORMANT = Status.ACTIVE, Status.ENGAGED, Status.DORMANT
_REACTIVATED, _SUPPRESSED = Status.REACTIVATED, Status.SUPPRESSED
_NO_RESPONSE = SuppressionReason.NO_RESPONSE
_COMPLIANCE_EXITS = {r.value: r for r in COMPLIANCE_REASONS}

Changes = dict[str, tuple[Any, Any]]


class TimeRule(StrEnum):
    """The rules that fire at a due time (`Due.rule`); each decides as its `Rule.TIME_*`."""

    DECAY = "decay"
    INACTIVITY = "inactivity"
    COOLING_DONE = "cooling_done"
    NEXT_STEP = "next_step"
    NO_RESPONSE = "no_response"


_DECAY, _INACTIVITY, _COOLING_DONE = TimeRule.DECAY, TimeRule.INACTIVITY, TimeRule.COOLING_DONE
_NEXT_STEP, _NO_RESPONSE_DUE = TimeRule.NEXT_STEP, TimeRule.NO_RESPONSE
_DECIDED_AS = {
    _DECAY: Rule.TIME_DECAY,
    _INACTIVITY: Rule.TIME_INACTIVITY,
    _COOLING_DONE: Rule.TIME_COOLING_DONE,
    _NEXT_STEP: Rule.TIME_NEXT_STEP,
    _NO_RESPONSE_DUE: Rule.TIME_NO_RESPONSE,
}


class UnknownEventType(ValueError):
    """The policy gives no meaning to this event type."""


class Outcome(NamedTuple):
    state: ContactState
    decisions: list[Decision]


class Due(NamedTuple):
    at: datetime
    rule: TimeRule


def new_contact(contact_id: str, at: datetime) -> ContactState:
    return ContactState(contact_id, _ACTIVE, at, at, at, at)


def next_due(state: ContactState, policy: Policy) -> Due | None:
    """The earliest time rule that will fire for this contact if nothing else happens."""
    due = _due(state, policy.compiled)
    return None if due is None else Due(*due)


def _due(state: ContactState, c: Compiled) -> tuple[datetime, TimeRule] | None:
    # Plain tuples and as few datetime operations as possible: this runs on every event.
    status = state.campaign_status
    last = state.last_engagement_date
    due: tuple[datetime, TimeRule] | None
    if status is _ACTIVE or status is _REACTIVATED:
        anchor = state.stream_entered_at
        if last is not None and last > anchor:
            anchor = last
        due = (anchor + c.dormant_after, _INACTIVITY)
    elif status is _DORMANT:
        if state.reactivation_step == 0:
            held = state.reactivation_step_at  # set at step 0 only by a withheld first step
            due = (
                state.status_changed_at + c.cooling if held is None else held + c.step_wait,
                _COOLING_DONE,
            )
            sends = state.reactivation_cycle < c.max_cycles
        else:
            sends = state.reactivation_step < c.steps
            rule = _NEXT_STEP if sends else _NO_RESPONSE_DUE
            step_at = state.reactivation_step_at
            assert step_at is not None  # set by every step sent, and step > 0
            due = (step_at + c.step_wait, rule)
        if sends and c.cap_max and len(state.send_times) >= c.cap_max:
            # The frequency cap delays the step until the oldest counted send leaves the window.
            free_at = state.send_times[-c.cap_max] + c.cap_window
            if free_at > due[0]:
                due = (free_at, due[1])
    else:
        due = None
    if last is not None and state.engagement_score > 0:
        decay_at = last + c.decay_offset(state.decay_steps)
        # A decay due at the same instant goes first: it can turn Engaged into Active.
        if due is None or decay_at <= due[0]:
            return (decay_at, _DECAY)
    return due


def advance(state: ContactState, now: datetime, policy: Policy) -> Outcome:
    """Fire every time rule due at or before `now`, each at its own due time."""
    decisions: list[Decision] = []
    due = _due(state, policy.compiled)
    if due is None or due[0] > now:
        return Outcome(state, decisions)
    return Outcome(advance_owned(state.copy(), now, policy, decisions), decisions)


def advance_owned(
    state: ContactState, now: datetime, policy: Policy, decisions: list[Decision]
) -> ContactState:
    """`advance` changing `state` in place, appending to `decisions`. A state no rule changed
    is left exactly as it was (`as_of` included): callers store only states with decisions,
    and one that moved without a decision would differ from its stored row."""
    c = policy.compiled
    made = len(decisions)
    _fire_due(state, _due(state, c), now, c, c.version, decisions)
    if len(decisions) > made and now > state.as_of:
        state.as_of = now
    return state


def _fire_due(
    state: ContactState,
    due: tuple[datetime, TimeRule] | None,
    now: datetime,
    c: Compiled,
    version: str,
    decisions: list[Decision],
) -> None:
    while due is not None and due[0] <= now:
        state.as_of = due[0]
        _fire(state, due[0], due[1], c, version, decisions)
        due = _due(state, c)


def apply_event(state: ContactState | None, event: Event, policy: Policy) -> Outcome:
    """Apply one event: enroll if unknown, fire the time rules due by then, then the event."""
    decisions: list[Decision] = []
    owned = None if state is None else state.copy()
    return Outcome(apply_owned(owned, event, policy, decisions), decisions)


def apply_owned(
    state: ContactState | None, event: Event, policy: Policy, decisions: list[Decision]
) -> ContactState:
    """`apply_event` changing `state` in place (a new state for an unknown contact),
    appending to `decisions`. An event that decides nothing leaves the state as it was."""
    kind = event.type
    c = policy.compiled
    if kind not in c.known:
        raise UnknownEventType(f"event type '{kind}' is not known to the policy")
    at = event.occurred_at
    version = c.version
    program = c.program
    made = len(decisions)
    if state is None:
        state = _enroll(event, c, version, decisions)
        if kind == "enroll":
            return state
    elif program is not None and len(state.experiments) < program.n_keys:
        # A contact the CRM had before the program (or before this experiment) joins it now.
        old = state.experiments
        state.experiments = program.assign(state.contact_id, old)
        status = state.campaign_status
        decisions.append(
            Decision(
                contact_id=state.contact_id,
                at=at,
                rule=Rule.EXPERIMENTS,
                reason=Reason.ASSIGNED,
                cause=event.event_id,
                from_status=status,
                to_status=status,
                changes={"experiments": (old or None, state.experiments)},
                policy_version=version,
                actions=[],
                event_type=kind,
            )
        )
        if kind == "enroll":
            return state
    elif kind == "enroll":
        return state
    due = _due(state, c)
    if due is not None and due[0] <= at:
        _fire_due(state, due, at, c, version, decisions)
    late = at <= state.as_of
    if late:
        # Rules already fired are not rewound here: the pipeline re-decides a late event in its
        # place from the contact's kept history (core.order); this is what it falls back to.
        at = state.as_of
    before = state.campaign_status
    changes: Changes = {}
    actions: list[Action] = []
    if kind == "send":
        rule, reason = Rule.SEND, _send(state, at, c, changes)
        if c.cap_max:
            # Only the latest `cap_max` sends can hold a step back.
            times = sorted((*state.send_times, event.occurred_at))
            state.send_times = tuple(times[-c.cap_max :])
    elif kind in _COMPLIANCE_EXITS:
        rule = Rule.COMPLIANCE
        reason = _compliance_exit(state, at, _COMPLIANCE_EXITS[kind], changes, actions)
    elif kind == "resubscribe":
        rule, reason = Rule.COMPLIANCE, _resubscribe(state, at, changes)
    else:
        rule, reason = Rule.ENGAGEMENT, _engage(state, event, at, c, changes, actions)
    if changes or actions:
        decisions.append(
            Decision(
                contact_id=state.contact_id,
                at=at,
                rule=rule,
                reason=reason,
                cause=event.event_id,
                from_status=before,
                to_status=state.campaign_status,
                changes=changes,
                policy_version=version,
                actions=actions,
                event_type=kind,
            )
        )
    if not late and len(decisions) > made:
        state.as_of = at
    return state


def _enroll(event: Event, c: Compiled, version: str, decisions: list[Decision]) -> ContactState:
    at = event.occurred_at
    state = new_contact(event.contact_id, at)
    changes: Changes = {"campaign_status": (None, _ACTIVE)}
    program = c.program
    if program is not None:
        state.segment = program.segment
        state.experiments = program.assign(event.contact_id)
        changes["experiments"] = (None, state.experiments)
        if program.segment is not None:
            changes["segment"] = (None, program.segment)
    decisions.append(
        Decision(
            contact_id=event.contact_id,
            at=at,
            rule=Rule.ENROLL,
            reason=Reason.ENROLLED,
            cause=event.event_id,
            from_status=None,
            to_status=_ACTIVE,
            changes=changes,
            policy_version=version,
            actions=[],
            event_type=event.type,
        )
    )
    return state


def _put(state: ContactState, changes: Changes, name: str, value: Any) -> None:
    old = getattr(state, name)
    setattr(state, name, value)
    if old != value:
        changes[name] = (old, value)


def _set_status(state: ContactState, status: Status, at: datetime, changes: Changes) -> None:
    old = state.campaign_status
    if old is not status:
        state.campaign_status = status
        # A decision that moves twice (a comeback handed on at once) records where it started.
        first = changes.get("campaign_status")
        changes["campaign_status"] = (first[0] if first else old, status)
    old_at = state.status_changed_at
    state.status_changed_at = at
    if old_at != at:
        changes["status_changed_at"] = (old_at, at)


def _engage(
    state: ContactState,
    event: Event,
    at: datetime,
    c: Compiled,
    changes: Changes,
    actions: list[Action],
) -> str:
    kind = event.type
    old = state.engagement_score
    score = old + c.points.get(kind, 0.0)
    if score != old:
        state.engagement_score = score
        changes["engagement_score"] = (old, score)
    last = state.last_engagement_date
    newer = last is None or event.occurred_at > last
    if newer:
        state.last_engagement_date = event.occurred_at
        changes["last_engagement_date"] = (last, event.occurred_at)
    if newer or score != old:  # a stale engagement worth no points restarts no decay
        state.base_score = score
        state.decay_steps = 0
    unanswered = state.unanswered_sends
    if unanswered:
        state.unanswered_sends = 0
        changes["unanswered_sends"] = (unanswered, 0)
    status = state.campaign_status
    if (status is _ACTIVE or status is _REACTIVATED) and score >= c.threshold:
        _set_status(state, _ENGAGED, at, changes)
        if c.handoff:
            actions.append(Action("handoff_task", {"score": score, "trigger": kind}))
        return Reason.SCORE_REACHED_THRESHOLD
    if status is _DORMANT:
        _set_status(state, _REACTIVATED, at, changes)
        _put(state, changes, "reactivation_step", 0)
        state.reactivation_step_at = None
        _comeback_handoff(state, kind, score, at, c, changes, actions)
        return Reason.REACTIVATED_FROM_DORMANT
    if status is _SUPPRESSED and state.suppression_reason is _NO_RESPONSE:
        _set_status(state, _REACTIVATED, at, changes)
        _put(state, changes, "suppression_reason", None)
        actions.append(Action("alternate_channel_remove"))
        _comeback_handoff(state, kind, score, at, c, changes, actions)
        return Reason.REACTIVATED_FROM_ALTERNATE_CHANNEL
    return kind


def _comeback_handoff(
    state: ContactState,
    kind: str,
    score: float,
    at: datetime,
    c: Compiled,
    changes: Changes,
    actions: list[Action],
) -> None:
    """A comeback whose score already reaches the threshold is handed on in the same decision
    (rule 2 in the README): waiting for the next engagement would keep a responsive contact in
    the send stream. The ledger keeps the comeback's reason, so reactivations still count it."""
    if score >= c.threshold:
        _set_status(state, _ENGAGED, at, changes)
        if c.handoff:
            actions.append(Action("handoff_task", {"score": score, "trigger": kind}))


def _send(state: ContactState, at: datetime, c: Compiled, changes: Changes) -> str:
    sent = state.unanswered_sends + 1
    changes["unanswered_sends"] = (state.unanswered_sends, sent)
    state.unanswered_sends = sent
    status = state.campaign_status
    if (status is _ACTIVE or status is _REACTIVATED) and sent >= c.max_unanswered_sends:
        _go_dormant(state, at, changes)
        return Reason.UNANSWERED_SENDS
    return Reason.SENT


def _compliance_exit(
    state: ContactState,
    at: datetime,
    reason: SuppressionReason,
    changes: Changes,
    actions: list[Action],
) -> str:
    current = state.suppression_reason
    if state.campaign_status is _SUPPRESSED and current in COMPLIANCE_REASONS:
        # The latest compliance reason replaces the earlier one (a hard bounce after an
        # unsubscribe shows hard_bounce); the status and its clock stay as they are.
        if current is reason:
            return Reason.ALREADY_SUPPRESSED
        _put(state, changes, "suppression_reason", reason)
        return Reason.SUPPRESSION_REASON_REPLACED
    if current is _NO_RESPONSE:
        actions.append(Action("alternate_channel_remove"))
    _suppress(state, at, reason, changes)
    return reason


def _resubscribe(state: ContactState, at: datetime, changes: Changes) -> str:
    if state.campaign_status is _SUPPRESSED and state.suppression_reason in COMPLIANCE_REASONS:
        _set_status(state, _ACTIVE, at, changes)
        _put(state, changes, "suppression_reason", None)
        _put(state, changes, "unanswered_sends", 0)
        state.stream_entered_at = at
    return Reason.RESUBSCRIBED


def _go_dormant(state: ContactState, at: datetime, changes: Changes) -> None:
    _set_status(state, _DORMANT, at, changes)
    _put(state, changes, "reactivation_step", 0)
    state.reactivation_step_at = None


def _suppress(
    state: ContactState, at: datetime, reason: SuppressionReason, changes: Changes
) -> None:
    _set_status(state, _SUPPRESSED, at, changes)
    _put(state, changes, "suppression_reason", reason)
    _put(state, changes, "reactivation_step", 0)
    state.reactivation_step_at = None


def _fire(
    state: ContactState,
    at: datetime,
    rule: TimeRule,
    c: Compiled,
    version: str,
    decisions: list[Decision],
) -> None:
    before = state.campaign_status
    changes: Changes = {}
    actions: list[Action] = []
    reason: str
    if rule is _DECAY:
        reason = _decay(state, at, c, changes)
    elif rule is _INACTIVITY:
        reason = Reason.INACTIVITY
        _go_dormant(state, at, changes)
    elif rule is _COOLING_DONE and state.reactivation_cycle >= c.max_cycles:
        _suppress(state, at, _NO_RESPONSE, changes)
        actions.append(Action("alternate_channel_add"))
        reason = Reason.REACTIVATION_CYCLES_EXHAUSTED
    elif (
        (rule is _COOLING_DONE or rule is _NEXT_STEP)
        and c.program is not None
        and (c.program.withhold)
    ):
        # The program may not email this contact (no consent, out of its audience): nothing is
        # sent and the step does not advance; it is asked again a step's wait later.
        step = state.reactivation_step
        state.reactivation_step_at = at
        cycle = state.reactivation_cycle + (step == 0)
        reason = c.program.withhold
        actions.append(
            Action(
                "reactivation_step_withheld", {"step": step + 1, "cycle": cycle, "reason": reason}
            )
        )
    elif rule is _COOLING_DONE or rule is _NEXT_STEP:
        step = state.reactivation_step
        if step == 0:
            held = state.reactivation_step_at
            planned = state.status_changed_at + c.cooling if held is None else held + c.step_wait
            _put(state, changes, "reactivation_cycle", state.reactivation_cycle + 1)
        else:
            step_at = state.reactivation_step_at
            assert step_at is not None  # set by every step sent, and step > 0
            planned = step_at + c.step_wait
        _put(state, changes, "reactivation_step", step + 1)
        state.reactivation_step_at = at
        actions.append(_step_action(state, c, planned, at))
        reason = Reason.step(step + 1)
    else:  # no_response after the last step
        reason = Reason.NO_RESPONSE
        _suppress(state, at, _NO_RESPONSE, changes)
        actions.append(Action("alternate_channel_add"))
    if changes or actions:
        decisions.append(
            Decision(
                contact_id=state.contact_id,
                at=at,
                rule=_DECIDED_AS[rule],
                reason=reason,
                cause=f"{_DECIDED_AS[rule]}@{iso_utc(at)}",
                from_status=before,
                to_status=state.campaign_status,
                changes=changes,
                policy_version=version,
                actions=actions,
            )
        )


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


def _decay(state: ContactState, at: datetime, c: Compiled, changes: Changes) -> str:
    state.decay_steps += 1
    score = round(state.base_score * c.decay_factor**state.decay_steps, 4)
    _put(state, changes, "engagement_score", score if score >= c.decay_floor else 0.0)
    if state.campaign_status is _ENGAGED and state.engagement_score < c.threshold:
        _set_status(state, _ACTIVE, at, changes)
        return Reason.SCORE_DECAYED_BELOW_THRESHOLD
    return Reason.SCORE_DECAYED
