"""Roll-up compaction on DynamoDB: closed days' counters folded into packed month items, exactly
once, whatever writes or reads at the same time; the report stays byte for byte the same and
reads a few packed items instead of every day counter."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

import crm_elasticity.core.dynamodb_store as dynamodb_store
from crm_elasticity.core.dynamodb_store import PACKED_PK, DynamoDBStore
from crm_elasticity.core.models import ContactState, Decision, Status
from crm_elasticity.core.report import build, render
from crm_elasticity.core.store import Batch
from tests.aws.test_report_dynamodb import GENERATED, CountingClient, fill

REGION = "eu-west-1"
FOLD_AT = datetime(2030, 2, 5, tzinfo=UTC)
"""`fill` writes 2030-01-01 .. 2030-01-30: at this instant the days before 2030-01-28 are
closed (a week's revision window and a day)."""


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        DynamoDBStore("state", client=boto3.client("dynamodb", region_name=REGION)).create_table()
        yield "state"


def open_store(table: str, client: Any = None, shard: int | None = None) -> DynamoDBStore:
    store = DynamoDBStore(
        table, client=client or boto3.client("dynamodb", region_name=REGION), clock=lambda: FOLD_AT
    )
    if shard is not None:
        store._counter_shard = shard
    return store


def filled(table: str) -> DynamoDBStore:
    """120 contacts written by two writers on two counter shards, so most counters live in two
    items (and a fold meets the same dims twice in one transaction)."""
    fill(open_store(table, shard=0), 0, 60)
    fill(open_store(table, shard=5), 60, 120)
    return open_store(table)


def report_json(store: DynamoDBStore, since: datetime | None = None) -> str:
    return render(build(store, since, None, label="t", now=GENERATED), "json")


def packed_items(table: str) -> list[dict[str, Any]]:
    client = boto3.client("dynamodb", region_name=REGION)
    return client.query(
        TableName=table,
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": PACKED_PK}},
    )["Items"]


def late_open(cid: str, at: datetime) -> Batch:
    """One more decision counted under a key `fill` uses."""
    state = ContactState(cid, Status.ENGAGED, at, at, at, at, engagement_score=30)
    decision = Decision(
        contact_id=cid,
        at=at,
        rule="engagement",
        reason="open +5",
        cause=f"{cid}-late",
        from_status=Status.ACTIVE,
        to_status=Status.ENGAGED,
        changes={"engagement_score": (25, 30)},
        policy_version="v1",
        actions=[],
        event_type="open",
    )
    return Batch(contacts=[state], next_due=[None], decisions=[decision])


def test_closed_days_fold_into_a_packed_month_and_the_report_stays_byte_identical(
    table: str,
) -> None:
    store = filled(table)
    since = datetime(2030, 1, 15, tzinfo=UTC)
    before, before_since, rows = report_json(store), report_json(store, since), store.rollup()
    counting = CountingClient(boto3.client("dynamodb", region_name=REGION))
    report_json(open_store(table, counting))
    assert counting.items["rollup"] == 30 * 3 * 2  # 30 days x 3 counters x 2 shards

    assert store.compact_rollup() == 27 * 3 * 2  # the days before 2030-01-28
    assert store.compact_rollup() == 0  # folded once: nothing left to fold
    assert [i["sk"]["S"] for i in packed_items(table)] == ["2030-01#000"]
    assert store.rollup() == rows
    assert report_json(store) == before
    assert report_json(store, since) == before_since
    counting = CountingClient(boto3.client("dynamodb", region_name=REGION))
    report_json(open_store(table, counting))
    assert counting.items["rollup"] == 3 * 3 * 2  # the three open days' counters
    assert counting.items["rollpack"] == 2  # the packed month, and its stamp read again


def test_a_decision_dated_in_a_folded_day_still_counts_and_folds_once(table: str) -> None:
    """Days are not strictly closed (a replay, a time rule decided after an outage): a counter
    made anew after its day was folded is read beside the packed month and folded in later."""
    store = filled(table)
    store.compact_rollup()
    rows = store.rollup()
    store.commit(late_open("c00003", datetime(2030, 1, 4, 10, tzinfo=UTC)))
    grown = store.rollup()
    assert sum(r[-1] for r in grown) == sum(r[-1] for r in rows) + 1
    assert store.compact_rollup() == 1
    assert store.rollup() == grown


class RacingClient(CountingClient):
    """Runs `before` once, just before the first call of `method` whose arguments mention
    `marker`."""

    def __init__(self, client: Any, method: str, marker: str, before: Any) -> None:
        super().__init__(client)
        self._method, self._marker, self._before = method, marker, before

    def _maybe(self, kwargs: dict[str, Any]) -> None:
        if self._before is not None and self._marker in repr(kwargs):
            before, self._before = self._before, None
            before()

    def transact_write_items(self, **kwargs: Any) -> Any:
        if self._method == "transact_write_items":
            self._maybe(kwargs)
        return self._client.transact_write_items(**kwargs)

    def query(self, **kwargs: Any) -> Any:
        if self._method == "query":
            self._maybe(kwargs)
        return super().query(**kwargs)


def test_a_counter_moved_while_it_is_folded_is_left_for_the_next_fold(table: str) -> None:
    store = filled(table)
    writer = open_store(table, shard=0)
    late = late_open("c00001", datetime(2030, 1, 2, 9, tzinfo=UTC))  # c00001 opens on 01-02
    racing = RacingClient(
        boto3.client("dynamodb", region_name=REGION),
        "transact_write_items",
        PACKED_PK,
        lambda: writer.commit(late),
    )
    folding = open_store(table, racing)
    folded = folding.compact_rollup()
    assert folded < 27 * 3 * 2  # the transaction holding the moved counter did not land
    rows = store.rollup()
    assert sum(r[-1] for r in rows) == 360 + 1  # nothing lost, nothing counted twice
    assert folding.compact_rollup() == 27 * 3 * 2 - folded
    assert store.rollup() == rows


def test_a_report_racing_a_fold_reads_again(table: str) -> None:
    """A fold between the reader's packed read and its day-counter read would hide the folded
    counts: the packed items' stamps moved, so the reader reads again."""
    store = filled(table)
    rows = store.rollup()
    racing = RacingClient(
        boto3.client("dynamodb", region_name=REGION),
        "query",
        "rollup#00",
        lambda: open_store(table).compact_rollup(),
    )
    assert open_store(table, racing).rollup() == rows
    assert racing.items["rollpack"] >= 3  # packed read, stamps moved, read again


def test_a_full_packed_item_spills_into_the_next_part(
    table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = filled(table)
    rows, before = store.rollup(), report_json(store)
    monkeypatch.setattr(dynamodb_store, "PACK_BYTES", 2_000)
    monkeypatch.setattr(dynamodb_store, "FOLD_ITEMS", 7)
    assert store.compact_rollup() == 27 * 3 * 2
    packed = packed_items(table)
    assert len(packed) > 3
    assert [i["sk"]["S"] for i in packed] == [f"2030-01#{n:03d}" for n in range(len(packed))]
    assert all(int(i["used_bytes"]["N"]) <= 2_000 for i in packed)
    assert store.rollup() == rows
    assert report_json(store) == before


def test_open_days_are_not_folded(table: str) -> None:
    store = filled(table)
    assert store.compact_rollup(datetime(2030, 1, 9, tzinfo=UTC)) == 0  # every day < a week old
    assert store.compact_rollup(FOLD_AT + timedelta(days=30)) == 30 * 3 * 2
