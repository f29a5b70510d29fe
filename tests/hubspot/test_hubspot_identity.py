"""One count per occurrence: a redelivery counts once, a new occurrence of the same value counts
again, and one occurrence seen by a webhook and by the poll counts once."""

from __future__ import annotations

from datetime import timedelta

from crm_elasticity.connectors.runner import Runner
from crm_elasticity.core.models import Status
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.hubspot.webhook_helpers import RECEIVED, ms, notification, signed

PRICING = "https://www.acme.example/pricing"


def change(contact: int, prop: str, value: str, at, event_id: int) -> dict:
    return notification(
        objectId=contact,
        propertyName=prop,
        propertyValue=value,
        occurredAt=ms(at),
        eventId=event_id,
    )


def deliver(connector, runner: Runner, *items: dict, received=RECEIVED) -> None:
    runner.process(connector.parse_webhook(signed(list(items), received_at=received)).events)


def runner_at(connector, store: SQLiteStore, at) -> Runner:
    return Runner(connector, store, clock=lambda: at)


def test_a_second_visit_to_pricing_weeks_later_counts_again(fake, provisioned):
    cid = fake.add_contact({"email": "a@example.com"})
    store = SQLiteStore(":memory:")
    first = RECEIVED - timedelta(days=40)
    deliver(
        provisioned,
        runner_at(provisioned, store, RECEIVED),
        change(int(cid), "hs_analytics_last_url", PRICING, first, 1),
        received=RECEIVED,
    )
    assert store.get_contacts([cid])[cid].engagement_score == 15
    # HubSpot retries the same notification: one occurrence.
    deliver(
        provisioned,
        runner_at(provisioned, store, RECEIVED),
        change(int(cid), "hs_analytics_last_url", PRICING, first, 1),
    )
    assert store.get_contacts([cid])[cid].engagement_score == 15
    # Weeks later the same page again: a new occurrence.
    later = RECEIVED + timedelta(days=20)
    deliver(
        provisioned,
        runner_at(provisioned, store, later),
        change(int(cid), "hs_analytics_last_url", PRICING, later, 2),
        received=later,
    )
    state = store.get_contacts([cid])[cid]
    assert state.engagement_score > 15
    assert state.last_engagement_date == later.replace(microsecond=later.microsecond // 1000 * 1000)


def test_unsubscribe_resubscribe_unsubscribe_ends_suppressed(fake, provisioned):
    cid = fake.add_contact({"email": "b@example.com"})
    store = SQLiteStore(":memory:")
    runner = runner_at(provisioned, store, RECEIVED)
    t1 = RECEIVED - timedelta(days=3)
    deliver(provisioned, runner, change(int(cid), "hs_email_optout", "true", t1, 1))
    assert store.get_contacts([cid])[cid].campaign_status is Status.SUPPRESSED
    deliver(
        provisioned, runner, change(int(cid), "hs_email_optout", "false", t1 + timedelta(days=1), 2)
    )
    assert store.get_contacts([cid])[cid].campaign_status is Status.ACTIVE
    deliver(
        provisioned, runner, change(int(cid), "hs_email_optout", "true", t1 + timedelta(days=2), 3)
    )
    state = store.get_contacts([cid])[cid]
    assert state.campaign_status is Status.SUPPRESSED
    assert state.suppression_reason.value == "unsubscribe"


def test_a_visit_seen_by_the_webhook_and_then_by_the_poll_counts_once(fake, provisioned):
    cid = fake.add_contact({"email": "c@example.com"})
    store = SQLiteStore(":memory:")
    at = RECEIVED - timedelta(minutes=5)
    runner = runner_at(provisioned, store, RECEIVED)
    deliver(provisioned, runner, change(int(cid), "hs_analytics_last_url", PRICING, at, 1))
    fake.set_contact(cid, {"hs_analytics_last_url": PRICING})
    runner.sync(RECEIVED + timedelta(minutes=1))
    assert store.get_contacts([cid])[cid].engagement_score == 15


def test_a_form_submission_counts_with_its_own_points_once_per_conversion(fake, provisioned):
    cid = fake.add_contact({"email": "d@example.com"})
    store = SQLiteStore(":memory:")
    runner = runner_at(provisioned, store, RECEIVED)
    first = RECEIVED - timedelta(days=2)
    fake.set_contact(cid, {"recent_conversion_date": str(ms(first))})
    runner.sync(RECEIVED)
    state = store.get_contacts([cid])[cid]
    assert state.engagement_score == provisioned.mapping.policy.points["form_submit"]
    runner.sync(RECEIVED + timedelta(hours=1))  # the same conversion again: counted already
    assert store.get_contacts([cid])[cid].engagement_score == state.engagement_score
    second = RECEIVED + timedelta(hours=2)
    fake.set_contact(cid, {"recent_conversion_date": str(ms(second))})
    runner_at(provisioned, store, second).sync(second + timedelta(minutes=1))
    assert store.get_contacts([cid])[cid].engagement_score > state.engagement_score


def test_a_visit_polled_first_and_then_delivered_by_a_late_webhook_counts_once(fake, provisioned):
    cid = fake.add_contact({"email": "e@example.com"})
    store = SQLiteStore(":memory:")
    at = RECEIVED - timedelta(minutes=30)
    fake.set_contact(cid, {"hs_analytics_last_url": PRICING})
    runner = runner_at(provisioned, store, RECEIVED)
    runner.sync(RECEIVED)
    assert store.get_contacts([cid])[cid].engagement_score == 15
    deliver(provisioned, runner, change(int(cid), "hs_analytics_last_url", PRICING, at, 7))
    assert store.get_contacts([cid])[cid].engagement_score == 15
