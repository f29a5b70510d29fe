"""The deployed path against poison events and SQS's size limits: an impossible instant or an
oversized field is refused at the webhook (400), never queued where SQS would refuse it on
every retry; the worker dead-letters a message no release can read and applies the rest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from crm_elasticity.connectors.aws import handlers
from crm_elasticity.connectors.aws.queue import (
    MAX_MESSAGE_BYTES,
    WorkQueue,
    message_entry,
    send_batches,
)
from crm_elasticity.connectors.signals import event_from_signal
from crm_elasticity.core.mapping import load_mapping
from crm_elasticity.core.models import MAX_LABEL_CHARS, MAX_URL_CHARS, Event
from crm_elasticity.core.store import StoreError
from tests.aws.harness import REGION, SECRET, FakeContext, SqsWithLimits, Stack, api_event, receive

NOW = datetime.now(UTC).replace(microsecond=0)


def canonical(eid: str, cid: str, **fields: Any) -> dict[str, Any]:
    at = (NOW - timedelta(hours=1)).isoformat()
    return {"event_id": eid, "contact_id": cid, "type": "open", "occurred_at": at, **fields}


def post(events: list[dict]) -> dict:
    event = api_event("/webhooks/memory", json.dumps(events), {"x-memory-secret": SECRET})
    return handlers.webhook(event, FakeContext())


def test_a_webhook_event_dated_near_9999_is_answered_400_and_not_queued(stack: Stack) -> None:
    answer = post([canonical("e1", "c1"), canonical("e2", "c2", occurred_at="9999-12-30T00:00Z")])
    assert answer["statusCode"] == 400
    assert "outside the accepted range" in answer["body"]
    assert stack.queued() == 0


def test_a_queued_year_9999_event_goes_to_the_dlq_and_the_rest_are_applied(stack: Stack) -> None:
    """A message an older release queued, which no worker of this one can read."""
    old = {"vendor": "memory", "event": canonical("old", "c1", occurred_at="9999-12-30T00:00Z")}
    stack.sqs.send_message(
        QueueUrl=stack.queue_url,
        MessageBody=json.dumps(old),
        MessageGroupId="memory:c1",
        MessageDeduplicationId="old",
    )
    post([canonical("e1", "c1"), canonical("e2", "c2")])
    first = stack.poller.deliver()
    assert first is not None and len(first.messages) == 3
    assert first.failed_ids == []
    assert sorted(stack.store.get_contacts(["c1", "c2"])) == ["c1", "c2"]
    assert [
        json.loads(m["Body"])["event"]["event_id"] for m in receive(stack.sqs, stack.dlq_url)
    ] == ["old"]


@pytest.mark.parametrize(
    ("field", "size"),
    [
        ("url", 300_000),
        ("url", MAX_URL_CHARS + 1),
        ("campaign", MAX_LABEL_CHARS + 1),
        ("variant", 100_000),
        ("source", 100_000),
        ("contact_id", 100_000),
    ],
)
def test_an_oversized_field_is_refused_at_the_webhook_not_by_the_queue(
    stack: Stack, field: str, size: int
) -> None:
    answer = post([canonical("e1", "c1"), canonical("e2", "c2", **{field: "x" * size})])
    assert answer["statusCode"] == 400, answer["body"]
    assert field in answer["body"] and len(answer["body"]) < 1000
    assert stack.queued() == 0


def test_events_at_every_field_limit_are_queued_within_sqs_limits(stack: Stack) -> None:
    # Control characters are the worst case: JSON writes each as six bytes.
    worst = "\x01"
    events = [
        canonical(
            f"{i:03d}" + worst * 508,
            f"c{i}" + worst * 250,
            url=worst * MAX_URL_CHARS,
            campaign=worst * MAX_LABEL_CHARS,
            variant=worst * MAX_LABEL_CHARS,
            source=worst * MAX_LABEL_CHARS,
        )
        for i in range(25)
    ]
    answer = post(events)
    assert answer["statusCode"] == 202, answer["body"]
    assert stack.queued() == 25
    stack.poller.drain()
    assert stack.queued() == 0 and stack.queued(stack.dlq_url) == 0


def test_batches_are_sized_by_bytes_as_well_as_by_count() -> None:
    def entry(i: int, size: int) -> dict[str, Any]:
        return {"Id": str(i), "MessageBody": "x" * size}

    big = [entry(i, 100_000) for i in range(5)]
    assert [len(b) for b in send_batches(big)] == [2, 2, 1]
    small = [entry(i, 10) for i in range(23)]
    assert [len(b) for b in send_batches(small)] == [10, 10, 3]
    assert [len(b) for b in send_batches([entry(0, MAX_MESSAGE_BYTES)] * 2)] == [1, 1]
    with pytest.raises(StoreError, match="does not fit a queue message"):
        send_batches([entry(0, MAX_MESSAGE_BYTES + 1)])


def test_the_queue_stand_in_refuses_what_sqs_refuses(stack: Stack) -> None:
    from botocore.exceptions import ClientError

    sqs = SqsWithLimits(boto3.client("sqs", region_name=REGION))

    def body(size: int) -> dict[str, Any]:
        return {"MessageBody": "x" * size, "MessageGroupId": "g"}

    url = stack.queue_url
    with pytest.raises(ClientError, match="TooManyEntriesInBatchRequest"):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "MessageDeduplicationId": str(i), **body(1)} for i in range(11)
            ],
        )
    with pytest.raises(ClientError, match="BatchRequestTooLong"):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "MessageDeduplicationId": str(i), **body(150_000)} for i in range(2)
            ],
        )
    with pytest.raises(ClientError, match="InvalidParameterValue"):
        sqs.send_message(QueueUrl=url, MessageDeduplicationId="big", **body(MAX_MESSAGE_BYTES + 1))
    assert stack.queued() == 0


def test_a_work_queue_sends_large_events_in_calls_sqs_accepts(stack: Stack) -> None:
    sqs = SqsWithLimits(boto3.client("sqs", region_name=REGION))
    queue = WorkQueue("crm-elasticity-test-work.fifo", sqs, queue_url=stack.queue_url)
    at = NOW - timedelta(hours=1)
    events = [
        Event(
            event_id=f"e{i}",
            contact_id="c1",
            type="open",
            occurred_at=at,
            url="https://acme.io/" + "\x01" * (MAX_URL_CHARS - 16),
        )
        for i in range(30)
    ]
    assert queue.send("memory", events) == 30
    assert all(len(sizes) <= 10 and sum(sizes) <= MAX_MESSAGE_BYTES for sizes in sqs.batch_calls)
    assert sum(len(sizes) for sizes in sqs.batch_calls) == 30
    assert max(len(message_entry("memory", e, 0)["MessageBody"]) for e in events) > 12_000


def test_a_crm_value_longer_than_a_url_keeps_its_event_with_the_url_cut() -> None:
    mapping = load_mapping("mappings/hubspot.yaml")
    [signal] = [s for s in mapping.signals if s.patterns]
    long_value = "https://acme.io/pricing?" + "q" * 500_000
    event = event_from_signal(mapping, signal, "101", long_value, NOW, "hubspot:webhook")
    assert event is not None and event.type == signal.event
    assert event.url == long_value[:MAX_URL_CHARS]
    other = event_from_signal(mapping, signal, "101", long_value + "x", NOW, "hubspot:webhook")
    assert other is not None and other.event_id != event.event_id  # the whole value is its id


def test_the_dynamodb_store_counts_a_cut_url_once(stack: Stack) -> None:
    from crm_elasticity.core.pipeline import Pipeline
    from crm_elasticity.core.store import URLS_TRUNCATED

    mapping = load_mapping("mappings/hubspot.yaml")
    [signal] = [s for s in mapping.signals if s.patterns]
    at = NOW - timedelta(hours=1)
    long_value = "https://acme.io/pricing?" + "q" * 5000
    event = event_from_signal(
        mapping, signal, "101", long_value, at, "hubspot:webhook", changed_at=at
    )
    pipeline = Pipeline(stack.store, mapping.policy)
    pipeline.process([event])
    pipeline.process([event])  # a redelivery is a duplicate: not counted again
    assert stack.store.marked_counts() == {URLS_TRUNCATED: 1}
