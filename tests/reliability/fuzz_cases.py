"""Fuzz cases for the webhook intake, shared by the pytest suite (bounded) and bench/fuzz.py
(>= 100K cases). Each case draws one request and says what the intake must answer:

- `reject`: forged, stale, tampered or wrongly signed: a 4xx, never accepted, never a 5xx;
- `no_5xx`: genuinely signed (or not signed by design, the Salesforce outbound message) but
  arbitrary content: 2xx or 4xx, never a 5xx (a client's mistake is the client's).

Every request goes through `connectors.intake.handle_webhook`, which must never raise.
"""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import strategies as st

from crm_elasticity.connectors.base import WebhookRequest
from crm_elasticity.connectors.hubspot import HubSpotConnector
from crm_elasticity.connectors.hubspot.config import HubSpotSettings, load_options
from crm_elasticity.connectors.hubspot.signature import (
    MAX_SKEW_MS,
    v1_signature,
    v2_signature,
    v3_signature,
)
from crm_elasticity.connectors.intake import handle_webhook
from crm_elasticity.connectors.salesforce import SalesforceConnector
from crm_elasticity.connectors.salesforce.api_facts import OUTBOUND_NS, SOAP_ENV_NS
from crm_elasticity.connectors.salesforce.config import credentials_from_env
from crm_elasticity.connectors.salesforce.signature import sign
from crm_elasticity.core.mapping import load_mapping

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
HS_SECRET = "hs-fuzz-secret-5b1e0c"
SF_SECRET = "sf-fuzz-secret-77aa01"
ORG_ID = "00D5g000001AbCd"
HOST = "hooks.fuzz.test"
HS_PATH, SF_PATH = "/webhooks/hubspot", "/webhooks/salesforce"
SF_EVENTS = "/webhooks/salesforce/events"
SF_OUTBOUND_TOKEN = "fuzz-outbound-token-0123456789abcdef"
SF_QUERY = f"token={SF_OUTBOUND_TOKEN}"  # what the Outbound Message endpoint URL carries


@dataclass
class Targets:
    hubspot: HubSpotConnector
    """Accepts v3 signatures only."""
    hubspot_legacy: HubSpotConnector
    """Accepts v1 and v2 too (workflow webhooks): the weaker signatures get fuzzed as well."""
    salesforce: SalesforceConnector
    recorded: int = 0

    def record(self, events) -> int:
        self.recorded += len(events)
        return len(events)


def build_targets() -> Targets:
    shipped = load_mapping(ROOT / "mappings" / "hubspot.yaml")
    settings = HubSpotSettings(access_token="pat-fuzz", client_secret=HS_SECRET)

    def accepting(*versions: str):
        options = {**shipped.options, "webhook_signatures": list(versions)}
        return shipped.model_copy(update={"options": options})

    hs_mapping, legacy_mapping = accepting("v3"), accepting("v1", "v2", "v3")
    sf_mapping = load_mapping(ROOT / "mappings" / "salesforce.yaml")
    sf_env = {
        "SALESFORCE_ACCESS_TOKEN": "00Dfuzz!token",
        "SALESFORCE_ORG_ID": ORG_ID,
        "SALESFORCE_INSTANCE_URL": "https://fuzz.my.salesforce.com",
        "SALESFORCE_WEBHOOK_SECRET": SF_SECRET,
        "SALESFORCE_OUTBOUND_TOKEN": SF_OUTBOUND_TOKEN,
    }
    return Targets(
        HubSpotConnector(hs_mapping, settings, load_options(hs_mapping)),
        HubSpotConnector(legacy_mapping, settings, load_options(legacy_mapping)),
        SalesforceConnector(sf_mapping, credentials_from_env(sf_env)),
    )


@dataclass
class Outcomes:
    counts: Counter = field(default_factory=Counter)
    tried: int = 0

    def add(self, case: str, status: int) -> None:
        self.tried += 1
        self.counts[(case, f"{status // 100}xx" if status not in (401, 403, 413) else status)] += 1


class Violation(AssertionError):
    pass


