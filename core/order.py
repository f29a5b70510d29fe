"""Late events decided as if they had arrived in order.

Webhooks are retried for hours and arrive out of order, so an event can reach us after later
events of the same contact were decided. Applied at the contact's current time it would decide
something that never happened (three sends and a click delivered last: a "comeback" from a
dormancy the click had prevented). Instead each contact keeps its recent decided events: a base
state and the events decided on top of it, in event order (`occurred_at`, then `event_id`: the
order `replay` uses). A late event re-decides the contact from the base: the stored events and
the late one re-applied in order, then the time rules up to where the contact had got to. The
contact ends where `replay` of the sorted events would put it.

What the first decisions already did in the CRM stays done: a hand-off task created or a
reactivation step written is a fact, neither undone nor repeated. A revision owes only the
actions its new path has beyond the old one's, and records one ledger row (reason `revised`)
with the status and fields before and after, and both paths of decisions.

The history is bounded: events older than `window` before the contact's latest event are folded
into the base (and at most `MAX_EVENTS` events, `MAX_BYTES` of them, are kept). An event older
than the base, or for a contact whose history does not reproduce its stored state (a hand edit
in the CRM, a policy change), is decided at the contact's current time as before, recorded as
`order/decided_late` and counted (`RunStats.late_unrevised`).
"""

from __future__ import annotations

from bisect import insort
from collections import Counter
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

import orjson

from crm_elasticity.core.engine import advance_owned, apply_owned
from crm_elasticity.core.models import (
    CANONICAL_FIELDS,
    Action,
    ContactState,
    Decision,
    Event,
    Reason,
    Rule,
    iso_utc,
)
from crm_elasticity.core.policy import Policy
from crm_elasticity.core.sqlite_rows import contact_from_row, contact_row

REVISION_WINDOW = timedelta(days=7)
"""How far back a late event can still be decided in order: HubSpot retries a webhook for up to
three days (app webhooks for 24 hours) and Salesforce outbound messages for 24 hours; a week
covers them with room."""
MAX_EVENTS = 200
MAX_BYTES = 200_000
"""A contact keeps at most this many decided events, of at most this much text: the history
is one DynamoDB item, which holds 400 KB."""
REVISED = Reason.REVISED

_COMPARED = tuple(f.name for f in fields(ContactState) if f.name != "as_of")
_RULES = {
    "send": Rule.SEND,
    "enroll": Rule.ENROLL,
    "unsubscribe": Rule.COMPLIANCE,
    "hard_bounce": Rule.COMPLIANCE,
    "spam_complaint": Rule.COMPLIANCE,
    "resubscribe": Rule.COMPLIANCE,
}


def event_order(event: Event) -> tuple[datetime, str]:
    """The total order events are decided in: time, then id for events at the same instant."""
    return (event.occurred_at, event.event_id)


