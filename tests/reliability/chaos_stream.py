"""The seeded engagement stream the chaos runs replay: HubSpot property changes per contact,
grouped into daily windows, turned into signed webhook deliveries.

The same seed gives the same stream; the fault-free and the chaotic run differ only in how the
deliveries reach the intake (duplicated, reordered, refused) and what breaks behind it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from crm_elasticity.connectors.base import WebhookRequest
from crm_elasticity.connectors.hubspot.signature import v3_signature

STREAM_START = datetime(2026, 1, 5, tzinfo=UTC)  # the generated stream's first day
HOST = "hooks.chaos.test"
PATH = "/webhooks/hubspot"
NOTIFICATIONS_PER_REQUEST = 100  # HubSpot's own batch limit
FIRST_CONTACT_ID = 10_001

# property, weight: what a newsletter audience does, sends dominating
KINDS: tuple[tuple[str, float], ...] = (
    ("hs_email_last_send_date", 0.55),
    ("hs_email_last_open_date", 0.27),
    ("hs_email_last_click_date", 0.10),
    ("hs_analytics_last_url", 0.05),
    ("hs_email_hard_bounce_reason_enum", 0.015),
    ("hs_email_optout", 0.015),
)
BOUNCE_REASONS = ("MAILBOX_FULL", "UNKNOWN_USER", "OTHER")


@dataclass(frozen=True)
class Change:
    """One property change HubSpot would report: the CRM's new value, at `at`."""

    seq: int
    contact_id: str
    prop: str
    value: str
    at: datetime

    def notification(self, portal: int = 4242) -> dict:
        return {
            "eventId": self.seq,
            "subscriptionId": 77,
            "portalId": portal,
            "appId": 99,
            "occurredAt": ms(self.at),
            "subscriptionType": "contact.propertyChange",
            "attemptNumber": 0,
            "objectId": int(self.contact_id),
            "propertyName": self.prop,
            "propertyValue": self.value,
            "changeSource": "EMAIL",
        }

    def crm_properties(self) -> dict[str, str]:
        props = {self.prop: self.value}
        if self.prop == "hs_analytics_last_url":
            props["hs_analytics_last_timestamp"] = str(ms(self.at))
        return props


def ms(at: datetime) -> int:
    return round(at.timestamp() * 1000)


def contact_ids(contacts: int) -> list[str]:
    return [str(FIRST_CONTACT_ID + i) for i in range(contacts)]


def generate(events: int, contacts: int, days: int, seed: int) -> list[list[Change]]:
    """`events` changes over `days` daily windows, each window in time order."""
    rng = random.Random(seed)
    ids = contact_ids(contacts)
    # Engagement is skewed: a few contacts do much more than the rest.
    weights = [1.0 / (1 + (i % 50)) ** 0.7 for i in range(contacts)]
    props, prop_weights = zip(*KINDS, strict=True)
    used: set[tuple[str, str, str]] = set()
    opted_out: set[str] = set()
    windows: list[list[Change]] = [[] for _ in range(days)]
    seq = 0
    while seq < events:
        cid = rng.choices(ids, weights)[0]
        prop = rng.choices(props, prop_weights)[0]
        day = rng.randrange(days)
        at = STREAM_START + timedelta(days=day, seconds=rng.randrange(1, 86_000))
        if prop == "hs_email_optout":
            if cid in opted_out:
                continue
            opted_out.add(cid)
            value = "true"
        elif prop == "hs_email_hard_bounce_reason_enum":
            value = rng.choice(BOUNCE_REASONS)
        elif prop == "hs_analytics_last_url":
            page = rng.choice(("/pricing", "/demo", "/contact-sales", "/blog/tips"))
            value = f"https://www.example.com{page}?visit={seq}"
        else:
            value = str(ms(at))
        if (cid, prop, value) in used:
            continue  # the same value again is no change: HubSpot would not report it
        used.add((cid, prop, value))
        seq += 1
        windows[day].append(Change(seq, cid, prop, value, at))
    for window in windows:
        window.sort(key=lambda c: (c.at, c.seq))
    return windows


def window_end(day: int) -> datetime:
    return STREAM_START + timedelta(days=day + 1)


def requests_for(changes: list[Change]) -> list[bytes]:
    """Bodies of up to 100 notifications each, in the order given."""
    return [
        json.dumps([c.notification() for c in changes[i : i + NOTIFICATIONS_PER_REQUEST]]).encode()
        for i in range(0, len(changes), NOTIFICATIONS_PER_REQUEST)
    ]


def signed_request(body: bytes, secret: str, sent_at: datetime) -> WebhookRequest:
    """A v3-signed delivery as HubSpot makes it; each (re)delivery is signed anew."""
    timestamp = str(ms(sent_at))
    uri = f"https://{HOST}{PATH}"
    headers = {
        "host": HOST,
        "content-type": "application/json",
        "x-hubspot-signature-v3": v3_signature(secret, "POST", uri, body, timestamp),
        "x-hubspot-request-timestamp": timestamp,
    }
    return WebhookRequest("POST", PATH, "", headers, body, sent_at + timedelta(seconds=1))
