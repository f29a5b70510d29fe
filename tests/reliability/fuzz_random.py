"""A fast seeded fuzzer for bench/fuzz.py's 100K+ cases: the same case classes and oracle as
the hypothesis cases (`fuzz_cases.check`), with inputs made by mutating genuine requests
(byte flips, splices, truncation, re-encoding, nesting, entity tricks) instead of by
hypothesis's search, which costs ~10 ms an input here."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from crm_elasticity.connectors.base import WebhookRequest
from crm_elasticity.connectors.salesforce.signature import sign
from tests.reliability import fuzz_cases as f

SEEDS_JSON = [
    [
        {
            "subscriptionType": "contact.propertyChange",
            "objectId": 101,
            "occurredAt": 1772625600000,
            "propertyName": "hs_email_last_open_date",
            "propertyValue": "1772625500000",
            "eventId": 1,
            "portalId": 7,
            "subscriptionId": 3,
        }
    ],
    [{"subscriptionType": "contact.creation", "objectId": "102", "occurredAt": 1772625600000}],
    {
        "properties": {
            "hs_object_id": {"value": "103"},
            "hs_analytics_last_url": "https://x/pricing",
        }
    },
    {"vid": 104, "hs_email_optout": True},
    {
        "events": [
            {
                "event_id": "e1",
                "contact_id": "c1",
                "type": "open",
                "occurred_at": "2026-03-04T11:00:00Z",
            }
        ]
    },
]
CAP = 1_200_000
"""Just past the intake's 1 MiB limit, so the 413 path is exercised too."""
WEIRD = [
    b"\x00",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b"NaN",
    b"1e999999",
    b"-0",
    b'"\\ud800"',
    b"{",
    b"]",
    b"null",
    b"[" * 3000,
    b'{"a":' * 3000,
    b"\\u0000",
    "é€😀".encode(),
    b"9" * 400,
]


def mutate(rng: random.Random, body: bytes) -> bytes:
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        at = rng.randint(0, len(body))
        if op == 0 and body:
            i = rng.randrange(len(body))
            body = body[:i] + bytes([rng.randrange(256)]) + body[i + 1 :]
        elif op == 1:
            body = body[:at] + rng.choice(WEIRD) + body[at:]
        elif op == 2:
            body = body[:at]
        elif op == 3:
            body = body * rng.randint(2, 50)
        elif op == 4:
            depth = rng.choice([10, 999, 1001, 5000, 100_000])
            body = b"[" * depth + body + b"]" * depth
        elif op == 5:
            encoding = rng.choice(["utf-16", "utf-32", "latin-1", "cp1252"])
            body = body.decode("utf-8", "replace").encode(encoding, "replace")
        else:
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        # Repetition compounds: keep inputs near the 1 MiB limit, not gigabytes of fuzzer.
        body = body[:CAP]
    return body


def json_seed(rng: random.Random) -> bytes:
    value = json.loads(json.dumps(rng.choice(SEEDS_JSON)))
    items = value if isinstance(value, list) else [value]
    for item in items:
        for key in list(item)[: rng.randint(0, len(item))]:
            item[key] = rng.choice(
                [
                    None,
                    True,
                    -1,
                    2**64,
                    1e308,
                    "",
                    "x" * 600,
                    [],
                    {},
                    "1" * 20,
                    253402300800000,
                    "2026-13-45",
                    item[key],
                ]
            )
    return json.dumps(value).encode()


def body(rng: random.Random) -> bytes:
    raw = json_seed(rng)
    return raw if rng.random() < 0.3 else mutate(rng, raw)


def hubspot_forged(rng, t, o) -> None:
    raw = body(rng)
    headers = {
        "x-hubspot-signature-v3": rng.choice(["", "AAAA", "=" * 44, "x" * 5000]),
        "x-hubspot-request-timestamp": rng.choice(["", "-1", "1e3", str(2**70), str(f._ms(f.NOW))]),
    }
    if rng.random() < 0.3:
        headers = {
            "x-hubspot-signature": "0" * 64,
            "x-hubspot-signature-version": rng.choice(["v1", "v2", "V3", "v9", ""]),
        }
    f.check(
        t,
        o,
        "hubspot_forged",
        rng.choice([t.hubspot, t.hubspot_legacy]),
        f.hs_request(raw, headers),
        "reject",
    )


def hubspot_signed(rng, t, o) -> None:
    raw = body(rng)
    f.check(
        t,
        o,
        "hubspot_signed",
        t.hubspot,
        f.hs_request(raw, f.hs_v3(raw, rng.randint(-290_000, 290_000))),
        "no_5xx",
    )


def hubspot_stale(rng, t, o) -> None:
    raw = body(rng)
    skew = rng.choice([-1, 1]) * rng.randint(300_001, 10**12)
    f.check(t, o, "hubspot_stale", t.hubspot, f.hs_request(raw, f.hs_v3(raw, skew)), "reject")


def hubspot_tampered(rng, t, o) -> None:
    raw = body(rng)
    signed = f.hs_v3(raw)
    tampered = mutate(rng, raw)
    if tampered == raw:
        tampered = raw + b" "
    f.check(t, o, "hubspot_tampered_body", t.hubspot, f.hs_request(tampered, signed), "reject")


def salesforce_outbound(rng, t, o) -> None:
    notes = [("", {"Last_Email_Open_Date__c": "2026-03-02T09:15:00Z", "Email": "a@b.c"})]
    raw = rng.choice(
        [
            f.envelope(f.ORG_ID, notes),
            f.envelope("00DWRONGORG0001", notes),
            f.ENTITY_BOMB,
            f.EXTERNAL,
            f.PARAMETER,
        ]
    )
    if rng.random() < 0.6:
        raw = mutate(rng, raw)
    request = WebhookRequest(
        "POST", f.SF_PATH, f.SF_QUERY, {"content-type": "text/xml"}, raw, f.NOW
    )
    forged = f.ORG_ID.encode() not in raw or b"DOCTYPE" in raw
    f.check(t, o, "salesforce_outbound", t.salesforce, request, "reject" if forged else "no_5xx")


def salesforce_events(rng, t, o) -> None:
    raw = body(rng)
    how = rng.choice(["signed", "forged", "stale", "tampered"])
    stamp = int(f.NOW.timestamp()) + (
        rng.choice([-1, 1]) * rng.randint(301, 10**9) if how == "stale" else rng.randint(-290, 290)
    )
    header = sign(f.SF_SECRET, raw, stamp)
    if how == "forged":
        header = rng.choice(["", "t=1,v1=00", header.replace("v1=", "v1=0"), "v1=" + "a" * 64])
    sent = raw + b" " if how == "tampered" else raw
    request = WebhookRequest(
        "POST", f.SF_EVENTS, "", {"x-elasticity-signature": header}, sent, f.NOW
    )
    f.check(
        t,
        o,
        f"salesforce_events_{how}",
        t.salesforce,
        request,
        "no_5xx" if how == "signed" else "reject",
    )


CASES: dict[str, Callable[[random.Random, f.Targets, f.Outcomes], None]] = {
    "hubspot_forged": hubspot_forged,
    "hubspot_signed": hubspot_signed,
    "hubspot_stale": hubspot_stale,
    "hubspot_tampered": hubspot_tampered,
    "salesforce_outbound": salesforce_outbound,
    "salesforce_events": salesforce_events,
}
