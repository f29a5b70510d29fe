"""What only the DynamoDB store has to prove: racing workers, versioned cursors, key expiry, and
a batch split over several transactions that is interrupted halfway."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws

from crm_elasticity.core.dynamodb_store import TRANSACTION_LIMIT, DynamoDBStore
from crm_elasticity.core.models import ContactState, Decision, Status
from crm_elasticity.core.owed import OwedWrite
from crm_elasticity.core.store import Batch, ConflictError, StoreError
from tests.helpers import T0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        open_store("state").create_table()
        yield "state"


def open_store(table: str, clock: Clock | None = None, client: Any = None) -> DynamoDBStore:
    client = client or boto3.client("dynamodb", region_name="eu-west-1")
    return DynamoDBStore(table, client=client, clock=clock or Clock())


def engaged(cid: str, cause: str) -> tuple[ContactState, Decision]:
    state = ContactState(cid, Status.ENGAGED, T0, T0, T0, T0, engagement_score=20)
    decision = Decision(
        contact_id=cid,
        at=T0,
        rule="engagement",
        reason="click",
        cause=cause,
        from_status=Status.ACTIVE,
        to_status=Status.ENGAGED,
        changes={"engagement_score": (10, 20)},
        policy_version="v1",
    )
    return state, decision


class SerializedTransactions:
    """DynamoDB runs each transaction atomically; moto's in-memory table does not when two
    threads call it at once (a cancelled transaction restores a snapshot taken before the
    other's write). Serializing the calls gives the service's behaviour; the race between
    the two workers' claims, made before either commits, stays."""

    _lock = threading.Lock()

    def __init__(self) -> None:
        self._client = boto3.client("dynamodb", region_name="eu-west-1")

    def transact_write_items(self, **kwargs: Any) -> Any:
        with self._lock:
            return self._client.transact_write_items(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_two_workers_racing_for_one_event_claim_it_once(table: str) -> None:
    stores = [open_store(table, client=SerializedTransactions()) for _ in range(2)]
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def work(store: DynamoDBStore, cid: str) -> None:
        state, decision = engaged(cid, "e1")
        barrier.wait()
        try:
            store.commit(
                Batch(event_keys=["e1"], contacts=[state], next_due=[None], decisions=[decision])
            )
            outcomes.append("won")
        except ConflictError:
            outcomes.append("lost")

    threads = [threading.Thread(target=work, args=(s, f"c{i}")) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost", "won"]
    assert len(stores[0].get_contacts(["c0", "c1"])) == 1


def test_a_cursor_moved_by_another_writer_is_a_conflict(table: str) -> None:
    mine, theirs = open_store(table), open_store(table)
    mine.commit(Batch(cursors={"due:after": "c1"}))
    assert mine.get_cursor("due:after") == "c1"
    assert theirs.get_cursor("due:after") == "c1"
    theirs.commit(Batch(cursors={"due:after": "c5"}))
    with pytest.raises(ConflictError):
        mine.commit(Batch(cursors={"due:after": "c2"}))
    assert mine.get_cursor("due:after") == "c5"
    mine.commit(Batch(cursors={"due:after": "c6"}))  # after re-reading, it may move it
    theirs.commit(Batch(cursors={}, event_keys=["x"]))
    assert theirs.get_cursor("due:after") == "c6"


def test_a_cursor_created_twice_concurrently_is_a_conflict(table: str) -> None:
    first, second = open_store(table), open_store(table)
    assert first.get_cursor("poll:since") is None
    assert second.get_cursor("poll:since") is None
    first.commit(Batch(cursors={"poll:since": "a"}))
    with pytest.raises(ConflictError):
        second.commit(Batch(cursors={"poll:since": "b"}))


def test_an_expired_event_key_can_be_claimed_again(table: str, clock: Clock) -> None:
    store = open_store(table, clock)
    store.commit(Batch(event_keys=["e1"]))
    clock.now = T0 + timedelta(days=89)
    assert store.unseen(["e1"]) == set()
    with pytest.raises(ConflictError):
        store.commit(Batch(event_keys=["e1"]))
    # DynamoDB's TTL sweep may lag by days; the store treats the key as gone at its expiry.
    clock.now = T0 + timedelta(days=91)
    assert store.unseen(["e1"]) == {"e1"}
    store.commit(Batch(event_keys=["e1"]))
    assert store.unseen(["e1"]) == set()


class CrashAfter:
    """A DynamoDB client whose process dies after `n` successful transactions."""

    def __init__(self, client: Any, n: int) -> None:
        self.client, self.left = client, n

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def transact_write_items(self, **kwargs: Any) -> Any:
        if self.left == 0:
            raise StoreError("process killed")
        self.left -= 1
        return self.client.transact_write_items(**kwargs)


def test_an_interrupted_multi_transaction_batch_leaves_whole_contacts(table: str) -> None:
    ids = [f"c{n:03d}" for n in range(120)]
    pairs = [engaged(c, f"e-{c}") for c in ids]

    def batch() -> Batch:
        return Batch(
            event_keys=[f"e-{c}" for c in ids],
            contacts=[s for s, _ in pairs],
            next_due=[None] * len(ids),
            decisions=[d for _, d in pairs],
            outbox=[OwedWrite.fields(c, "{}") for c in ids],
            cursors={"due:after": ids[-1]},
        )

    assert 4 * len(ids) > TRANSACTION_LIMIT
    client = boto3.client("dynamodb", region_name="eu-west-1")
    with pytest.raises(StoreError):
        open_store(table, client=CrashAfter(client, 2)).commit(batch())
    store = open_store(table)
    saved = store.get_contacts(ids)
    claimed = {c for c in ids if f"e-{c}" not in store.unseen([f"e-{c}"])}
    owed = {o.contact_id for o in store.outbox_take(1000)}
    assert 0 < len(saved) < len(ids)
    assert set(saved) == claimed == owed  # a contact is either all there or not at all
    assert all(len(store.ledger_for(c)) == 1 for c in saved)
    assert store.get_cursor("due:after") is None  # the cursor moves last

    # The retry: the already-done contacts' events are claimed, so they are left alone.
    rest = [c for c in ids if c not in saved]
    retry = Batch(
        event_keys=[f"e-{c}" for c in rest],
        contacts=[s for s, _ in pairs if s.contact_id in rest],
        next_due=[None] * len(rest),
        decisions=[d for _, d in pairs if d.contact_id in rest],
        outbox=[OwedWrite.fields(c, "{}") for c in rest],
        cursors={"due:after": ids[-1]},
    )
    store.commit(retry)
    assert len(store.get_contacts(ids)) == len(ids)
    assert all(len(store.ledger_for(c)) == 1 for c in ids)
    assert store.get_cursor("due:after") == ids[-1]


class RecordingClient:
    """The boto3 client, with every `TransactWriteItems` recorded (to check its limits)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.transactions: list[list[dict[str, Any]]] = []

    def transact_write_items(self, **kwargs: Any) -> Any:
        self.transactions.append(kwargs["TransactItems"])
        return self._client.transact_write_items(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_rollup_counters_travel_in_the_transactions_of_their_decisions(table: str) -> None:
    """Every transaction stays within DynamoDB's 100 items, counter updates included, names
    each item once, and counts exactly the ledger lines it writes."""
    recording = RecordingClient(boto3.client("dynamodb", region_name="eu-west-1"))
    store = open_store(table, client=recording)
    states, decisions = [], []
    for n in range(90):  # 90 contacts, each decided on its own day: 90 distinct counters
        state = ContactState(f"c{n:03d}", Status.ACTIVE, T0, T0, T0, T0)
        states.append(state)
        decisions.append(
            Decision(
                contact_id=state.contact_id,
                at=T0 + timedelta(days=n),
                rule="enroll",
                reason="enrolled",
                cause=f"e{n}",
                from_status=None,
                to_status=Status.ACTIVE,
                changes={},
                policy_version="v1",
            )
        )
    store.commit(
        Batch(
            event_keys=[f"e{n}" for n in range(90)],
            contacts=states,
            next_due=[None] * 90,
            decisions=decisions,
        )
    )
    assert len(recording.transactions) > 1
    for ops in recording.transactions:
        assert len(ops) <= TRANSACTION_LIMIT
        ledger = sum(
            1 for op in ops if "Put" in op and op["Put"]["Item"]["pk"]["S"].startswith("ledger#")
        )
        counted = sum(
            int(op["Update"]["ExpressionAttributeValues"][":delta"]["N"])
            for op in ops
            if "Update" in op and op["Update"]["Key"]["pk"]["S"].startswith("rollup#")
        )
        assert counted == ledger
    assert [r[-1] for r in store.rollup()] == [1] * 90
    assert store.contact_levels() == {("Active", None): 90}
    for ops in recording.transactions:
        targets = [next(iter(op.values())) for op in ops]
        keys = [
            json.dumps(t.get("Key") or {k: t["Item"][k] for k in ("pk", "sk")}, sort_keys=True)
            for t in targets
        ]
        assert len(keys) == len(set(keys))


def test_a_mid_day_since_is_refused_with_the_reason(table: str) -> None:
    from crm_elasticity.core.ledger_reader import WindowError

    store = open_store(table)
    assert store.rollup(datetime(2024, 3, 2, tzinfo=UTC)) == []
    with pytest.raises(WindowError, match="whole UTC days"):
        store.rollup(datetime(2024, 3, 2, 12, tzinfo=UTC))


def test_owed_writes_an_earlier_release_left_in_the_table_drain_typed(table: str) -> None:
    # Items written before owed writes named their contact: the key and payload only.
    client = boto3.client("dynamodb", region_name="eu-west-1")
    old = [("1", "fields:c1", '{"a": 1}'), ("2", "task:c:2:e1:T0", '{"contact_id": "c:2"}')]
    for seq, key, payload in old:
        item = {"pk": "outbox", "sk": key, "seq": seq, "payload": payload}
        client.put_item(TableName=table, Item={k: {"S": v} for k, v in item.items()})
    store = open_store(table)
    taken = store.outbox_claim(10)
    assert [(o.owed.contact_id, o.owed.kind.value) for o in taken] == [
        ("c1", "fields"),
        ("c:2", "task"),
    ]
    store.commit(Batch(outbox_done=taken))
    assert store.outbox_take(10) == []
