"""Outbound-message and signed JSON intake, through the shared `handle_webhook`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from crm_elasticity.connectors.base import WebhookRequest
from crm_elasticity.connectors.intake import handle_webhook
from crm_elasticity.connectors.salesforce import SalesforceConnector
from crm_elasticity.connectors.salesforce.api_facts import OUTBOUND_ACK
from crm_elasticity.connectors.salesforce.outbound import same_org
from crm_elasticity.connectors.salesforce.signature import sign
from crm_elasticity.core.mapping import Mapping
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.store import StoreError
from tests.salesforce.sf_helpers import FIXTURES, OUTBOUND_QUERY, SECRET, build, envelope_of

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
XML = {"content-type": "text/xml; charset=utf-8"}


def post(
    path: str, body: bytes, headers: dict[str, str], at: datetime = NOW, query: str | None = None
) -> WebhookRequest:
    """A request as it arrives; an Outbound Message carries the configured token unless
    `query` says otherwise."""
    if query is None:
        query = OUTBOUND_QUERY if path == "/webhooks/salesforce" else ""
    return WebhookRequest("POST", path, query, headers, body, at)


def outbound(name: str = "contact_notifications.xml", **headers: str) -> WebhookRequest:
    return post("/webhooks/salesforce", (FIXTURES / name).read_bytes(), {**XML, **headers})


def test_contact_notifications_become_events_and_get_the_exact_ack(
    connector: SalesforceConnector,
) -> None:
    store = SQLiteStore(":memory:")
    answer = handle_webhook(connector, outbound(), store.inbox_put)
    assert answer.status == 200
    assert answer.body == OUTBOUND_ACK
    assert b"<notificationsResponse" in answer.body
    assert b"<Ack>true</Ack>" in answer.body
    assert answer.content_type.startswith("text/xml")
    events = store.inbox_take(100)
    kinds = sorted((e.contact_id[-6:], e.type) for e in events)
    assert kinds == [
        ("101AAA", "click"),
        ("101AAA", "high_intent_visit"),
        ("101AAA", "open"),
        ("101AAA", "resubscribe"),  # opt-out false: the pipeline counts it only as a change
        ("102AAA", "send"),
        ("102AAA", "unsubscribe"),
        ("103AAA", "hard_bounce"),
        ("103AAA", "resubscribe"),
    ]
    opened = next(e for e in events if e.type == "open")
    assert opened.occurred_at == datetime(2026, 3, 2, 9, 15, tzinfo=UTC)
    # a blog visit is not high intent; the deleted record (no fields) produced nothing
    assert answer.ignored == 1


def test_redelivery_counts_once(connector: SalesforceConnector) -> None:
    store = SQLiteStore(":memory:")
    first = handle_webhook(connector, outbound(), store.inbox_put)
    body = (FIXTURES / "contact_notifications.xml").read_bytes()
    later = post("/webhooks/salesforce", body, XML, at=NOW + timedelta(hours=2))
    again = handle_webhook(connector, later, store.inbox_put)
    assert (first.recorded, again.recorded) == (8, 0)
    assert again.body == OUTBOUND_ACK  # acknowledged, so Salesforce stops retrying


def test_no_ack_when_the_store_cannot_record(connector: SalesforceConnector) -> None:
    def broken(events):  # noqa: ANN001
        raise StoreError("disk full")

    answer = handle_webhook(connector, outbound(), broken)
    assert answer.status == 503
    assert b"<Ack>" not in answer.body


def test_ack_only_after_the_events_are_in_the_store(connector: SalesforceConnector) -> None:
    store = SQLiteStore(":memory:")
    seen_at_record: list[int] = []

    def record(events):  # noqa: ANN001
        new = store.inbox_put(events)
        seen_at_record.append(len(store.inbox_take(100)))
        return new

    answer = handle_webhook(connector, outbound(), record)
    assert seen_at_record == [8]
    assert answer.body == OUTBOUND_ACK


def test_lead_notifications_for_a_lead_program(mapping: Mapping, env: dict[str, str], fake) -> None:  # noqa: ANN001
    lead = build(mapping.model_copy(update={"object": "Lead"}), env, fake)
    intake = lead.parse_webhook(outbound("lead_notifications.xml"))
    assert sorted((e.contact_id, e.type) for e in intake.events) == [
        ("00Q000000000201AAA", "high_intent_visit"),
        ("00Q000000000201AAA", "open"),
        ("00Q000000000202AAA", "click"),
    ]


def test_lead_notifications_are_ignored_by_a_contact_program(
    connector: SalesforceConnector,
) -> None:
    intake = connector.parse_webhook(outbound("lead_notifications.xml"))
    assert intake.events == []
    assert intake.ignored == 2
    assert intake.response.body == OUTBOUND_ACK


@pytest.mark.parametrize(
    ("body", "headers", "status", "fault"),
    [
        ((FIXTURES / "malformed.xml").read_bytes(), XML, 400, "malformed XML"),
        ((FIXTURES / "entity_expansion.xml").read_bytes(), XML, 400, "malformed XML"),
        (b'{"not": "xml"}', XML, 400, "malformed XML"),
        (b"<a/>", XML, 400, "not an outbound message"),
        (
            (FIXTURES / "contact_notifications.xml").read_bytes(),
            {"content-type": "application/json"},
            415,
            "expected Content-Type text/xml",
        ),
        (
            (FIXTURES / "contact_notifications.xml")
            .read_bytes()
            .replace(b"00D5g000004ABCD", b"00D5g000009WXYZ"),
            XML,
            403,
            "OrganizationId does not match",
        ),
    ],
    ids=[
        "malformed",
        "entity-expansion",
        "json-body",
        "no-notifications",
        "content-type",
        "wrong-org",
    ],
)
def test_rejections_are_soap_faults_and_record_nothing(
    connector: SalesforceConnector, body: bytes, headers: dict, status: int, fault: str
) -> None:
    store = SQLiteStore(":memory:")
    answer = handle_webhook(connector, post("/webhooks/salesforce", body, headers), store.inbox_put)
    assert answer.status == status
    assert answer.content_type == "text/xml"
    assert b"<soapenv:Fault>" in answer.body
    assert fault.encode() in answer.body
    assert b"<Ack>" not in answer.body
    assert store.inbox_take(10) == []


def test_without_an_org_id_configured_nothing_is_accepted(
    mapping: Mapping, env: dict[str, str], fake
) -> None:  # noqa: ANN001
    env = {k: v for k, v in env.items() if k != "SALESFORCE_ORG_ID"}
    answer = handle_webhook(
        build(mapping, env, fake), outbound(), SQLiteStore(":memory:").inbox_put
    )
    assert answer.status == 403


@pytest.mark.parametrize(
    ("expected", "given", "same"),
    [
        ("00D5g000004ABCD", "00D5g000004ABCDEAA", True),
        ("00D5g000004ABCDEAA", "00D5g000004ABCD", True),
        ("00D5g000004ABCD", "00D5g000004abcdEAA", False),
        ("00D5g000004ABCD", "00D5g", False),
    ],
    ids=["15-vs-18", "18-vs-15", "case-matters", "truncated"],
)
def test_org_ids_compare_on_15_characters(expected: str, given: str, same: bool) -> None:
    assert same_org(expected, given) is same


def test_100_notifications_in_one_message_all_become_events(
    connector: SalesforceConnector,
) -> None:
    """Its parse time is measured by bench/webhook_parse.py (no wall clock in tests)."""
    intake = connector.parse_webhook(post("/webhooks/salesforce", envelope_of(100), XML))
    assert len(intake.events) == 300  # open, click, opt-out state
    assert len({e.contact_id for e in intake.events}) == 100


# ---- signed JSON intake ----------------------------------------------------------------------


def events_body(**overrides: object) -> bytes:
    event = {
        "event_id": "mc-1",
        "contact_id": "003000000000101AAA",
        "type": "open",
        "occurred_at": "2026-03-04T11:59:00Z",
        "campaign": "spring",
    }
    event.update(overrides)
    return json.dumps({"events": [event]}).encode()


def signed(body: bytes, at: datetime = NOW, secret: str = SECRET) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-elasticity-signature": sign(secret, body, int(at.timestamp())),
    }


def test_signed_events_are_accepted(connector: SalesforceConnector) -> None:
    store = SQLiteStore(":memory:")
    body = events_body()
    answer = handle_webhook(
        connector, post("/webhooks/salesforce/events", body, signed(body)), store.inbox_put
    )
    assert answer.status == 200
    assert json.loads(answer.body) == {"received": 1, "new": 1, "ignored": 0}
    (event,) = store.inbox_take(10)
    assert (event.event_id, event.type, event.source) == ("mc-1", "open", "salesforce_json")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing X-Elasticity-Signature"),
        ({"x-elasticity-signature": "sha256=abc"}, "malformed"),
        ("wrong-secret", "does not match"),
        ("tampered", "does not match"),
        (NOW - timedelta(minutes=6), "outside the 300s window"),
        (NOW + timedelta(minutes=6), "outside the 300s window"),
    ],
    ids=["missing", "malformed", "wrong-secret", "tampered-body", "stale", "future"],
)
def test_bad_signatures_are_refused(
    connector: SalesforceConnector, headers: object, reason: str
) -> None:
    body = events_body()
    if headers == "wrong-secret":
        headers = signed(body, secret="not-the-secret")
    elif headers == "tampered":
        headers = signed(body)
        body = events_body(type="click")
    elif isinstance(headers, datetime):
        headers = signed(body, at=headers)
    store = SQLiteStore(":memory:")
    answer = handle_webhook(
        connector, post("/webhooks/salesforce/events", body, headers), store.inbox_put
    )
    assert answer.status == 401
    assert reason in json.loads(answer.body)["error"]
    assert store.inbox_take(10) == []


def test_a_rotated_secret_can_be_sent_alongside(connector: SalesforceConnector) -> None:
    body = events_body()
    stamp = int(NOW.timestamp())
    old = sign("old-secret", body, stamp).split(",")[1]
    header = f"{sign(SECRET, body, stamp)},{old}"
    intake = connector.parse_webhook(
        post("/webhooks/salesforce/events", body, {"x-elasticity-signature": header})
    )
    assert len(intake.events) == 1


def test_an_invalid_event_rejects_the_batch_naming_it(connector: SalesforceConnector) -> None:
    body = events_body(occurred_at="2026-03-04T11:59:00")  # no timezone
    answer = handle_webhook(
        connector,
        post("/webhooks/salesforce/events", body, signed(body)),
        SQLiteStore(":memory:").inbox_put,
    )
    assert answer.status == 400
    assert "events[0].occurred_at" in json.loads(answer.body)["error"]


def test_a_key_beyond_the_event_format_is_refused_naming_it(
    connector: SalesforceConnector,
) -> None:
    """The signed JSON intake holds its sender to the canonical format (README); only
    `replay`, which reads exports, ignores extra keys."""
    body = events_body(region="EU")
    answer = handle_webhook(
        connector,
        post("/webhooks/salesforce/events", body, signed(body)),
        SQLiteStore(":memory:").inbox_put,
    )
    assert answer.status == 400
    assert "events[0].region" in json.loads(answer.body)["error"]


def test_json_intake_without_a_configured_secret_is_refused(
    mapping: Mapping, env: dict[str, str], fake
) -> None:  # noqa: ANN001
    env = {k: v for k, v in env.items() if k != "SALESFORCE_WEBHOOK_SECRET"}
    body = events_body()
    answer = handle_webhook(
        build(mapping, env, fake),
        post("/webhooks/salesforce/events", body, signed(body)),
        SQLiteStore(":memory:").inbox_put,
    )
    assert answer.status == 403


def test_outbound_message_over_the_local_server(connector: SalesforceConnector) -> None:
    import threading
    import urllib.request

    from crm_elasticity.connectors.runner import Runner
    from crm_elasticity.connectors.server import build_server

    runner = Runner(connector, SQLiteStore(":memory:"), clock=lambda: NOW)
    server, _ = build_server([runner], port=0, worker=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/webhooks/salesforce?{OUTBOUND_QUERY}",
            data=(FIXTURES / "contact_notifications.xml").read_bytes(),
            headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            assert response.status == 200
            assert response.read() == OUTBOUND_ACK
    finally:
        server.shutdown()
        server.server_close()
    assert len(runner.store.inbox_take(100)) == 8


@pytest.mark.parametrize(
    "query",
    [
        "",
        "token=",
        "token=outbound-token-0123456789-abcdefghiX",
        f"{OUTBOUND_QUERY}&{OUTBOUND_QUERY}",
    ],
    ids=["no-token", "empty", "wrong", "repeated"],
)
def test_a_message_without_the_right_token_is_refused_even_with_the_org_id(
    connector: SalesforceConnector, query: str
) -> None:
    """The org id is public (web-to-lead forms publish it): it alone proves nothing."""
    store = SQLiteStore(":memory:")
    body = (FIXTURES / "contact_notifications.xml").read_bytes()
    answer = handle_webhook(
        connector, post("/webhooks/salesforce", body, XML, query=query), store.inbox_put
    )
    assert answer.status == 401
    assert b"<soapenv:Fault>" in answer.body
    assert b"<Ack>" not in answer.body
    assert store.inbox_take(10) == []


def test_the_token_is_compared_in_constant_time(
    connector: SalesforceConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmac

    from crm_elasticity.connectors.salesforce import outbound as outbound_module

    compared: list[bytes] = []
    real = hmac.compare_digest

    def spy(a, b):  # noqa: ANN001, ANN202
        compared.append(a)
        return real(a, b)

    monkeypatch.setattr(outbound_module.hmac, "compare_digest", spy)
    connector.parse_webhook(outbound())
    assert OUTBOUND_QUERY.removeprefix("token=").encode() in compared


def test_without_a_token_configured_every_message_is_refused_and_said_once(
    mapping: Mapping,
    env: dict[str, str],
    fake,
    caplog: pytest.LogCaptureFixture,  # noqa: ANN001
) -> None:
    env = {k: v for k, v in env.items() if k != "SALESFORCE_OUTBOUND_TOKEN"}
    connector = build(mapping, env, fake)  # builds: sync and the JSON intake still work
    store = SQLiteStore(":memory:")
    with caplog.at_level("WARNING", logger="crm_elasticity.connectors.salesforce.connector"):
        answers = [handle_webhook(connector, outbound(), store.inbox_put) for _ in range(3)]
    assert {a.status for a in answers} == {403}
    assert all(b"<Ack>" not in a.body for a in answers)
    assert store.inbox_take(10) == []
    said = [r for r in caplog.records if "SALESFORCE_OUTBOUND_TOKEN" in r.getMessage()]
    assert len(said) == 1


def test_over_the_local_server_a_forged_message_gets_no_ack_and_the_token_is_not_logged(
    connector: SalesforceConnector, caplog: pytest.LogCaptureFixture
) -> None:
    import threading
    import urllib.error
    import urllib.request

    from crm_elasticity.connectors.runner import Runner
    from crm_elasticity.connectors.server import build_server

    runner = Runner(connector, SQLiteStore(":memory:"), clock=lambda: NOW)
    server, _ = build_server([runner], port=0, worker=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    body = (FIXTURES / "contact_notifications.xml").read_bytes()
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
    base = f"http://127.0.0.1:{server.server_address[1]}/webhooks/salesforce"
    try:
        forged = urllib.request.Request(base, data=body, headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(forged, timeout=5)  # noqa: S310 - loopback
        assert refused.value.code == 401
        assert b"<Ack>" not in refused.value.read()
        assert runner.store.inbox_take(100) == []
        with caplog.at_level("INFO", logger="crm_elasticity.connectors.server"):
            url = f"{base}?{OUTBOUND_QUERY}"
            tokened = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310
            with urllib.request.urlopen(tokened, timeout=5) as response:  # noqa: S310 - loopback
                assert response.read() == OUTBOUND_ACK
    finally:
        server.shutdown()
        server.server_close()
    assert len(runner.store.inbox_take(100)) == 8
    assert OUTBOUND_QUERY not in caplog.text
