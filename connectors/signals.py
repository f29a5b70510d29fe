"""Vendor property values -> canonical events, the same way on every path.

A webhook's property change, a workflow webhook's property snapshot and the scheduled poll all
name the same (contact, property, new value); the event id is built from exactly that, so an
open seen by two paths counts once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping as MappingABC
from datetime import UTC, datetime

from core.mapping import Mapping, Signal
from core.models import MAX_URL_CHARS, Event, instant_problem

log = logging.getLogger(__name__)


def parse_instant(value: str | None) -> datetime | None:
    """Epoch milliseconds (HubSpot) or ISO 8601 (Salesforce, HubSpot v3), as aware UTC; None
    for no instant, or one outside the range an event time may take (`core.models`)."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    try:
        if text.isdigit():
            parsed = datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        return None  # past year 9999 or otherwise no instant: not a date, not a crash
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None if instant_problem(parsed) else parsed


def signal_event_id(vendor: str, contact_id: str, prop: str, value: str) -> str:
    digest = hashlib.sha256(f"{vendor}\x1f{contact_id}\x1f{prop}\x1f{value}".encode()).hexdigest()
    return f"{vendor}:sig:{digest[:32]}"


def signal_for(mapping: Mapping, prop: str) -> list[Signal]:
    return [s for s in mapping.signals if s.property == prop]


def event_from_signal(
    mapping: Mapping,
    signal: Signal,
    contact_id: str,
    value: str | None,
    observed_at: datetime,
    source: str,
) -> Event | None:
    """The event a new value of a signal property means, or None if it means nothing."""
    if value is None:
        return None
    value = str(value)
    if not signal.matches(value):
        return None
    occurred = parse_instant(value) if not signal.patterns else None
    if signal.patterns and len(value) > MAX_URL_CHARS:
        log.warning("%s of contact %s: %d characters; its event keeps the first %d as url",
                    signal.property, contact_id, len(value), MAX_URL_CHARS)  # fmt: skip
    return Event(
        event_id=signal_event_id(mapping.vendor, contact_id, signal.property, value),
        contact_id=contact_id,
        type=signal.event,
        occurred_at=occurred or observed_at,
        # The id keeps the whole value; the url only informs reports. A CRM field may hold far
        # more than a link (and than a queue message takes): refusing would lose the event.
        url=value[:MAX_URL_CHARS] if signal.patterns else None,
        source=source,
    )


def events_from_changes(
    mapping: Mapping,
    contact_id: str,
    values: MappingABC[str, str | None],
    last_seen: MappingABC[str, str],
    observed_at: datetime,
    source: str,
) -> tuple[list[Event], dict[str, str]]:
    """Events for the signal properties whose value moved since `last_seen`, and the values to
    remember now (keyed by property)."""
    events: list[Event] = []
    seen: dict[str, str] = {}
    for signal in mapping.signals:
        if signal.property not in values:
            continue  # absent means unknown, not cleared
        value = values[signal.property]
        if value is None or str(value) == last_seen.get(signal.property):
            continue
        seen[signal.property] = str(value)
        event = event_from_signal(mapping, signal, contact_id, value, observed_at, source)
        if event is not None:
            events.append(event)
    return events, seen


def seen_key(contact_id: str, prop: str) -> str:
    return f"seen:{contact_id}:{prop}"
