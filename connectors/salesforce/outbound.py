"""Outbound-message intake: a SOAP envelope of up to 100 notifications, each carrying a
record's *current* field values (absent = not sent, so unknown; a deleted record has none).

Parsed with defusedxml (no DTDs, no entity expansion, no external entities). Redeliveries
and a later SOQL catch-up give the same event ids (connectors.signals), so each engagement
counts once however often Salesforce retries.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qs
from xml.etree.ElementTree import Element  # noqa: S405 - type only; parsing uses defusedxml

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from crm_elasticity.connectors.base import WebhookRejected
from crm_elasticity.connectors.salesforce.api_facts import (
    ORG_ID_SHORT,
    OUTBOUND_NS,
    SOAP_ENV_NS,
    XSI_NS,
)
from crm_elasticity.connectors.salesforce.records import signal_text
from crm_elasticity.connectors.signals import events_from_changes
from crm_elasticity.core.mapping import Mapping
from crm_elasticity.core.models import Event

TOKEN_PARAM = "token"  # noqa: S105 - the query parameter's name, not a secret
_O = f"{{{OUTBOUND_NS}}}"
_XSI_TYPE = f"{{{XSI_NS}}}type"
_XSI_NIL = f"{{{XSI_NS}}}nil"


def soap_fault(message: str, code: str = "soapenv:Client") -> bytes:
    text = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV_NS}"><soapenv:Body><soapenv:Fault>'
        f"<faultcode>{code}</faultcode><faultstring>{text}</faultstring><detail/>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>\n"
    ).encode()


def reject(status: int, message: str) -> WebhookRejected:
    return WebhookRejected(status, message, body=soap_fault(message), content_type="text/xml")


def token_matches(query: str, expected: str) -> bool:
    """The endpoint URL's `token` parameter equals `expected` (constant-time compare; a
    missing, empty or repeated parameter never matches)."""
    given = parse_qs(query, keep_blank_values=True).get(TOKEN_PARAM, [])
    if len(given) != 1:
        return False
    return hmac.compare_digest(given[0].encode(), expected.encode())


def same_org(expected: str, given: str) -> bool:
    """Org ids come as 15 or 18 characters; the first 15 are the id (case-sensitive)."""
    a, b = expected.strip()[:ORG_ID_SHORT], given.strip()[:ORG_ID_SHORT]
    return len(b) == ORG_ID_SHORT and hmac.compare_digest(a.encode(), b.encode())


@dataclass
class Notification:
    notification_id: str
    sobject_type: str
    record_id: str | None
    fields: dict[str, str | None] = field(default_factory=dict)


@dataclass
class Envelope:
    organization_id: str
    action_id: str
    notifications: list[Notification]


def parse_envelope(body: bytes) -> Envelope:
    try:
        root = fromstring(body, forbid_dtd=True)
    except (ParseError, DefusedXmlException, LookupError) as exc:
        # LookupError: the XML declaration names an encoding Python does not know.
        raise reject(400, f"malformed XML: {type(exc).__name__}") from None
    container = root.find(f"{{{SOAP_ENV_NS}}}Body/{_O}notifications")
    if container is None:
        raise reject(400, "not an outbound message: no soapenv:Body/notifications element")
    org = (container.findtext(f"{_O}OrganizationId") or "").strip()
    action = (container.findtext(f"{_O}ActionId") or "").strip()
    notes = [_notification(n) for n in container.findall(f"{_O}Notification")]
    return Envelope(org, action, notes)


def _notification(node: Element) -> Notification:
    note_id = (node.findtext(f"{_O}Id") or "").strip()
    sobject = node.find(f"{_O}sObject")
    if sobject is None:
        return Notification(note_id, "", None)
    kind = (sobject.get(_XSI_TYPE) or "").split(":")[-1]
    values: dict[str, str | None] = {}
    for child in sobject:
        name = child.tag.rsplit("}", 1)[-1]
        values[name] = None if child.get(_XSI_NIL) == "true" else (child.text or "")
    record_id = values.pop("Id", None)
    return Notification(note_id, kind, record_id, values)


@dataclass
class OutboundIntake:
    events: list[Event]
    ignored: int


def events_from_envelope(
    envelope: Envelope, mapping: Mapping, sobject: str, received_at: datetime
) -> OutboundIntake:
    """Canonical events for the notifications about the program's object. Every signal value
    present is turned into its (stable-id) event; the store drops the ones already seen."""
    events: list[Event] = []
    ignored = 0
    for note in envelope.notifications:
        if note.sobject_type != sobject or not note.record_id or not note.fields:
            ignored += 1  # another object, or a record deleted before delivery
            continue
        values = {name: signal_text(value) for name, value in note.fields.items()}
        # The notification id names the delivery: Salesforce redelivers it unchanged.
        found, _ = events_from_changes(
            mapping,
            note.record_id,
            values,
            {},
            received_at,
            "salesforce_outbound_message",
            delivery=note.notification_id or None,
        )
        events += found
        if not found:
            ignored += 1
    return OutboundIntake(events, ignored)
