from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from crm_elasticity.connectors.base import WebhookRejected
from crm_elasticity.connectors.hubspot.signature import (
    SignatureError,
    decode_uri,
    signed_uri,
    v1_signature,
    v2_signature,
    v3_signature,
    verify,
)
from tests.hubspot.hubspot_helpers import SECRET, make_connector, with_options
from tests.hubspot.webhook_helpers import RECEIVED, notification, signed

DOC_BODY = (
    b'[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,'
    b'"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,'
    b'"changeSource":"CRM","changeFlag":"NEW","appId":54321}]'
)


def test_signatures_match_hubspot_documented_vectors():
    uri = "https://www.example.com/webhook_uri"
    assert v1_signature(SECRET, DOC_BODY) == (
        "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de"
    )
    assert v2_signature(SECRET, "GET", uri, b"") == (
        "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e"
    )
    assert v2_signature(SECRET, "POST", uri, b'{"example_field":"example_value"}') == (
        "9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900"
    )
    assert v3_signature(SECRET, "POST", uri, DOC_BODY, "1564113600000") == (
        "DxmVAjFNa2xfF3YgQjdZP6TNcok9k1oaH7UXombPtvw="
    )


def test_uri_decoding_follows_hubspots_table_only():
    assert decode_uri("https://x.io/a%3Ab%2Fc%40d%21%24%27%28%29%2A%2C%3B%3F") == (
        "https://x.io/a:b/c@d!$'()*,;?"
    )
    assert decode_uri("https://x.io/a%20b%3ab") == "https://x.io/a%20b:b"  # %20 stays encoded


def test_signed_uri_rebuilt_from_forwarded_headers_and_overridden_by_public_url():
    headers = {"host": "internal:8080", "x-forwarded-proto": "https", "x-forwarded-host": "h.io"}
    assert signed_uri("/webhooks/hubspot", "a=1", headers) == "https://h.io/webhooks/hubspot?a=1"
    assert signed_uri("/webhooks/hubspot", "", {"host": "h.io"}) == "https://h.io/webhooks/hubspot"
    assert signed_uri("/webhooks/hubspot", "", headers, "https://pub.io/prod") == (
        "https://pub.io/prod/webhooks/hubspot"
    )
    assert signed_uri("/webhooks/hubspot", "", headers, "https://pub.io/webhooks/hubspot") == (
        "https://pub.io/webhooks/hubspot"
    )


@pytest.fixture
def hook(fake, mapping, clock):
    return make_connector(fake, mapping, clock)


def _reject(connector, request) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as caught:
        connector.parse_webhook(request)
    return caught.value


def test_valid_v3_signature_is_accepted(hook):
    intake = hook.parse_webhook(signed([notification("contact.creation")]))
    assert [e.type for e in intake.events] == ["enroll"]


def test_query_string_is_part_of_the_signed_uri(hook):
    assert hook.parse_webhook(signed([notification("contact.creation")], query="portal=1"))
    request = signed([notification("contact.creation")], query="portal=1")
    assert _reject(hook, replace(request, query="portal=2")).status == 401


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered body", "does not match"),
        ("wrong secret", "does not match"),
        ("stale timestamp", "more than 5 minutes old"),
        ("future timestamp", "in the future"),
        ("missing signature", "missing signature header"),
        ("missing timestamp", "missing X-HubSpot-Request-Timestamp"),
        ("wrong host", "does not match"),
    ],
)
def test_bad_v3_requests_are_rejected_with_401(hook, case, reason):
    payload = [notification("contact.creation")]
    request = signed(payload)
    if case == "tampered body":
        request = replace(request, body=request.body.replace(b"101", b"102"))
    elif case == "wrong secret":
        request = signed(payload, secret="not-the-secret")
    elif case == "stale timestamp":
        request = signed(payload, timestamp=RECEIVED - timedelta(minutes=5, seconds=1))
    elif case == "future timestamp":
        request = signed(payload, timestamp=RECEIVED + timedelta(minutes=5, seconds=1))
    elif case == "missing signature":
        headers = {k: v for k, v in request.headers.items() if "signature" not in k}
        request = replace(request, headers=headers)
    elif case == "missing timestamp":
        headers = {k: v for k, v in request.headers.items() if "timestamp" not in k}
        request = replace(request, headers=headers)
    elif case == "wrong host":
        request = replace(request, headers={**request.headers, "host": "evil.example.com"})
    rejected = _reject(hook, request)
    assert rejected.status == 401
    assert reason in rejected.reason
    assert SECRET not in rejected.reason


def test_timestamps_just_inside_the_window_pass_both_ways(hook):
    for skew in (timedelta(minutes=4, seconds=59), -timedelta(minutes=4, seconds=59)):
        assert hook.parse_webhook(
            signed([notification("contact.creation")], timestamp=RECEIVED + skew)
        ).events


def test_v2_and_v1_only_when_the_mapping_allows_them(fake, mapping, clock):
    body = {"hs_object_id": "101", "hs_email_last_open_date": "1772366400000"}
    strict = make_connector(fake, with_options(mapping, webhook_signatures=["v3"]), clock)
    assert "not accepted" in _reject(strict, signed(body, version="v2")).reason
    relaxed = make_connector(
        fake, with_options(mapping, webhook_signatures=["v3", "v2", "v1"]), clock
    )
    assert [e.type for e in relaxed.parse_webhook(signed(body, version="v2")).events] == ["open"]
    assert relaxed.parse_webhook(signed([notification("contact.creation")], version="v1")).events
    tampered = signed(body, version="v2", body=b'{"hs_object_id": "102"}')
    tampered = replace(tampered, headers=signed(body, version="v2").headers)
    assert _reject(relaxed, tampered).status == 401


def test_a_failed_v3_never_falls_back_to_v1(fake, mapping, clock):
    connector = make_connector(fake, with_options(mapping, webhook_signatures=["v3", "v1"]), clock)
    payload = [notification("contact.creation")]
    good_v1 = signed(payload, version="v1").headers
    bad_v3 = signed(payload, secret="wrong").headers
    request = replace(signed(payload), headers={**good_v1, **bad_v3})
    assert "v3 signature does not match" in _reject(connector, request).reason


def test_public_url_override_is_what_gets_verified(fake, mapping, clock):
    connector = make_connector(fake, mapping, clock, public_url="https://hooks.example.com")
    request = signed([notification("contact.creation")])
    behind_proxy = replace(request, headers={**request.headers, "host": "10.0.0.5:8080"})
    assert connector.parse_webhook(behind_proxy).events


def test_no_client_secret_is_a_503_not_a_bad_request(fake, mapping, clock):
    connector = make_connector(fake, mapping, clock, client_secret=None)
    rejected = _reject(connector, signed([notification("contact.creation")]))
    assert rejected.status == 503
    assert "HUBSPOT_CLIENT_SECRET" in rejected.reason


def test_verify_reports_which_version_verified():
    request = signed([notification("contact.creation")])
    version = verify(
        secret=SECRET,
        method="POST",
        uri="https://hooks.example.com/webhooks/hubspot",
        body=request.body,
        headers=request.headers,
        now=RECEIVED,
        accepted=["v3"],
    )
    assert version == "v3"
    with pytest.raises(SignatureError):
        verify(
            secret=SECRET,
            method="POST",
            uri="https://hooks.example.com/other",
            body=request.body,
            headers=request.headers,
            now=RECEIVED,
            accepted=["v3"],
        )
