"""Signed HubSpot webhook requests, built with the production signing functions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from crm_elasticity.connectors.base import WebhookRequest
from crm_elasticity.connectors.hubspot.signature import v1_signature, v2_signature, v3_signature
from tests.hubspot.hubspot_helpers import SECRET

RECEIVED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOST = "hooks.example.com"
PATH = "/webhooks/hubspot"


def ms(at: datetime) -> int:
    return round(at.timestamp() * 1000)


def notification(kind: str = "contact.propertyChange", object_id: int = 101, **extra: Any) -> dict:
    base = {
        "eventId": 1,
        "subscriptionId": 25,
        "portalId": 62515,
        "appId": 54321,
        "occurredAt": ms(RECEIVED) - 1000,
        "subscriptionType": kind,
        "attemptNumber": 0,
        "objectId": object_id,
        "changeSource": "CRM",
    }
    return {**base, **extra}


def signed(
    payload: Any,
    *,
    version: str = "v3",
    secret: str = SECRET,
    timestamp: datetime | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    query: str = "",
    received_at: datetime = RECEIVED,
) -> WebhookRequest:
    raw = body if body is not None else json.dumps(payload).encode()
    uri = f"https://{HOST}{PATH}" + (f"?{query}" if query else "")
    sent = {"host": HOST, "content-type": "application/json"}
    if version == "v3":
        ts = str(ms(timestamp or received_at))
        sent["x-hubspot-signature-v3"] = v3_signature(secret, "POST", uri, raw, ts)
        sent["x-hubspot-request-timestamp"] = ts
    elif version == "v2":
        sent["x-hubspot-signature"] = v2_signature(secret, "POST", uri, raw)
        sent["x-hubspot-signature-version"] = "v2"
    elif version == "v1":
        sent["x-hubspot-signature"] = v1_signature(secret, raw)
        sent["x-hubspot-signature-version"] = "v1"
    sent.update(headers or {})
    return WebhookRequest("POST", PATH, query, sent, raw, received_at)