class ContactHistory:
    """A contact's base state and the events decided since it, in `event_order`.

    `base` is None when the history starts with the contact's first event (it was unknown).
    The base is never advanced past its own last decision, so a late event after it re-decides
    exactly as if it had arrived in order."""

    __slots__ = ("base", "contact_id", "events", "floor", "_keys")

    def __init__(
        self,
        contact_id: str,
        base: ContactState | None,
        events: list[Event],
        floor: tuple[datetime, str] | None = None,
    ) -> None:
        self.contact_id = contact_id
        self.base = base
        self.events = events
        self.floor = floor
        """The order key of the last event already in the base: one that decided nothing did
        not move the base's `as_of`, yet a late event before it can no longer go first."""
        self._keys = [event_order(e) for e in events]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ContactHistory) and (
            self.contact_id,
            self.base,
            self.events,
            self.floor,
        ) == (other.contact_id, other.base, other.events, other.floor)

    def __repr__(self) -> str:
        return (
            f"ContactHistory({self.contact_id!r}, {self.base!r}, {self.events!r}, {self.floor!r})"
        )

    def is_late(self, event: Event, state: ContactState) -> bool:
        """An event is late when a later event or time rule was already decided."""
        last = self._keys[-1] if self._keys else self.floor
        return event.occurred_at < state.as_of or (last is not None and event_order(event) < last)

    def can_revise(self, event: Event) -> bool:
        base, floor = self.base, self.floor
        return (base is None or event.occurred_at >= base.as_of) and (
            floor is None or event_order(event) > floor
        )

    def restart(self, base: ContactState) -> None:
        """Forget the events: what comes next is decided on top of `base`."""
        if self._keys:
            self.floor = self._keys[-1]
        self.base = base
        self.events = []
        self._keys = []

    def outlived(self, event: Event, state: ContactState, window: timedelta) -> bool:
        """Everything decided for the contact is older than `window` before `event`: the
        state as it is can become the base, without re-applying the kept events."""
        cutoff = event.occurred_at - window
        # `as_of` moves only with a decision: the kept events count too.
        return bool(self._keys) and self._keys[-1][0] < cutoff and state.as_of < cutoff

    def add(self, event: Event) -> None:
        key = event_order(event)
        if not self._keys or key > self._keys[-1]:
            self._keys.append(key)
            self.events.append(event)
            return
        insort(self._keys, key)
        self.events.insert(self._keys.index(key), event)

    def trim(self, window: timedelta, policy: Policy) -> None:
        """Fold events older than `window` before the latest one, beyond `MAX_EVENTS` or beyond
        `MAX_BYTES` into the base. Events are folded in runs (a quarter of the window past it)
        so that a contact's events are re-applied once, not once per new event."""
        if not self.events:
            return
        sizes = [_size(e) for e in self.events]
        total = sum(sizes)
        cutoff = self.events[-1].occurred_at - window
        if (
            self.events[0].occurred_at >= cutoff - window / 4
            and len(self.events) <= MAX_EVENTS
            and total <= MAX_BYTES
        ):
            return
        fold = next(i for i, e in enumerate(self.events) if e.occurred_at >= cutoff)
        fold = max(fold, len(self.events) - MAX_EVENTS)
        total -= sum(sizes[:fold])
        while total > MAX_BYTES:
            total -= sizes[fold]
            fold += 1
        state = None if self.base is None else self.base.copy()
        for event in self.events[:fold]:
            state = apply_owned(state, event, policy, [])
        self.base = state
        self.floor = self._keys[fold - 1] if fold else self.floor
        del self.events[:fold]
        del self._keys[:fold]

    def replayed(self, until: datetime, policy: Policy) -> tuple[ContactState, list[Decision]]:
        """The base with every stored event applied in order, then time rules up to `until`."""
        decisions: list[Decision] = []
        state = None if self.base is None else self.base.copy()
        for event in self.events:
            state = apply_owned(state, event, policy, decisions)
        assert state is not None  # a history holds at least one event or a base
        advance_owned(state, until, policy, decisions)
        return state, decisions


@dataclass
class Revision:
    state: ContactState
    decision: Decision | None
    """None when the late event changes nothing: the same decisions, in the same order."""


def _size(event: Event) -> int:
    return (
        80
        + len(event.event_id)
        + sum(
            len(text)
            for text in (event.type, event.campaign, event.variant, event.url, event.source)
            if text
        )
    )


def same_state(a: ContactState, b: ContactState) -> bool:
    return all(getattr(a, name) == getattr(b, name) for name in _COMPARED)


