"""Coded rows and states back into the records everything else reads: `Decision`s (with the
same changes, in the same order, and the same actions as `core.engine` records) and
`ContactState`s.

A row carries the new values of the fields a decision may change; the old values are the
previous row's, so a contact's rows decode in order, from its enrollment.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from crm_elasticity.core.coded.codes import (
    CHANGE_ORDER,
    FIELD_BIT,
    M_ALT_ADD,
    M_ALT_REMOVE,
    M_ENROLL_EXPERIMENTS,
    M_ENROLL_SEGMENT,
    M_HANDOFF,
    M_STATUS_AT,
    M_STEP_ACTION,
    NO_TIME,
    NONE,
    REASONS,
    STATUSES,
    from_us,
)
from crm_elasticity.core.models import (
    STEP_REASONS,
    Action,
    ContactState,
    Decision,
    Reason,
    Rule,
    iso_utc,
)

if TYPE_CHECKING:  # `explain` decodes rows without loading the engine
    from crm_elasticity.core.coded.engine import CodedState


class Texts:
    """The interned texts a run's rows refer to, by code: (rule, reason) pairs, event types
    and reactivation-step actions (JSON)."""

    def __init__(
        self, what: Sequence[Sequence[str]], types: Sequence[str], actions: Sequence[str]
    ) -> None:
        self.what = [tuple(pair) for pair in what]
        self.types = types
        self.actions = actions
        self._order: dict[int, tuple[str, ...]] = {}

    @classmethod
    def of(cls, names: dict[str, list]) -> Texts:
        """From the texts as `core.coded.ledger` stores them (`stored_names`)."""
        return cls(names.get("what", []), names.get("type", []), names.get("action", []))

    def order(self, what: int) -> tuple[str, ...]:
        order = self._order.get(what)
        if order is None:
            order = self._order[what] = _order_of(*self.what[what])
        return order


def stored_names(texts: dict[str, list[str]]) -> dict[str, list]:
    """A run's interned texts (`Names.texts`) as stored: each (rule, reason) pair decoded,
    so a reader decodes the whole once; actions stay JSON text (each use takes a fresh copy
    of its detail, which a delayed step adds to)."""
    return {kind: [json.loads(t) for t in v] if kind == "what" else v for kind, v in texts.items()}


_ORDER_OF_RULE = {
    Rule.ENGAGEMENT: CHANGE_ORDER["engagement"],
    Rule.SEND: CHANGE_ORDER["send"],
    Rule.TIME_DECAY: CHANGE_ORDER["decay"],
    Rule.TIME_INACTIVITY: CHANGE_ORDER["dormant"],
}


def _order_of(rule: str, reason: str) -> tuple[str, ...]:
    """The order a decision of this (rule, reason) records its changes in (`core.engine`)."""
    order = _ORDER_OF_RULE.get(Rule(rule))
    if order is not None:
        return order
    if rule == Rule.COMPLIANCE:
        return CHANGE_ORDER["resubscribe" if reason == Reason.RESUBSCRIBED else "exit"]
    if reason in STEP_REASONS:
        return CHANGE_ORDER["step"]
    return CHANGE_ORDER["exit"]  # suppressed for no response, or cycles exhausted


_STATUS_TEXT = tuple(status.value for status in STATUSES)
_REASON_TEXT = tuple(reason.value if reason else None for reason in REASONS)


def decisions(
    contact_id: str,
    rows: Sequence[Sequence],
    texts: Texts,
    version: str,
    experiments: dict[str, str],
    segment: str | None,
) -> list[Decision]:
    """One contact's rows (oldest first, starting with its enrollment) as `Decision`s, as the
    text ledger hands them out: the values in `changes` as their JSON text decodes (times as
    ISO text, statuses and reasons as their values), so `explain` shows the same either way."""
    out: list[Decision] = []
    values: dict[str, object] = {}
    for row in rows:
        (
            _,
            at_us,
            what,
            frm,
            to,
            etype,
            mask,
            last,
            unanswered,
            step,
            cycle,
            reason,
            action,
            delayed,
            score,
            cause,
        ) = row
        at = from_us(at_us)
        at_text = iso_utc(at)
        rule, why = texts.what[what]
        to_status = STATUSES[to]
        kind = texts.types[etype] if etype != NONE else None
        enrolling = frm == NONE
        new = {
            "engagement_score": score,
            "last_engagement_date": None if last == NO_TIME else iso_utc(from_us(last)),
            "unanswered_sends": unanswered,
            "reactivation_step": step,
            "reactivation_cycle": cycle,
            "suppression_reason": _REASON_TEXT[reason],
            "status_changed_at": at_text
            if enrolling or mask & M_STATUS_AT
            else values["status_changed_at"],
        }
        if enrolling:
            from_status = None
            changes: dict[str, tuple] = {"campaign_status": (None, _STATUS_TEXT[to])}
            if mask & M_ENROLL_EXPERIMENTS:
                changes["experiments"] = (None, experiments)
            if mask & M_ENROLL_SEGMENT:
                changes["segment"] = (None, segment)
        else:
            from_status = STATUSES[frm]
            changes = {}
            for name in texts.order(what):
                if not mask & FIELD_BIT[name]:
                    continue
                if name == "campaign_status":
                    # A decision that moves twice records where it started.
                    changes[name] = (_STATUS_TEXT[frm], _STATUS_TEXT[to])
                else:
                    changes[name] = (values[name], new[name])
        values = new
        actions = _actions(mask, score, kind, action, delayed, texts)
        if cause is None:
            cause = f"{rule}@{at_text}"
        out.append(
            Decision(
                contact_id=contact_id,
                at=at,
                rule=rule,
                reason=why,
                cause=cause,
                from_status=from_status,
                to_status=to_status,
                changes=changes,
                policy_version=version,
                actions=actions,
                event_type=kind,
            )
        )
    return out


def _dt(value: int | None):
    return None if value is None or value == NO_TIME else from_us(value)


def _actions(
    mask: int, score: float, kind: str | None, action: int, delayed: int, texts: Texts
) -> list[Action]:
    actions: list[Action] = []
    if mask & M_ALT_REMOVE:
        actions.append(Action("alternate_channel_remove"))
    if mask & M_HANDOFF:
        actions.append(Action("handoff_task", {"score": score, "trigger": kind}))
    if mask & M_ALT_ADD:
        actions.append(Action("alternate_channel_add"))
    if mask & M_STEP_ACTION and action != NONE:
        step_kind, detail = json.loads(texts.actions[action])
        if delayed != NO_TIME:
            detail["delayed_from"] = from_us(delayed).isoformat()
            detail["delay_reason"] = "frequency_cap"
        actions.append(Action(step_kind, detail))
    return actions


def contact_state(contact_id: str, s: CodedState) -> ContactState:
    return ContactState(
        contact_id,
        STATUSES[s.status],
        from_us(s.enrolled_at),
        from_us(s.as_of),
        from_us(s.status_changed_at),
        from_us(s.stream_entered_at),
        s.score,
        s.base_score,
        _dt(s.last_engagement),
        s.decay_steps,
        s.cycle,
        s.step,
        _dt(s.step_at),
        s.unanswered,
        REASONS[s.reason],
        s.experiments,
        s.policy.segment,
        tuple(from_us(t) for t in s.send_times),
    )
