"""Reports and `explain` on the AWS deployment: the same events through the local pipeline
(SQLite) and through the deployed path (webhook -> SQS -> worker -> DynamoDB, under moto) give
the same report, byte for byte, and the same histories; the report reads roll-up counters only,
however many decisions the table holds."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from crm_elasticity.connectors.aws import handlers
from crm_elasticity.connectors.runner import Runner
from crm_elasticity.connectors.server import build_server
from crm_elasticity.core.dynamodb_store import DynamoDBStore
from crm_elasticity.core.explain import explain_contact
from crm_elasticity.core.models import ContactState, Decision, Status
from crm_elasticity.core.report import build, render
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.store import Batch
from tests.aws.conftest import REGION, SECRET, Stack
from tests.aws.harness import FakeContext, api_event
from tests.aws.test_local_parity import post_local
from tests.fakes.memory_crm import MemoryConnector, MemoryCrm, memory_mapping

GENERATED = datetime(2031, 1, 1, tzinfo=UTC)
START = datetime(2030, 1, 1, 9, tzinfo=UTC)
ROLLUP_KINDS = {"rollup", "rollpack", "levels", "notes", "quarantine", "quality"}
"""The partitions a report reads: day counters, packed months, contact levels, policy notes,
and the data-quality partitions (one item per set-aside or marked event)."""
KINDS = ["open", "click", "high_intent_visit", "open", "unsubscribe", "hard_bounce", "open"]


def events() -> list[dict[str, str]]:
    """24 contacts over 40 days: opens, clicks and visits (some reach Engaged and are handed to
    sales), unsubscribes and a bounce after an unsubscribe (the reason replaced)."""
    out = []
    for c in range(24):
        for k in range(c % 5 + 1):
            kind = KINDS[(c + k) % len(KINDS)]
            at = START + timedelta(days=(c * 3 + k * 7) % 40, minutes=c)
            out.append(
                {
                    "event_id": f"x{c}-{k}",
                    "contact_id": f"c{c:02d}",
                    "type": kind,
                    "occurred_at": at.isoformat().replace("+00:00", "Z"),
                }
            )
    return sorted(out, key=lambda e: (e["occurred_at"], e["event_id"]))


@pytest.fixture
def local() -> Iterator[tuple[str, Runner]]:
    runner = Runner(MemoryConnector(memory_mapping(), MemoryCrm(), SECRET), SQLiteStore(":memory:"))
    server, _ = build_server([runner], "127.0.0.1", 0, worker=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", runner
    server.shutdown()
    server.server_close()


def test_local_and_deployed_paths_give_the_same_report_and_histories(
    stack: Stack, local: tuple[str, Runner]
) -> None:
    base, runner = local
    body = json.dumps(events())
    post_local(base, body.encode())
    runner.drain_inbox()
    answer = handlers.webhook(
        api_event("/webhooks/memory", body, {"x-memory-secret": SECRET}), FakeContext()
    )
    assert answer["statusCode"] == 202
    stack.poller.drain(rounds=50)

    reports = [
        render(build(store, None, None, label="store", now=GENERATED), "json")
        for store in (runner.store, stack.store)
    ]
    assert reports[0] == reports[1]
    report = json.loads(reports[0])
    assert report["overview"]["decisions"] > 40
    assert report["suppression"]["now"]  # the compliance exits are there
    assert report["transitions_by_reason"]
    for cid in sorted({e["contact_id"] for e in events()}):
        assert explain_contact(runner.store, cid) == explain_contact(stack.store, cid)
    since = datetime(2030, 1, 20, tzinfo=UTC)
    windowed = [
        render(build(store, since, None, label="store", now=GENERATED), "json")
        for store in (runner.store, stack.store)
    ]
    assert windowed[0] == windowed[1]
    # Every day folded into packed months (as the scheduled report does once days close):
    # the same report and window, byte for byte.
    assert stack.store.compact_rollup(GENERATED) > 0
    assert (
        render(build(stack.store, None, None, label="store", now=GENERATED), "json") == (reports[0])
    )
    assert (
        render(build(stack.store, since, None, label="store", now=GENERATED), "json")
        == (windowed[0])
    )


class CountingClient:
    """The DynamoDB client, counting the items every read hands back, by partition kind."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.items: dict[str, int] = {}
        self.calls = 0

    def _count(self, items: list[dict[str, Any]], fallback: str) -> None:
        for item in items:
            kind = item.get("pk", {}).get("S", fallback).split("#")[0]
            self.items[kind] = self.items.get(kind, 0) + 1

    def query(self, **kwargs: Any) -> Any:
        self.calls += 1
        page = self._client.query(**kwargs)
        partition = kwargs["ExpressionAttributeValues"][":p"]["S"].split("#")[0]
        self._count(page.get("Items", []), partition)
        if kwargs.get("Select") == "COUNT":
            self.items[partition] = self.items.get(partition, 0) + page["Count"]
        return page

    def batch_get_item(self, **kwargs: Any) -> Any:
        self.calls += 1
        answer = self._client.batch_get_item(**kwargs)
        for items in answer.get("Responses", {}).values():
            self._count(items, "?")
        return answer

    def get_item(self, **kwargs: Any) -> Any:
        raise AssertionError("a report never reads single items")

    def scan(self, **kwargs: Any) -> Any:
        raise AssertionError("a report never scans the table")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def fill(store: DynamoDBStore, first: int, last: int) -> None:
    """Contacts `first`..`last - 1` enrolled, sent to and engaged over 30 days, by `commit`."""
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    for start in range(first, last, 30):
        states, decisions = [], []
        for n in range(start, min(start + 30, last)):
            cid = f"c{n:05d}"
            at = t0 + timedelta(days=n % 30)
            state = ContactState(cid, Status.ENGAGED, at, at, at, at, engagement_score=25)
            states.append(state)
            decisions += [
                Decision(
                    contact_id=cid,
                    at=at,
                    rule="enroll",
                    reason="enrolled",
                    cause=f"{cid}-e",
                    from_status=None,
                    to_status=Status.ACTIVE,
                    changes={},
                    policy_version="v1",
                ),
                Decision(
                    contact_id=cid,
                    at=at,
                    rule="send",
                    reason="sent",
                    cause=f"{cid}-s",
                    from_status=Status.ACTIVE,
                    to_status=Status.ACTIVE,
                    changes={},
                    policy_version="v1",
                    actions=[],
                    event_type="send",
                ),
                Decision(
                    contact_id=cid,
                    at=at,
                    rule="engagement",
                    reason="open +5",
                    cause=f"{cid}-o",
                    from_status=Status.ACTIVE,
                    to_status=Status.ENGAGED,
                    changes={"engagement_score": (0, 25)},
                    policy_version="v1",
                    actions=[],
                    event_type="open",
                ),
            ]
        store.commit(Batch(contacts=states, next_due=[None] * len(states), decisions=decisions))


