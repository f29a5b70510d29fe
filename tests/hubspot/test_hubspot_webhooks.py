from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from crm_elasticity.connectors.base import WebhookRejected
from crm_elasticity.connectors.intake import handle_webhook
from crm_elasticity.connectors.signals import signal_event_id
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.hubspot.hubspot_helpers import make_connector, with_options
from tests.hubspot.webhook_helpers import ms, notification, signed

OPEN_AT = datetime(2026, 3, 1, 11, 30, tzinfo=UTC)


def change(prop: str, value, object_id: int = 101, **extra) -> dict:
    return notification(propertyName=prop, propertyValue=value, object_id=object_id, **extra)


@pytest.mark.parametrize(
    ("prop", "value", "expected"),
    [
        ("hs_email_last_open_date", str(ms(OPEN_AT)), "open"),
        ("hs_email_last_click_date", str(ms(OPEN_AT)), "click"),
        ("hs_email_last_send_date", str(ms(OPEN_AT)), "send"),
        ("hs_analytics_last_url", "https://acme.io/pricing?plan=pro", "high_intent_visit"),
        ("hs_analytics_last_url", "https://acme.io/blog/post", None),
        ("hs_email_optout", "true", "unsubscribe"),
        ("hs_email_optout", "false", "resubscribe"),
        ("hs_email_hard_bounce_reason_enum", "UNKNOWN_USER", "hard_bounce"),
        ("elastic_campaign_status", "dormant", None),  # our own write echoing back
        ("lifecyclestage", "lead", None),
    ],
)
def test_every_mapped_signal_becomes_its_event(connector, prop, value, expected):
    intake = connector.parse_webhook(signed([change(prop, value)]))
    assert [e.type for e in intake.events] == ([expected] if expected else [])
    assert intake.ignored == (0 if expected else 1)
    if expected:
        (event,) = intake.events
        assert event.contact_id == "101"
        assert event.occurred_at.tzinfo is not None


def test_date_signal_event_happens_when_the_property_says_not_when_notified(connector):
    (event,) = connector.parse_webhook(
        signed([change("hs_email_last_open_date", str(ms(OPEN_AT)))])
    ).events
    assert event.occurred_at == OPEN_AT


def test_high_intent_visit_keeps_the_url(connector):
    (event,) = connector.parse_webhook(
        signed([change("hs_analytics_last_url", "https://acme.io/demo")])
    ).events
    assert event.url == "https://acme.io/demo"


def test_creation_enrolls_with_a_composite_event_id(connector):
    first = notification("contact.creation", eventId=7, object_id=5)
    same_event_id_other_contact = notification("contact.creation", eventId=7, object_id=6)
    events = connector.parse_webhook(signed([first, same_event_id_other_contact])).events
    assert [e.type for e in events] == ["enroll", "enroll"]
    assert events[0].event_id != events[1].event_id  # eventId alone is not unique
    redelivered = connector.parse_webhook(signed([{**first, "attemptNumber": 1}])).events
    assert redelivered[0].event_id == events[0].event_id


def test_unknown_subscription_types_are_ignored_and_counted(connector):
    batch = [
        notification("contact.deletion"),
        notification("contact.merge"),
        notification("company.creation"),
        notification("contact.creation"),
        {
            **notification("object.propertyChange", objectTypeId="0-2"),
            "propertyName": "hs_email_last_open_date",
            "propertyValue": "1",
        },
    ]
    intake = connector.parse_webhook(signed(batch))
    assert [e.type for e in intake.events] == ["enroll"]
    assert intake.ignored == 4