def check(
    targets: Targets, outcomes: Outcomes, case: str, connector, request: WebhookRequest, expect: str
) -> int:
    try:
        answer = handle_webhook(connector, request, targets.record)
    except Exception as exc:  # noqa: BLE001 - the point: report, with the input
        raise Violation(f"{case}: handle_webhook raised {exc!r} on {request!r}"[:2000]) from exc
    outcomes.add(case, answer.status)
    if answer.status >= 500:
        raise Violation(f"{case}: {answer.status} {answer.body[:300]!r} for {request!r}"[:2000])
    if expect == "reject" and not 400 <= answer.status < 500:
        raise Violation(
            f"{case}: a forged/stale request was answered {answer.status}: {request!r}"[:2000]
        )
    return answer.status


# ---- strategies -------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
SIGNAL_PROPS = (
    "hs_email_last_open_date",
    "hs_email_last_click_date",
    "hs_email_last_send_date",
    "hs_analytics_last_url",
    "hs_email_optout",
    "hs_email_hard_bounce_reason_enum",
    "email",
    "",
)
notification = st.fixed_dictionaries(
    {
        "subscriptionType": st.sampled_from(
            [
                "contact.propertyChange",
                "contact.creation",
                "object.propertyChange",
                "contact.deletion",
                "x",
            ]
        ),
        "objectId": st.one_of(
            st.integers(min_value=-5, max_value=2**64),
            st.text(max_size=8),
            st.none(),
            st.booleans(),
        ),
        "occurredAt": st.one_of(
            st.integers(min_value=-(2**63), max_value=2**63),
            st.floats(allow_nan=True),
            st.text(max_size=8),
            st.none(),
        ),
        "propertyName": st.sampled_from(SIGNAL_PROPS),
        "propertyValue": st.one_of(
            st.text(max_size=30),
            st.integers(),
            st.none(),
            st.booleans(),
            st.just("1772600000000"),
            st.just("https://x.test/pricing"),
        ),
    },
    optional={
        "objectTypeId": st.sampled_from(["0-1", "0-2", 1]),
        "eventId": st.integers(),
        "portalId": st.integers(),
        "subscriptionId": json_values,
    },
)


def _deep(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@st.composite
def bodies(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "notifications", "deep", "encoded", "workflow"]))
    if kind == "bytes":
        return draw(st.binary(max_size=600))
    if kind == "json":
        return json.dumps(draw(json_values), allow_nan=True).encode()
    if kind == "notifications":
        return json.dumps(draw(st.lists(notification, max_size=8))).encode()
    if kind == "deep":
        return _deep(
            draw(st.integers(min_value=1, max_value=200_000)),
            draw(st.sampled_from(["list", "dict"])),
        )
    if kind == "workflow":
        props = draw(
            st.dictionaries(
                st.sampled_from(SIGNAL_PROPS + ("hs_object_id", "vid")), scalars, max_size=6
            )
        )
        return json.dumps({"properties": props} if draw(st.booleans()) else props).encode()
    text = json.dumps(draw(st.lists(notification, max_size=3)))
    encoding = draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "utf-8-sig", "cp1252"]))
    return text.encode(encoding, errors="replace")


header_names = st.sampled_from(
    [
        "x-hubspot-signature-v3",
        "x-hubspot-request-timestamp",
        "x-hubspot-signature",
        "x-hubspot-signature-version",
        "x-elasticity-signature",
        "content-type",
        "host",
        "x-forwarded-host",
        "x-forwarded-proto",
        "content-length",
    ]
) | st.text(min_size=1, max_size=20)
headers = st.dictionaries(header_names, st.text(max_size=60), max_size=8)
skews_ok = st.integers(min_value=-MAX_SKEW_MS + 1000, max_value=MAX_SKEW_MS - 1000)
skews_stale = st.one_of(
    st.integers(min_value=MAX_SKEW_MS + 1, max_value=10**13),
    st.integers(min_value=-(10**13), max_value=-MAX_SKEW_MS - 1),
)


def _ms(at: datetime) -> int:
    return round(at.timestamp() * 1000)


def hs_request(body: bytes, extra: dict[str, str], method: str = "POST") -> WebhookRequest:
    sent = {"host": HOST, "content-type": "application/json", **extra}
    return WebhookRequest(method, HS_PATH, "", sent, body, NOW)


