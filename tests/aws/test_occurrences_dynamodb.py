"""On DynamoDB an event claim expires (90 days): a value the CRM keeps resending must still count
once. Salesforce outbound messages carry every selected field's current value each time any
of them changes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from crm_elasticity.connectors.salesforce.outbound import (
    Envelope,
    Notification,
    events_from_envelope,
)
from crm_elasticity.core.dynamodb_store import DynamoDBStore
from crm_elasticity.core.mapping import load_mapping
from crm_elasticity.core.models import Status
from crm_elasticity.core.pipeline import Pipeline
from tests.helpers import T0

CONTACT = "003000000000777AAA"
STAMP = "%Y-%m-%dT%H:%M:%S.000Z"
OPENED = (T0 - timedelta(minutes=30)).strftime(STAMP)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> Iterator[DynamoDBStore]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="eu-west-1")
        table = DynamoDBStore("state", client=client, clock=clock)
        table.create_table()
        yield table


def outbound(note_id: str, at: datetime, **fields: str) -> list:
    mapping = load_mapping("mappings/salesforce.yaml")
    envelope = Envelope(
        "00D000000000001",
        "04k000000000001",
        [Notification(note_id, "Contact", CONTACT, dict(fields))],
    )
    return events_from_envelope(envelope, mapping, "Contact", at).events


def opens_of(store: DynamoDBStore) -> list:
    ledger = store.ledger_for(CONTACT)
    return [d for d in ledger if d.rule == "engagement" and d.event_type == "open"]


def test_a_resent_value_does_not_count_again_after_its_claim_expired(store, clock):
    pipeline = Pipeline(store, load_mapping("mappings/salesforce.yaml").policy)
    pipeline.process(outbound("04l001", T0, Last_Email_Open_Date__c=OPENED))
    assert store.get_contacts([CONTACT])[CONTACT].engagement_score == 5
    # 200 days on, a send stamps another field and the message resends the old open date.
    clock.now = later = T0 + timedelta(days=200)
    pipeline.process(
        outbound(
            "04l002",
            later,
            Last_Email_Open_Date__c=OPENED,
            Last_Email_Send_Date__c=later.strftime(STAMP),
        )
    )
    # ... and Salesforce redelivers the first message too.
    pipeline.process(outbound("04l001", later, Last_Email_Open_Date__c=OPENED))
    state = store.get_contacts([CONTACT])[CONTACT]
    opens = opens_of(store)
    assert len(opens) == 1
    assert state.campaign_status is not Status.REACTIVATED
    # A new open is a new value: it counts.
    pipeline.process(outbound("04l003", later, Last_Email_Open_Date__c="2026-07-24T10:00:00.000Z"))
    opens = opens_of(store)
    assert len(opens) == 2


def test_opt_out_resent_unchanged_does_not_suppress_again_after_a_resubscribe(store, clock):
    pipeline = Pipeline(store, load_mapping("mappings/salesforce.yaml").policy)
    pipeline.process(outbound("04l010", T0, HasOptedOutOfEmail="true"))
    assert store.get_contacts([CONTACT])[CONTACT].campaign_status is Status.SUPPRESSED
    clock.now = T0 + timedelta(days=1)
    pipeline.process(outbound("04l011", clock.now, HasOptedOutOfEmail="false"))
    assert store.get_contacts([CONTACT])[CONTACT].campaign_status is Status.ACTIVE
    clock.now = T0 + timedelta(days=2)
    pipeline.process(outbound("04l012", clock.now, HasOptedOutOfEmail="false"))
    assert store.get_contacts([CONTACT])[CONTACT].campaign_status is Status.ACTIVE
    clock.now = T0 + timedelta(days=3)
    pipeline.process(outbound("04l013", clock.now, HasOptedOutOfEmail="true"))
    assert store.get_contacts([CONTACT])[CONTACT].campaign_status is Status.SUPPRESSED


def test_the_lambda_worker_does_not_recount_a_value_after_its_claim_expired(
    stack, monkeypatch: pytest.MonkeyPatch
):
    """Through the webhook function, SQS and the worker, with the worker's store on a clock
    that moves past the 90-day claim expiry."""
    import json

    from crm_elasticity.connectors.aws import handlers
    from tests.aws.harness import SECRET, FakeContext, api_event

    clock = Clock()
    made = DynamoDBStore.from_env.__func__  # the classmethod's function, to wrap it

    def on_our_clock(cls, env=None):  # noqa: ANN001, ANN202 - mirrors from_env
        store = made(cls, env)
        store.clock = clock
        return store

    monkeypatch.setattr(DynamoDBStore, "from_env", classmethod(on_our_clock))
    handlers.reset_container()
    stack.crm.values["c9"] = {}
    opened = T0 - timedelta(hours=1)

    def post(event_id: str) -> None:
        body = [
            {
                "event_id": event_id,
                "contact_id": "c9",
                "type": "open",
                "occurred_at": opened.isoformat(),
                "observed": {
                    "property": "last_open_date",
                    "value": opened.isoformat(),
                    "changed_at": opened.isoformat(),
                },
            }
        ]
        request = api_event("/webhooks/memory", json.dumps(body), {"x-memory-secret": SECRET})
        assert handlers.webhook(request, FakeContext())["statusCode"] == 202
        stack.poller.drain()

    post("note-1")
    clock.now = T0 + timedelta(days=200)
    post("note-1")  # redelivered after its claim expired
    post("note-2")  # resent in another message
    opens = [d for d in stack.store.ledger_for("c9") if d.rule == "engagement"]
    assert len(opens) == 1