def measured_report(table: str) -> tuple[dict[str, Any], CountingClient]:
    counting = CountingClient(boto3.client("dynamodb", region_name=REGION))
    report = build(DynamoDBStore(table, client=counting), None, None, label="t", now=GENERATED)
    return report, counting


def test_a_report_reads_counters_only_whatever_the_ledger_holds(stack: Stack) -> None:
    """30 days x 3 counters, whether the table holds 90 decisions or four times as many: the
    report reads the same counter items and never a ledger line nor a contact."""
    fill(stack.store, 0, 30)
    small, small_reads = measured_report(stack.store.table)
    fill(stack.store, 30, 120)
    big, big_reads = measured_report(stack.store.table)
    assert (small["overview"]["decisions"], big["overview"]["decisions"]) == (90, 360)
    assert big["overview"]["contacts_by_state"]["Engaged"] == 120
    # quarantine and quality partitions hold one item per set-aside or marked event (none here)
    assert set(big_reads.items) <= ROLLUP_KINDS
    assert big_reads.items["rollup"] == 90  # one writer: each counter in one item
    assert big_reads.items.get("levels", 0) <= 8
    assert big_reads.calls <= 3 * 8 + 4  # a query per counter shard, packed (twice), notes, ...
    assert small_reads.calls == big_reads.calls
    assert small_reads.items == big_reads.items
    # Once the days are closed and folded, the report reads the packed month instead.
    assert stack.store.compact_rollup(GENERATED) == 90
    folded, folded_reads = measured_report(stack.store.table)
    assert folded == big
    assert set(folded_reads.items) <= ROLLUP_KINDS
    assert folded_reads.items.get("rollup", 0) == 0
    assert folded_reads.items["rollpack"] == 2  # the month, and its stamp read again


def test_the_scheduled_report_writes_the_html_to_its_bucket_from_counters_only(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(stack.store, 0, 30)
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(
        Bucket="crm-elasticity-test-reports",
        CreateBucketConfiguration={"LocationConstraint": REGION},
    )
    monkeypatch.setenv("REPORT_BUCKET", "crm-elasticity-test-reports")
    counting = CountingClient(boto3.client("dynamodb", region_name=REGION))
    monkeypatch.setattr(
        handlers, "_report_store", lambda: DynamoDBStore(stack.store.table, client=counting)
    )
    result = handlers.report({}, FakeContext())
    assert result["counters_folded"] == 0  # the days `fill` writes are still open
    assert result["keys"][1] == "reports/latest.html" and result["keys"][0].endswith(".html")
    for key in result["keys"]:
        page = s3.get_object(Bucket="crm-elasticity-test-reports", Key=key)
        assert page["ContentType"].startswith("text/html")
        html = page["Body"].read().decode()
        assert "<html" in html and "Engaged" in html
    assert set(counting.items) <= ROLLUP_KINDS
    monkeypatch.delenv("REPORT_BUCKET")
    with pytest.raises(RuntimeError, match="REPORT_BUCKET"):
        handlers.report({}, FakeContext())