def hs_v3(body: bytes, skew_ms: int = 0, secret: str = HS_SECRET) -> dict[str, str]:
    ts = str(_ms(NOW) - skew_ms)
    uri = f"https://{HOST}{HS_PATH}"
    return {
        "x-hubspot-signature-v3": v3_signature(secret, "POST", uri, body, ts),
        "x-hubspot-request-timestamp": ts,
    }


# ---- cases: each draws a request and checks the answer -----------------------------------------

Case = Callable[[Targets, Outcomes, st.DataObject], None]


def hubspot_forged(t: Targets, o: Outcomes, data: st.DataObject) -> None:
    body = data.draw(bodies())
    extra = data.draw(headers)
    if data.draw(st.booleans()):  # a plausible-looking signature that is not HubSpot's
        sig = base64.b64encode(data.draw(st.binary(min_size=32, max_size=32))).decode()
        extra |= {
            "x-hubspot-signature-v3": sig,
            "x-hubspot-request-timestamp": str(_ms(NOW) - data.draw(skews_ok)),
        }
    connector = data.draw(st.sampled_from([t.hubspot, t.hubspot_legacy]))
    check(t, o, "hubspot_forged", connector, hs_request(body, extra), "reject")


def hubspot_signed(t: Targets, o: Outcomes, data: st.DataObject) -> None:
    body = data.draw(bodies())
    check(
        t,
        o,
        "hubspot_signed",
        t.hubspot,
        hs_request(body, hs_v3(body, data.draw(skews_ok))),
        "no_5xx",
    )


def hubspot_stale(t: Targets, o: Outcomes, data: st.DataObject) -> None:
    body = data.draw(bodies())
    check(
        t,
        o,
        "hubspot_stale",
        t.hubspot,
        hs_request(body, hs_v3(body, data.draw(skews_stale))),
        "reject",
    )


def hubspot_tampered(t: Targets, o: Outcomes, data: st.DataObject) -> None:
    body = data.draw(bodies())
    signed = hs_v3(body)
    how = data.draw(st.sampled_from(["body", "secret", "legacy", "method", "timestamp"]))
    request = hs_request(body, signed)
    if how == "body":
        extra = data.draw(st.binary(min_size=1, max_size=8))
        at = data.draw(st.integers(min_value=0, max_value=len(body)))
        request = hs_request(body[:at] + extra + body[at:], signed)
    elif how == "secret":
        wrong = data.draw(st.text(min_size=1, max_size=30).filter(lambda s: s != HS_SECRET))
        request = hs_request(body, hs_v3(body, secret=wrong))
    elif how == "legacy":  # a v1/v2 signature where only v3 is accepted
        version = data.draw(st.sampled_from(["v1", "v2"]))
        uri = f"https://{HOST}{HS_PATH}"
        sig = (
            v1_signature(HS_SECRET, body)
            if version == "v1"
            else v2_signature(HS_SECRET, "POST", uri, body)
        )
        request = hs_request(
            body, {"x-hubspot-signature": sig, "x-hubspot-signature-version": version}
        )
    elif how == "method":
        request = hs_request(body, signed, data.draw(st.sampled_from(["GET", "PUT", "DELETE"])))
    else:
        shifted = str(
            int(signed["x-hubspot-request-timestamp"])
            + data.draw(st.integers(min_value=1, max_value=10**6))
        )
        request = hs_request(body, {**signed, "x-hubspot-request-timestamp": shifted})
    check(t, o, f"hubspot_tampered_{how}", t.hubspot, request, "reject")


ENTITY_BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol0 "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10))
    + b"]><lolz>&lol9;</lolz>"
)
"""A billion laughs: 10^9 "lol"s if entities were expanded."""
EXTERNAL = (
    b'<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b"<foo>&xxe;</foo>"
)
PARAMETER = (
    b'<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY % ext SYSTEM "http://127.0.0.1:9/x">'
    b"%ext;]><foo/>"
)


def envelope(org: str, notes: list[tuple[str, dict[str, str]]], sobject: str = "Contact") -> bytes:
    items = "".join(
        f'<Notification><Id>04l{i:012d}</Id><sObject xsi:type="sf:{sobject}">'
        f"<sf:Id>003{i:012d}</sf:Id>"
        + "".join(f"<sf:{k}>{v}</sf:{k}>" for k, v in fields.items())
        + "</sObject></Notification>"
        for i, (_, fields) in enumerate(notes)
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAP_ENV_NS}"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        f'<notifications xmlns="{OUTBOUND_NS}" '
        'xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
        f"<OrganizationId>{org}</OrganizationId><ActionId>04k000000000001</ActionId>"
        f"{items}</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


