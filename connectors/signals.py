"""Vendor property values -> canonical events, the same way on every path.

An event id names one occurrence. A date-valued signal (last open date, conversion date) holds
the occurrence's own time, so (contact, property, value) names it and a webhook, a workflow
snapshot and the poll agree. Any other value (a URL, an opt-out flag) may recur: its id also
names when the property took it (a webhook's change time), or, for a snapshot that does not say,
the delivery it came in; the pipeline then counts a snapshot only when the value differs from
the last one seen (`core.occurrences`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping as MappingABC
from datetime import datetime

from crm_elasticity.connectors.instants import parse_instant
from crm_elasticity.core.mapping import Mapping, Signal
from crm_elasticity.core.models import MAX_URL_CHARS, Event, Observation, iso_utc
from crm_elasticity.core.occurrences import LIFTING_EVENTS

log = logging.getLogger(__name__)

__all__ = ["event_from_signal", "events_from_changes", "signal_event_id", "signal_for"]


def signal_event_id(vendor: str, contact_id: str, prop: str, value: str, *occurrence: str) -> str:
    parts = "\x1f".join((vendor, contact_id, prop, value, *occurrence))
    return f"{vendor}:sig:{hashlib.sha256(parts.encode()).hexdigest()[:32]}"


def signal_for(mapping: Mapping, prop: str) -> list[Signal]:
    return [s for s in mapping.signals if s.property == prop]


def event_from_signal(
    mapping: Mapping,
    signal: Signal,
    contact_id: str,
    value: str | None,
    observed_at: datetime,
    source: str,
    changed_at: datetime | None = None,
    delivery: str | None = None,
) -> Event | None:
    """The event a value of a signal property means, or None if it means nothing.

    `changed_at` is when the vendor says the property took this value (a webhook's property
    change); `delivery` names the message a snapshot came in (an outbound notification id),
    so its redelivery keeps its id."""
    if value is None:
        return None
    value = str(value)
    if not signal.matches(value):
        return None
    prop = signal.property
    dated = parse_instant(value) if not signal.patterns and not signal.values else None
    if dated is not None:
        event_id = signal_event_id(mapping.vendor, contact_id, prop, value)
        occurred, changed = dated, dated
    elif changed_at is not None:
        event_id = signal_event_id(mapping.vendor, contact_id, prop, value, iso_utc(changed_at))
        occurred, changed = changed_at, changed_at
    else:
        seen_in = delivery or iso_utc(observed_at) or ""
        event_id = signal_event_id(mapping.vendor, contact_id, prop, value, seen_in)
        occurred, changed = observed_at, None
    if signal.patterns and len(value) > MAX_URL_CHARS:
        log.warning(
            "%s of contact %s: %d characters; its event keeps the first %d as url",
            signal.property,
            contact_id,
            len(value),
            MAX_URL_CHARS,
        )
    return Event(
        event_id=event_id,
        contact_id=contact_id,
        type=signal.event,
        occurred_at=occurred,
        # The id keeps the whole value; the url only informs reports. A CRM field may hold far
        # more than a link (and than a queue message takes): refusing would lose the event.
        url=value[:MAX_URL_CHARS] if signal.patterns else None,
        source=source,
        observed=Observation(property=prop, value=_comparable(value), changed_at=changed),
    )


def _comparable(value: str) -> str:
    """The value as the last-seen comparison keeps it: a value longer than a URL is kept as
    its digest (equal values still compare equal; the event stays small enough to queue)."""
    if len(value) <= MAX_URL_CHARS:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def events_from_changes(
    mapping: Mapping,
    contact_id: str,
    values: MappingABC[str, str | None],
    last_seen: MappingABC[str, str],
    observed_at: datetime,
    source: str,
    delivery: str | None = None,
    complete: bool = False,
) -> tuple[list[Event], dict[str, str]]:
    """Events for the signal properties whose value moved since `last_seen`, and the values
    seen now that made no event (keyed by property): the caller remembers those, the pipeline
    remembers the rest as it counts them. `complete`: `last_seen` holds everything seen so far
    (the poll), so a value seen for the first time lifts nothing (an opt-out already false)."""
    events: list[Event] = []
    quiet: dict[str, str] = {}
    for prop in dict.fromkeys(s.property for s in mapping.signals):
        if prop not in values:
            continue  # absent means unknown, not cleared
        value = values[prop]
        if value is None or str(value) == last_seen.get(prop):
            continue
        found = None
        for signal in signal_for(mapping, prop):
            if complete and prop not in last_seen and signal.event in LIFTING_EVENTS:
                continue
            found = event_from_signal(
                mapping, signal, contact_id, value, observed_at, source, delivery=delivery
            )
            if found is not None:
                events.append(found)
                break
        if found is None:
            quiet[prop] = str(value)
    return events, quiet
