"""The deployed path end to end under moto: API Gateway v2 event -> webhook function -> SQS FIFO
-> worker -> fake CRM, plus the scheduled sync through its handler."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from crm_elasticity.connectors.aws import handlers
from crm_elasticity.core.models import Status
from tests.aws.harness import MAX_RECEIVES, SECRET, FakeContext, Stack, api_event, receive

NOW = datetime.now(UTC).replace(microsecond=0)


def canonical(eid: str, cid: str, kind: str = "open", minutes: int = 0) -> dict[str, str]:
    at = NOW - timedelta(hours=1) + timedelta(minutes=minutes)
    return {"event_id": eid, "contact_id": cid, "type": kind, "occurred_at": at.isoformat()}


def post(events: list[dict], secret: str = SECRET, path: str = "/webhooks/memory") -> dict:
    event = api_event(path, json.dumps(events), {"x-memory-secret": secret})
    return handlers.webhook(event, FakeContext())


def emitted_metrics(text: str) -> dict[str, float]:
    """Sum every CloudWatch EMF metric printed to stdout."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if '"_aws"' not in line:
            continue
        blob = json.loads(line)
        for spec in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
            value = blob[spec["Name"]]
            totals[spec["Name"]] = totals.get(spec["Name"], 0) + (
                sum(value) if isinstance(value, list) else value
            )
    return totals


def test_webhook_enqueues_each_event_in_its_contact_group_and_answers_at_once(
    stack: Stack,
) -> None:
    answer = post([canonical("e1", "c1"), canonical("e2", "c2"), canonical("e3", "c1", "click")])
    assert answer["statusCode"] == 202
    assert json.loads(answer["body"])["received"] == 3
    messages = receive(stack.sqs, stack.queue_url)
    groups = {m["Attributes"]["MessageGroupId"] for m in messages}
    dedupe = sorted(m["Attributes"]["MessageDeduplicationId"] for m in messages)
    assert groups == {"memory:c1", "memory:c2"}
    assert dedupe == ["e1", "e2", "e3"]
    assert stack.crm.total_calls == 0  # the webhook never waits on the CRM


def test_a_base64_encoded_body_is_verified_and_parsed_as_sent(stack: Stack) -> None:
    raw = json.dumps([canonical("e1", "c1")]).encode()
    event = api_event(
        "/webhooks/memory", base64.b64encode(raw).decode(), {"x-memory-secret": SECRET}
    )
    event["isBase64Encoded"] = True
    assert handlers.webhook(event, FakeContext())["statusCode"] == 202
    assert stack.queued() == 1


def test_webhook_with_a_bad_secret_is_refused_and_enqueues_nothing(stack: Stack) -> None:
    answer = post([canonical("e1", "c1")], secret="wrong")
    assert answer["statusCode"] == 401
    assert stack.queued() == 0
    assert (
        handlers.webhook(api_event("/webhooks/nowhere", "[]"), FakeContext())["statusCode"] == 404
    )


def test_a_poisoned_record_fails_alone_and_ends_in_the_dead_letter_queue(stack: Stack) -> None:
    stack.crm.poisoned = {"bad"}
    post(
        [
            canonical("e1", "c1"),
            canonical("e2", "c2"),
            canonical("e3", "bad"),
            canonical("e4", "c3", "click"),
        ]
    )
    first = stack.poller.deliver()
    assert first is not None
    assert [b["event"]["event_id"] for b in first.bodies(first.failed_ids)] == ["e3"]
    states = stack.store.get_contacts(["c1", "c2", "c3", "bad"])
    assert sorted(states) == ["c1", "c2", "c3"]
    assert stack.crm.values["c3"]["engagement_score"] == 10

    # Only the poisoned message comes back, until SQS moves it to the dead-letter queue.
    for _ in range(MAX_RECEIVES):
        again = stack.poller.deliver()
        if again is None:
            break
        assert [m["MessageId"] for m in again.messages] == first.failed_ids
    assert stack.poller.deliver() is None
    dead = receive(stack.sqs, stack.dlq_url)
    assert [json.loads(m["Body"])["event"]["event_id"] for m in dead] == ["e3"]
    assert stack.store.get_contacts(["c1"])["c1"].engagement_score == 5  # not redone


