"""Inputs the fuzzers found answered 500 (an unhandled parser exception) before their fixes:
each is a client's mistake and must be a 400."""

from __future__ import annotations

import json

import pytest

from crm_elasticity.connectors.base import WebhookRequest
from crm_elasticity.connectors.intake import handle_webhook
from crm_elasticity.connectors.salesforce.signature import sign
from tests.reliability import fuzz_cases as f


@pytest.fixture(scope="module")
def targets() -> f.Targets:
    return f.build_targets()


def _hubspot(targets: f.Targets, body: bytes) -> int:
    return handle_webhook(targets.hubspot, f.hs_request(body, f.hs_v3(body)), targets.record).status


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000 + b"]" * 5000,  # json.loads: RecursionError
        json.dumps(
            [
                {
                    "subscriptionType": "contact.creation",
                    "objectId": 1,
                    "occurredAt": 1,
                    "eventId": "x" * 600,
                }
            ]
        ).encode(),  # an event id past its 512-character limit
        json.dumps(
            [{"subscriptionType": "contact.creation", "objectId": "9" * 300, "occurredAt": 1}]
        ).encode(),  # a contact id past its limit
        json.dumps({"vid": 5, "hs_email_last_click_date": 253402300800000}).encode(),  # year 10000
    ],
)
def test_hubspot_bodies_that_once_crashed_the_parser_are_client_errors(
    targets: f.Targets, body: bytes
) -> None:
    assert _hubspot(targets, body) in (200, 400)


def test_a_deep_salesforce_json_body_is_a_400(targets: f.Targets) -> None:
    body = b"[" * 5000 + b"]" * 5000
    header = sign(f.SF_SECRET, body, int(f.NOW.timestamp()))
    request = WebhookRequest(
        "POST", f.SF_EVENTS, "", {"x-elasticity-signature": header}, body, f.NOW
    )
    assert handle_webhook(targets.salesforce, request, targets.record).status == 400


def test_an_outbound_message_in_an_unknown_encoding_is_a_400(targets: f.Targets) -> None:
    body = f.envelope(f.ORG_ID, []).replace(b"UTF-8", b"U-0TF-8")
    request = WebhookRequest(
        "POST", f.SF_PATH, f.SF_QUERY, {"content-type": "text/xml"}, body, f.NOW
    )
    assert handle_webhook(targets.salesforce, request, targets.record).status == 400