def revise(
    current: ContactState, history: ContactHistory, late: Event, policy: Policy
) -> Revision | None:
    """Re-decide `current` with `late` in its place; None when the history cannot (the event is
    older than the base, or the history does not lead to `current`). Adds `late` to the
    history when it succeeds."""
    if not history.can_revise(late):
        return None
    old_state, old_decisions = history.replayed(current.as_of, policy)
    if not same_state(old_state, current):
        return None
    history.add(late)
    new_state, new_decisions = history.replayed(current.as_of, policy)
    old_path = [d for d in old_decisions if d.at >= late.occurred_at]
    new_path = [d for d in new_decisions if d.at >= late.occurred_at]
    if list(map(_facts, old_path)) == list(map(_facts, new_path)) and same_state(
        new_state, current
    ):
        return Revision(new_state, None)
    until = max(current.as_of, history.events[-1].occurred_at)
    changes: dict[str, tuple[Any, Any]] = {
        name: (getattr(current, name), getattr(new_state, name))
        for name in CANONICAL_FIELDS
        if getattr(current, name) != getattr(new_state, name)
    }
    changes["decisions"] = (_path(old_path), _path(new_path))
    rule = next((d.rule for d in new_path if d.cause == late.event_id), None)
    decision = Decision(
        contact_id=current.contact_id,
        at=until,
        rule=rule or _RULES.get(late.type, Rule.ENGAGEMENT),
        reason=REVISED,
        cause=late.event_id,
        from_status=current.campaign_status,
        to_status=new_state.campaign_status,
        changes=changes,
        policy_version=policy.version,
        actions=owed_anew(old_decisions, new_decisions),
        event_type=late.type,
    )
    return Revision(new_state, decision)


def _facts(d: Decision) -> tuple:
    return (d.at, d.rule, d.reason, d.cause, d.from_status, d.to_status, d.changes)


def _path(decisions: list[Decision]) -> list[str]:
    """Each decision as one line: when, rule/reason, status move, actions."""
    lines = []
    for d in decisions:
        move = (
            d.to_status.value
            if d.from_status is d.to_status
            else (f"{d.from_status.value if d.from_status else '(new)'} -> {d.to_status.value}")
        )
        line = f"{iso_utc(d.at)} {d.rule}/{d.reason} {move}"
        if d.actions:
            line += " [" + ", ".join(a.kind for a in d.actions) + "]"
        lines.append(line)
    return lines


def _action_key(action: Action) -> tuple:
    detail = action.detail
    if action.kind.startswith("reactivation_step"):
        return (action.kind, detail.get("cycle"), detail.get("step"))
    return (action.kind,)


def owed_anew(old: list[Decision], new: list[Decision]) -> list[Action]:
    """Actions of the new path that the old one did not already carry out: a hand-off task is
    created once per hand-off, a reactivation step is written once per cycle and step."""
    done = Counter(_action_key(a) for d in old for a in d.actions)
    owed = []
    for decision in new:
        for action in decision.actions:
            key = _action_key(action)
            if done[key]:
                done[key] -= 1
            else:
                owed.append(action)
    return owed


# ---- storage form ---------------------------------------------------------------------------


# Written for every contact a batch touches: plain rows through orjson, several times faster
# than the pydantic serialisers. An event's `observed` (the CRM value a signal was read from) is
# left out: it only decides whether the event is a new occurrence, before any rule sees it.


def history_json(history: ContactHistory) -> str:
    base = history.base
    floor = history.floor
    return orjson.dumps(
        {
            "base": None if base is None else contact_row(base, None)[:-1],
            "floor": None if floor is None else (iso_utc(floor[0]), floor[1]),
            "events": [
                (e.event_id, e.type, iso_utc(e.occurred_at), e.campaign, e.variant, e.url, e.source)
                for e in history.events
            ],
        }
    ).decode()


def history_from_json(contact_id: str, text: str) -> ContactHistory:
    body = orjson.loads(text)
    base = None if body["base"] is None else contact_from_row(body["base"])
    events = [
        Event(
            event_id=i,
            contact_id=contact_id,
            type=t,
            occurred_at=datetime.fromisoformat(at),
            campaign=c,
            variant=v,
            url=u,
            source=src,
        )
        for i, t, at, c, v, u, src in body["events"]
    ]
    floor = body.get("floor")
    if floor is not None:
        floor = (datetime.fromisoformat(floor[0]), floor[1])
    return ContactHistory(contact_id, base, events, floor)
