"""`elasticity serve` and the Lambda functions run the same intake and the same runner: the same
webhook gets the same answer and leaves the same contacts behind, on SQLite locally and on
DynamoDB behind SQS."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator

import pytest

from crm_elasticity.connectors.aws import handlers
from crm_elasticity.connectors.runner import Runner
from crm_elasticity.connectors.server import build_server
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.aws.harness import SECRET, FakeContext, Stack, api_event
from tests.fakes.memory_crm import MemoryConnector, MemoryCrm, memory_mapping

EVENTS = [
    {"event_id": "p1", "contact_id": "c1", "type": "open", "occurred_at": "2030-01-01T10:00:00Z"},
    {"event_id": "p2", "contact_id": "c1", "type": "click", "occurred_at": "2030-01-01T10:05:00Z"},
    {
        "event_id": "p3",
        "contact_id": "c1",
        "type": "high_intent_visit",
        "occurred_at": "2030-01-01T10:06:00Z",
    },
    {
        "event_id": "p4",
        "contact_id": "c2",
        "type": "unsubscribe",
        "occurred_at": "2030-01-01T10:07:00Z",
    },
]


@pytest.fixture
def local() -> Iterator[tuple[str, Runner, MemoryCrm]]:
    crm = MemoryCrm()
    runner = Runner(MemoryConnector(memory_mapping(), crm, SECRET), SQLiteStore(":memory:"))
    server, _ = build_server([runner], "127.0.0.1", 0, worker=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", runner, crm
    server.shutdown()
    server.server_close()


def post_local(base: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(  # noqa: S310 - a loopback URL built by the test
        f"{base}/webhooks/memory",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-Memory-Secret": SECRET},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        return answer.status, json.loads(answer.read())


def test_local_server_and_lambda_give_the_same_answer_and_the_same_contacts(
    stack: Stack, local: tuple[str, Runner, MemoryCrm]
) -> None:
    base, runner, local_crm = local
    body = json.dumps(EVENTS).encode()

    status, answer = post_local(base, body)
    runner.drain_inbox()
    event = api_event("/webhooks/memory", body.decode(), {"x-memory-secret": SECRET})
    lambda_answer = handlers.webhook(event, FakeContext())
    stack.poller.drain()

    assert (status, answer["received"]) == (lambda_answer["statusCode"], 4) == (202, 4)
    local_states = runner.store.get_contacts(["c1", "c2"])
    deployed_states = stack.store.get_contacts(["c1", "c2"])
    assert local_states == deployed_states
    assert local_states["c2"].suppression_reason is not None
    assert local_crm.values == stack.crm.values
    assert len(local_crm.tasks) == len(stack.crm.tasks) == 1
