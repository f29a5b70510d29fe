"""HubSpot webhook bodies -> canonical events.

Two shapes arrive at `/webhooks/hubspot`:
- the Webhooks API: a JSON array of at most 100 notifications (`contact.propertyChange`,
  `contact.creation`, ...), v3-signed;
- a workflow "Send a webhook" action: one JSON object holding the contact's properties
  (object-API shape, legacy `{"value": ...}` shape, or a flat custom body), v2-signed.

Signal property values become events through `connectors.signals`, so an open reported by a
webhook, a workflow and the scheduled poll has one event id and counts once; a property change
notification also names when the value was set, so the same value set again counts again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from crm_elasticity.connectors.base import WebhookRejected
from crm_elasticity.connectors.hubspot.config import HubSpotOptions
from crm_elasticity.connectors.hubspot.values import normalize_signal
from crm_elasticity.connectors.signals import event_from_signal, events_from_changes, signal_for
from crm_elasticity.core.mapping import Mapping
from crm_elasticity.core.models import Event, instant_problem

log = logging.getLogger(__name__)

MAX_EVENTS = 100
CONTACT_OBJECT_TYPE = "0-1"
PROPERTY_CHANGE = {"contact.propertyChange", "object.propertyChange"}
CREATION = {"contact.creation", "object.creation"}


@dataclass
class Parsed:
    events: list[Event] = field(default_factory=list)
    ignored: int = 0
    impossible: list[str] = field(default_factory=list)
    """Notifications left out because their time is no real instant (`[index]: why`)."""


def _bad(reason: str) -> WebhookRejected:
    return WebhookRejected(400, reason)


class _ImpossibleInstant(Exception):  # noqa: N818 - names what the notification holds
    """One notification's time is no real event time. HubSpot retries a refused batch as a
    whole and then drops it, so this leaves that notification out rather than refuse the
    batch: the other notifications of the delivery must not be lost with it."""


def parse_body(
    body: bytes, mapping: Mapping, options: HubSpotOptions, received_at: datetime
) -> Parsed:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(f"body is not JSON: {exc}") from None
    except RecursionError:
        # json.loads recurses per nesting level: a deep body is the sender's fault, not a 500.
        raise _bad("body is not JSON we accept: nested too deeply") from None
    try:
        if isinstance(payload, list):
            return parse_notifications(payload, mapping)
        if isinstance(payload, dict):
            return parse_workflow(payload, mapping, options, received_at)
    except ValidationError as exc:
        # Ids and values past the event's limits (e.g. a 600-character id): the sender's fault.
        problem = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in problem["loc"]) or "event"
        raise _bad(f"not a valid event: {where}: {problem['msg']}") from None
    raise _bad("expected a JSON array of notifications or a workflow's contact object")


def parse_notifications(items: list[Any], mapping: Mapping) -> Parsed:
    if len(items) > MAX_EVENTS:
        raise _bad(f"{len(items)} notifications in one request; HubSpot sends at most {MAX_EVENTS}")
    parsed = Parsed()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _bad(f"[{index}]: expected a notification object")
        kind = item.get("subscriptionType") or item.get("eventType")
        if not isinstance(kind, str):
            raise _bad(f"[{index}]: subscriptionType is missing")
        object_type = item.get("objectTypeId")
        if kind.startswith("object.") and str(object_type) != CONTACT_OBJECT_TYPE:
            parsed.ignored += 1
            continue
        try:
            if kind in PROPERTY_CHANGE:
                event = _property_change(item, index, mapping)
            elif kind in CREATION:
                event = _creation(item, index)
            else:
                event = None  # merges, deletions, associations: not program events
        except _ImpossibleInstant as exc:
            parsed.impossible.append(str(exc))
            continue
        if event is None:
            parsed.ignored += 1
        else:
            parsed.events.append(event)
    if parsed.impossible:
        if not parsed.events:
            raise _bad("; ".join(parsed.impossible[:5]))
        log.warning(
            "left out %d notification(s) with impossible times: %s",
            len(parsed.impossible),
            "; ".join(parsed.impossible[:5]),
        )
        parsed.ignored += len(parsed.impossible)
    return parsed


def _contact_id(item: dict, index: int) -> str:
    value = item.get("objectId")
    if isinstance(value, bool) or not isinstance(value, int | str) or str(value).strip() == "":
        raise _bad(f"[{index}]: objectId is missing or not an id")
    return str(value).strip()


def _occurred_at(item: dict, index: int) -> datetime:
    value = item.get("occurredAt")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"[{index}]: occurredAt is missing or not epoch milliseconds")
    try:
        at = datetime.fromtimestamp(value / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise _ImpossibleInstant(f"[{index}]: occurredAt {value!r} is out of range") from None
    problem = instant_problem(at)
    if problem:
        raise _ImpossibleInstant(f"[{index}]: occurredAt {problem}")
    return at


def _property_change(item: dict, index: int, mapping: Mapping) -> Event | None:
    contact_id = _contact_id(item, index)
    occurred = _occurred_at(item, index)
    prop = item.get("propertyName")
    if not isinstance(prop, str):
        raise _bad(f"[{index}]: propertyName is missing on a property change")
    value = item.get("propertyValue")
    for signal in signal_for(mapping, prop):
        # occurredAt is when the property changed: it names this occurrence of the value.
        event = event_from_signal(
            mapping,
            signal,
            contact_id,
            normalize_signal(signal, value),
            occurred,
            "hubspot:webhook",
            changed_at=occurred,
        )
        if event is not None:
            return event
    return None


def _creation(item: dict, index: int) -> Event:
    contact_id = _contact_id(item, index)
    occurred = _occurred_at(item, index)
    # HubSpot says eventId alone is not unique: key on everything that identifies the delivery.
    parts = [
        item.get("portalId"),
        item.get("subscriptionId"),
        item.get("eventId"),
        contact_id,
        "creation",
        item.get("occurredAt"),
    ]
    event_id = "hubspot:evt:" + ":".join("" if p is None else str(p) for p in parts)
    return Event(
        event_id=event_id,
        contact_id=contact_id,
        type="enroll",
        occurred_at=occurred,
        source="hubspot:webhook",
    )


def parse_workflow(
    payload: dict, mapping: Mapping, options: HubSpotOptions, received_at: datetime
) -> Parsed:
    properties = workflow_properties(payload)
    contact_id = next(
        (
            str(payload.get(k) or properties.get(k))
            for k in options.workflow_id_properties
            if payload.get(k) or properties.get(k)
        ),
        None,
    )
    if contact_id is None:
        wanted = ", ".join(options.workflow_id_properties)
        raise _bad(f"workflow body names no contact: expected one of {wanted}")
    signals = {
        s.property: normalize_signal(s, properties.get(s.property))
        for s in mapping.signals
        if s.property in properties
    }
    events, _ = events_from_changes(
        mapping, contact_id, signals, {}, received_at, "hubspot:workflow"
    )
    ignored = 0 if events else 1
    return Parsed(events, ignored)


def workflow_properties(payload: dict) -> dict[str, str | None]:
    """Flatten `{"properties": {...}}` (object API), `{"properties": {"x": {"value": ..}}}`
    (legacy contact JSON) or a flat custom body into name -> string value."""
    raw = payload.get("properties")
    source = raw if isinstance(raw, dict) else payload
    flat: dict[str, str | None] = {}
    for name, value in source.items():
        if isinstance(value, dict):
            value = value.get("value")
        if isinstance(value, list | dict):
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        flat[str(name)] = None if value is None or value == "" else str(value)
    return flat