def test_a_crash_after_commit_redelivers_without_double_counting(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    post(
        [
            canonical("e1", "c1"),
            canonical("e2", "c1", "click", 1),
            canonical("e3", "c1", "high_intent_visit", 2),
            canonical("e4", "c2"),
        ]
    )
    stack.poller.deliver(crash_after_invoke=True)  # work done, messages never deleted
    capsys.readouterr()
    redelivered = stack.poller.deliver()
    assert redelivered is not None
    assert redelivered.failed_ids == []
    assert len(redelivered.messages) == 4
    state = stack.store.get_contacts(["c1"])["c1"]
    assert state.engagement_score == 30
    assert state.campaign_status is Status.ENGAGED
    assert len(stack.crm.tasks) == 1
    assert len(stack.crm.task_attempts) == 1
    assert [d.cause for d in stack.store.ledger_for("c1")].count("e3") == 1
    metrics = emitted_metrics(capsys.readouterr().out)
    assert metrics["Duplicates"] == 4
    assert metrics["EventsProcessed"] == 0


def test_a_throttled_crm_waits_and_a_dlq_replay_counts_once(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack.crm.down = True
    post([canonical("e1", "c1"), canonical("e2", "c2")])
    deliveries = stack.poller.drain()
    assert len(deliveries) == MAX_RECEIVES
    assert all(len(d.failed_ids) == 2 for d in deliveries)
    assert stack.crm.calls["read"] == MAX_RECEIVES  # one read per batch, no record-by-record retry
    assert emitted_metrics(capsys.readouterr().out)["DlqSends"] == 2
    dead = receive(stack.sqs, stack.dlq_url)
    assert len(dead) == 2

    for m in dead:  # back in the DLQ: only looked at
        stack.sqs.change_message_visibility(
            QueueUrl=stack.dlq_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
        )
    stack.crm.down = False
    assert handlers.replay_dead_letters({}, FakeContext()) == {"moved": 2}
    stack.poller.drain()
    assert stack.queued(stack.dlq_url) == 0
    for m in dead:  # an operator replays the same dead letters again by mistake
        stack.sqs.send_message(
            QueueUrl=stack.queue_url,
            MessageBody=m["Body"],
            MessageGroupId=m["Attributes"]["MessageGroupId"],
            MessageDeduplicationId=f"{m['Attributes']['MessageDeduplicationId']}:again",
        )
    stack.poller.drain()
    states = stack.store.get_contacts(["c1", "c2"])
    assert [states[c].engagement_score for c in ("c1", "c2")] == [5, 5]
    assert stack.crm.values["c1"]["engagement_score"] == 5


def test_scheduled_sync_runs_through_its_handler(stack: Stack) -> None:
    old = NOW - timedelta(days=100)
    post(
        [
            {
                "event_id": f"enroll-{c}",
                "contact_id": c,
                "type": "enroll",
                "occurred_at": old.isoformat(),
            }
            for c in ("c1", "c2", "c3")
        ]
    )
    stack.poller.drain()
    assert stack.crm.values["c1"]["campaign_status"] == "Active"

    summary = handlers.sync({"vendor": "memory"}, FakeContext())
    assert summary["transitions"] == {"Active->Dormant": 3}
    assert summary["stopped"] is None
    assert all(stack.crm.values[c]["campaign_status"] == "Dormant" for c in ("c1", "c2", "c3"))
    assert stack.store.get_contacts(["c2"])["c2"].campaign_status is Status.DORMANT
    again = handlers.sync({"vendor": "memory"}, FakeContext())
    assert again["decisions"] == 0  # a second sync at (nearly) the same time writes nothing


def test_secrets_come_from_ssm_and_never_reach_the_logs(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = io.StringIO()
    handler = handlers.logger.registered_handler
    previous = handler.setStream(logs)  # the JSON log lines, as CloudWatch would get them
    try:
        post([canonical("e1", "c1")])
        post([canonical("e2", "c1")], secret="not-" + SECRET)
        stack.poller.drain()
        handlers.sync({"vendor": "memory"}, FakeContext())
    finally:
        handler.setStream(previous)
    connector = handlers.container().connector("memory")
    assert connector.secret == SECRET  # type: ignore[attr-defined]
    out = capsys.readouterr()
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert {line["message"] for line in lines} >= {"webhook answered", "batch processed"}
    assert all(line.get("correlation_id") for line in lines if line["message"] != "sync finished")
    assert SECRET not in logs.getvalue() + out.out + out.err


def test_an_unreadable_message_goes_to_the_dlq_at_once_and_blocks_nobody(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack.sqs.send_message(
        QueueUrl=stack.queue_url,
        MessageBody="{not json",
        MessageGroupId="memory:c1",
        MessageDeduplicationId="garbage-1",
    )
    post([canonical("e1", "c1"), canonical("e2", "c2")])
    first = stack.poller.deliver()
    assert first is not None
    assert len(first.messages) == 3
    assert first.failed_ids == []
    assert sorted(stack.store.get_contacts(["c1", "c2"])) == ["c1", "c2"]
    assert [m["Body"] for m in receive(stack.sqs, stack.dlq_url)] == ["{not json"]
    assert emitted_metrics(capsys.readouterr().out)["DlqSends"] == 1


def test_a_failed_event_holds_back_its_contacts_later_events(stack: Stack) -> None:
    stack.crm.reject_at = {("read", 1), ("read", 2)}  # the batch read, then e1's own read
    post([canonical("e1", "c1"), canonical("e2", "c1", "click", 1), canonical("e3", "c2")])
    first = stack.poller.deliver()
    assert first is not None
    assert len(first.failed_ids) == 2  # e1, and e2 queued behind it in c1's group
    assert sorted(stack.store.get_contacts(["c1", "c2"])) == ["c2"]
    stack.poller.drain()
    assert stack.store.get_contacts(["c1"])["c1"].engagement_score == 15