SF_FIELDS = (
    "Email",
    "Last_Email_Open_Date__c",
    "Last_Email_Click_Date__c",
    "pi__url__c",
    "HasOptedOutOfEmail",
    "EmailBouncedReason",
    "Last_Email_Send_Date__c",
    "x",
)
xml_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="<&"), max_size=30
)


@st.composite
def xml_bodies(draw) -> bytes:
    kind = draw(
        st.sampled_from(
            ["bytes", "bomb", "external", "parameter", "envelope", "deep", "doctype_envelope"]
        )
    )
    if kind == "bytes":
        return draw(st.binary(max_size=600))
    if kind == "bomb":
        return ENTITY_BOMB
    if kind == "external":
        return EXTERNAL
    if kind == "parameter":
        return PARAMETER
    if kind == "deep":
        depth = draw(st.integers(min_value=1, max_value=100_000))
        return b"<a>" * depth + b"</a>" * depth
    fields = st.dictionaries(
        st.sampled_from(SF_FIELDS), xml_text | st.just("2026-03-02T09:15:00Z"), max_size=4
    )
    notes = draw(st.lists(st.tuples(st.just(""), fields), max_size=4))
    org = draw(
        st.sampled_from([ORG_ID, ORG_ID + "AAA", ""])
        | st.text(max_size=18).map(lambda s: s.replace("<", "").replace("&", ""))
    )
    body = envelope(org, notes)
    if kind == "doctype_envelope":
        body = body.replace(b"?>", b'?><!DOCTYPE x [<!ENTITY e "E">]>', 1)
    return body


def salesforce_outbound(t: Targets, o: Outcomes, data: st.DataObject) -> None:
    body = data.draw(xml_bodies())
    ctype = data.draw(
        st.sampled_from(["text/xml; charset=utf-8", "text/xml", "application/json", ""])
    )
    query = data.draw(
        st.sampled_from(
            [SF_QUERY, SF_QUERY, "", "token=", SF_QUERY + "x", f"{SF_QUERY}&{SF_QUERY}"]
        )
    )
    request = WebhookRequest("POST", SF_PATH, query, {"content-type": ctype}, body, NOW)
    forged = query != SF_QUERY or ORG_ID.encode() not in body or b"DOCTYPE" in body
    check(t, o, "salesforce_outbound", t.salesforce, request, "reject" if forged else "no_5xx")


def salesforce_events(t: Targets, o: Outcomes, data: st.DataObject) -> None:
    body = data.draw(bodies())
    how = data.draw(st.sampled_from(["signed", "forged", "stale", "wrong_secret", "tampered"]))
    stamp = int(NOW.timestamp()) - data.draw(st.integers(min_value=-290, max_value=290))
    if how == "stale":
        stamp = int(NOW.timestamp()) - data.draw(st.sampled_from([-1, 1])) * data.draw(
            st.integers(min_value=301, max_value=10**9)
        )
    secret = SF_SECRET if how != "wrong_secret" else SF_SECRET + "x"
    header = sign(secret, body, stamp)
    if how == "forged":
        header = data.draw(st.text(max_size=120))
    sent_body = body + b" " if how == "tampered" else body
    request = WebhookRequest(
        "POST",
        SF_EVENTS,
        "",
        {"content-type": "application/json", "x-elasticity-signature": header},
        sent_body,
        NOW,
    )
    check(
        t,
        o,
        f"salesforce_events_{how}",
        t.salesforce,
        request,
        "no_5xx" if how == "signed" else "reject",
    )


CASES: dict[str, Case] = {
    "hubspot_forged": hubspot_forged,
    "hubspot_signed": hubspot_signed,
    "hubspot_stale": hubspot_stale,
    "hubspot_tampered": hubspot_tampered,
    "salesforce_outbound": salesforce_outbound,
    "salesforce_events": salesforce_events,
}


def random_seed() -> int:
    return random.SystemRandom().randrange(2**32)


__all__ = ["CASES", "Outcomes", "Targets", "Violation", "build_targets", "check", "timedelta"]
