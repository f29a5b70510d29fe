"""The SQS FIFO recorder the webhook functions hand to `handle_webhook`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from crm_elasticity.connectors.aws.queue import WorkQueue, parse_message, sqs_id
from crm_elasticity.connectors.base import WebhookRequest
from crm_elasticity.connectors.intake import handle_webhook
from crm_elasticity.core.models import EVENT, Event
from crm_elasticity.core.store import StoreError
from tests.fakes.memory_crm import MemoryConnector, memory_mapping
from tests.helpers import T0


class FakeSqs:
    """Records SendMessageBatch calls; entries whose id is in `refuse` fail `times` times."""

    def __init__(self, refuse: set[str] | None = None, times: int = 1) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.refuse, self.times = refuse or set(), times

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict:  # noqa: N803
        self.calls.append(Entries)
        failed = [e for e in Entries if e["MessageDeduplicationId"] in self.refuse]
        if self.times > 0 and failed:
            self.times -= 1
            return {"Failed": [{"Id": e["Id"], "Code": "ThrottlingException"} for e in failed]}
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}


def events(n: int, cid: str = "c1") -> list[Event]:
    return [Event(event_id=f"e{i}", contact_id=cid, type="open", occurred_at=T0) for i in range(n)]


def test_events_are_sent_ten_at_a_time_with_group_and_dedup_ids() -> None:
    sqs = FakeSqs()
    assert WorkQueue("q.fifo", sqs, queue_url="url").send("hubspot", events(23)) == 23
    assert [len(c) for c in sqs.calls] == [10, 10, 3]
    entry = sqs.calls[0][0]
    assert entry["MessageGroupId"] == "hubspot:c1"
    assert entry["MessageDeduplicationId"] == "e0"
    message = parse_message(entry["MessageBody"])
    assert (message.vendor, message.event) == ("hubspot", events(1)[0])


def test_only_refused_entries_are_sent_again() -> None:
    sqs = FakeSqs(refuse={"e3"})
    WorkQueue("q.fifo", sqs, queue_url="url").send("hubspot", events(5))
    assert [len(c) for c in sqs.calls] == [5, 1]
    assert sqs.calls[1][0]["MessageDeduplicationId"] == "e3"


def test_a_queue_that_keeps_refusing_makes_the_webhook_answer_503() -> None:
    sqs = FakeSqs(refuse={"e1"}, times=99)
    queue = WorkQueue("q.fifo", sqs, queue_url="url")
    with pytest.raises(StoreError):
        queue.send("memory", events(2))
    connector = MemoryConnector(memory_mapping(), secret=None)
    body = json.dumps([EVENT.dump_python(e, mode="json") for e in events(2)]).encode()
    request = WebhookRequest("POST", "/webhooks/memory", "", {}, body, T0)
    answer = handle_webhook(connector, request, queue.recorder("memory"))
    assert answer.status == 503  # the vendor redelivers; nothing was acknowledged


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("hubspot:123", True),
        ("salesforce:003xx000004TmiQAAS", True),
        ("a b", False),
        ("x" * 129, False),
        ("héllo", False),
    ],
    ids=["numeric-id", "salesforce-id", "space", "too-long", "non-ascii"],
)
def test_sqs_ids_are_kept_when_valid_and_hashed_stably_otherwise(text: str, kept: bool) -> None:
    result = sqs_id(text)
    assert (result == text) is kept
    assert len(result) <= 128
    assert result == sqs_id(text)