def test_generic_object_webhooks_for_contacts_are_understood(connector):
    item = {
        **notification("object.propertyChange", objectTypeId="0-1"),
        "propertyName": "hs_email_last_click_date",
        "propertyValue": str(ms(OPEN_AT)),
    }
    assert [e.type for e in connector.parse_webhook(signed([item])).events] == ["click"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b'"a string"', "expected a JSON array"),
        (json.dumps([1]).encode(), "[0]: expected a notification object"),
        (json.dumps([{"objectId": 1}]).encode(), "[0]: subscriptionType is missing"),
        (json.dumps([notification("contact.creation", objectId=None)]).encode(), "objectId"),
        (
            json.dumps([notification("contact.creation", occurredAt="yesterday")]).encode(),
            "occurredAt",
        ),
        (json.dumps([notification() for _ in range(101)]).encode(), "at most 100"),
        (json.dumps({"firstname": "Ann"}).encode(), "names no contact"),
    ],
)
def test_malformed_bodies_are_400_with_a_reason(connector, body, reason):
    with pytest.raises(WebhookRejected) as caught:
        connector.parse_webhook(signed(None, body=body))
    assert caught.value.status == 400
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    "body",
    [
        {"vid": 101, "properties": {"hs_email_last_open_date": {"value": str(ms(OPEN_AT))}}},
        {"id": "101", "properties": {"hs_email_last_open_date": "2026-03-01T11:30:00.000Z"}},
        {"hs_object_id": "101", "hs_email_last_open_date": str(ms(OPEN_AT))},
    ],
    ids=["legacy-contact-json", "object-api", "custom-flat-body"],
)
def test_workflow_webhook_bodies_give_the_same_event_as_the_webhook_and_poll(
    fake, mapping, clock, body
):
    connector = make_connector(fake, with_options(mapping, webhook_signatures=["v3", "v2"]), clock)
    (event,) = connector.parse_webhook(signed(body, version="v2")).events
    (via_webhook,) = connector.parse_webhook(
        signed([change("hs_email_last_open_date", str(ms(OPEN_AT)))])
    ).events
    assert event.type == "open"
    assert event.event_id == via_webhook.event_id
    # The poll sees the ISO spelling from search; normalised to the same id.
    assert event.event_id == signal_event_id(
        "hubspot", "101", "hs_email_last_open_date", str(ms(OPEN_AT))
    )


def test_redeliveries_are_recorded_once_through_the_store(connector):
    store = SQLiteStore(":memory:")
    batch = [
        change("hs_email_last_open_date", str(ms(OPEN_AT))),
        notification("contact.creation", object_id=102),
    ]
    first = handle_webhook(connector, signed(batch), store.inbox_put)
    again = handle_webhook(
        connector, signed([{**n, "attemptNumber": 1} for n in batch]), store.inbox_put
    )
    assert (first.status, first.recorded) == (200, 2)
    assert (again.status, again.recorded) == (200, 0)
    assert len(store.inbox_take(10)) == 2


def test_a_full_batch_of_100_is_verified_and_parsed(connector):
    """Its parse time is measured by bench/webhook_parse.py (no wall clock in tests)."""
    batch = [
        change("hs_email_last_open_date", str(ms(OPEN_AT) + i), object_id=1000 + i)
        for i in range(100)
    ]
    intake = connector.parse_webhook(signed(batch))
    assert len(intake.events) == 100
    assert len({e.contact_id for e in intake.events}) == 100


def test_a_notification_with_an_impossible_time_cannot_sink_its_batch(connector):
    """HubSpot retries a refused delivery as a whole, then drops it: the good notifications
    beside an impossible one are recorded, the impossible one is left out and counted."""
    store = SQLiteStore(":memory:")
    year_9999 = ms(datetime(9999, 12, 30, tzinfo=UTC))
    batch = [
        change("hs_email_last_open_date", str(ms(OPEN_AT))),
        notification("contact.creation", object_id=102, occurredAt=year_9999),
        notification("contact.creation", object_id=103, occurredAt=10**20),
    ]
    answer = handle_webhook(connector, signed(batch), store.inbox_put)
    assert (answer.status, answer.recorded, answer.ignored) == (200, 1, 2)
    assert [e.contact_id for e in store.inbox_take(10)] == ["101"]
    alone = handle_webhook(connector, signed(batch[1:]), store.inbox_put)
    assert alone.status == 400 and b"outside the accepted range" in alone.body
