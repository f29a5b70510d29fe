"""One count per occurrence of a CRM property value.

CRMs resend what they hold: a Salesforce outbound message and a HubSpot workflow webhook carry
every signal field's *current* value, and the scheduled poll reads them again. An event id
absorbs a redelivery only while its claim lasts (90 days on DynamoDB), so the pipeline also
keeps, per contact and property, the last value it counted and when that value was set. An
observation repeats that occurrence when the value is the same and, where both sides know when
the property changed, the change time is the same too. A new change time with the same value
(a second visit to /pricing seen by a webhook) is a new occurrence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import overload

from crm_elasticity.core.models import Event, Observation, iso_utc

LIFTING_EVENTS = frozenset({"resubscribe"})
"""Events that lift something. Seen for the first time in a snapshot (no change time), such a
value says nothing changed: an opt-out that is false on a contact never seen before lifts
nothing."""


@dataclass(frozen=True, slots=True)
class Seen:
    value: str
    changed_at: datetime | None = None


def encode_seen(value: str, changed_at: datetime | None) -> str:
    return json.dumps({"value": value, "changed_at": iso_utc(changed_at)})


@overload
def decode_seen(text: str) -> Seen: ...
@overload
def decode_seen(text: None) -> None: ...
def decode_seen(text: str | None) -> Seen | None:
    """A stored seen record. Earlier versions stored the bare value."""
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return Seen(text)
    if not isinstance(data, dict) or not isinstance(data.get("value"), str):
        return Seen(text)
    at = data.get("changed_at")
    return Seen(data["value"], datetime.fromisoformat(at) if at else None)


def repeats(observed: Observation, seen: Seen | None) -> bool:
    """Is this the occurrence already counted?"""
    if seen is None or observed.value != seen.value:
        return False
    if observed.changed_at is None or seen.changed_at is None:
        return True  # a snapshot cannot tell a new occurrence of the same value
    return observed.changed_at == seen.changed_at


def counts(event: Event, seen: Seen | None) -> bool:
    """Does this observed event count as a new occurrence?"""
    observed = event.observed
    if observed is None:
        return True
    if seen is None:
        return not (event.type in LIFTING_EVENTS and observed.changed_at is None)
    return not repeats(observed, seen)


def newer(observed: Observation, seen: Seen | None) -> bool:
    """Should this observation replace the stored one? Not when it is older than it."""
    if seen is None or observed.changed_at is None or seen.changed_at is None:
        return True
    return observed.changed_at >= seen.changed_at
