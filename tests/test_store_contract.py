"""The `Store` contract, run against every implementation: the embedded SQLite store and the
DynamoDB store (under moto). A third store passes these before anything uses it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from crm_elasticity.core.dynamodb_store import DynamoDBStore
from crm_elasticity.core.ledger_reader import LedgerReader
from crm_elasticity.core.models import (
    EVENT,
    Action,
    ContactState,
    Decision,
    Event,
    Status,
    SuppressionReason,
)
from crm_elasticity.core.order import ContactHistory
from crm_elasticity.core.owed import OwedKind, OwedWrite
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.store import (
    Batch,
    ConflictError,
    ContactStore,
    EventQueue,
    Quarantined,
    Store,
)
from tests.helpers import T0

DAY0, DAY1, DAY2 = (str((T0 + timedelta(days=n)).date()) for n in range(3))


class Clock:
    """Wall-clock time as the stores see it (leases of owed writes expire by it)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 5, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield


def dynamodb_store(table: str = "state", clock: Clock | None = None) -> DynamoDBStore:
    client = boto3.client("dynamodb", region_name="eu-west-1")
    return DynamoDBStore(table, client=client, clock=clock or Clock())


@pytest.fixture(params=["sqlite", "dynamodb"])
def stores(request: pytest.FixtureRequest, clock: Clock) -> Iterator[Callable[[], Store]]:
    """A factory: each call opens another handle on the same store (another 'worker')."""
    if request.param == "sqlite":
        store = SQLiteStore(":memory:", clock=clock)
        yield lambda: store
        store.close()
        return
    request.getfixturevalue("aws_env")
    dynamodb_store().create_table()
    yield lambda: dynamodb_store(clock=clock)


@pytest.fixture
def store(stores: Callable[[], Store]) -> Store:
    return stores()


def test_every_store_is_each_port_and_the_ports_split_the_store(store: Store) -> None:
    """`Store` is the union of the contact-state, queue and reader ports, with no method in two
    of them, so a consumer typed against one port can be handed any store."""
    ports = (ContactStore, EventQueue, LedgerReader)
    assert all(isinstance(store, port) for port in ports)
    methods = [port.__abstractmethods__ for port in ports]
    assert frozenset().union(*methods) == Store.__abstractmethods__
    assert sum(map(len, methods)) == len(Store.__abstractmethods__)


def contact(cid: str, **changes: object) -> ContactState:
    state = ContactState(cid, Status.ACTIVE, T0, T0, T0, T0)
    for name, value in changes.items():
        setattr(state, name, value)
    return state


def decision(cid: str, cause: str, to: Status = Status.ACTIVE, at: datetime = T0) -> Decision:
    return Decision(
        contact_id=cid,
        at=at,
        rule="engagement",
        reason="open +5",
        cause=cause,
        from_status=None if to is Status.ACTIVE else Status.ACTIVE,
        to_status=to,
        changes={"engagement_score": (0, 5)},
        policy_version="v1",
        actions=[Action("handoff_task", {"score": 25})],
        event_type="open",
    )


def event(eid: str, cid: str = "c1", minutes: int = 0) -> Event:
    return Event(
        event_id=eid, contact_id=cid, type="open", occurred_at=T0 + timedelta(minutes=minutes)
    )


def test_claimed_event_keys_are_no_longer_unseen(store: Store) -> None:
    assert store.unseen(["e1", "e2"]) == {"e1", "e2"}
    store.commit(Batch(event_keys=["e1"]))
    assert store.unseen(["e1", "e2", "e3"]) == {"e2", "e3"}


def test_a_second_claim_of_an_event_raises_conflict_and_writes_nothing(
    stores: Callable[[], Store],
) -> None:
    first, second = stores(), stores()
    # Both workers saw e1 as unseen, then raced to commit it.
    assert first.unseen(["e1"]) == second.unseen(["e1"]) == {"e1"}
    first.commit(
        Batch(
            event_keys=["e1"],
            contacts=[contact("c1")],
            next_due=[None],
            decisions=[decision("c1", "e1")],
        )
    )
    loser = Batch(
        event_keys=["e1", "e2"],
        contacts=[contact("c2")],
        next_due=[None],
        decisions=[decision("c2", "e2")],
        outbox=[fields("c2", "{}")],
    )
    with pytest.raises(ConflictError):
        second.commit(loser)
    assert second.get_contacts(["c2"]) == {}
    assert second.ledger_for("c2") == []
    assert second.unseen(["e2"]) == {"e2"}
    assert second.outbox_take(10) == []


def test_contact_state_round_trips_every_field(store: Store) -> None:
    state = contact(
        "c1",
        campaign_status=Status.SUPPRESSED,
        engagement_score=12.5,
        base_score=25.0,
        last_engagement_date=T0 + timedelta(days=3, microseconds=250),
        decay_steps=1,
        reactivation_cycle=2,
        reactivation_step=1,
        reactivation_step_at=T0 + timedelta(days=9),
        unanswered_sends=4,
        suppression_reason=SuppressionReason.NO_RESPONSE,
        experiments={"subject_line": "Value"},
        segment="emea",
        send_times=(T0 + timedelta(days=1), T0 + timedelta(days=2)),
    )
    store.commit(Batch(contacts=[state, contact("c2")], next_due=[None, None]))
    assert store.get_contacts(["c1", "c2", "missing"]) == {"c1": state, "c2": contact("c2")}
    assert store.count_contacts() == 2


def test_contacts_are_listed_in_id_order_in_pages(store: Store) -> None:
    ids = [f"contact-{n:03d}" for n in range(23)]
    store.commit(Batch(contacts=[contact(c) for c in reversed(ids)], next_due=[None] * 23))
    pages = list(store.iter_contacts(page_size=5))
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [s.contact_id for p in pages for s in p] == ids


def test_due_contacts_are_those_due_by_now_after_the_cursor(store: Store) -> None:
    dues = {
        "a": T0,
        "b": T0 + timedelta(hours=1),
        "c": T0 - timedelta(days=1),
        "d": None,
        "e": T0 - timedelta(seconds=1),
        "f": T0 + timedelta(microseconds=1),
    }
    store.commit(Batch(contacts=[contact(c) for c in dues], next_due=list(dues.values())))
    assert store.due_contacts(T0) == ["a", "c", "e"]
    assert store.due_contacts(T0, after="a") == ["c", "e"]
    assert store.due_contacts(T0, limit=2) == ["a", "c"]
    # A contact whose next due time moved out of reach leaves the due set.
    store.commit(Batch(contacts=[contact("c")], next_due=[T0 + timedelta(days=30)]))
    assert store.due_contacts(T0) == ["a", "e"]


def test_cursors_are_set_and_read(store: Store) -> None:
    assert store.get_cursor("due:after") is None
    store.commit(Batch(cursors={"due:after": "c5", "poll:since": "2024-03-01"}))
    store.commit(Batch(cursors={"due:after": "c9"}))
    assert store.get_cursors(["due:after", "poll:since", "x"]) == {
        "due:after": "c9",
        "poll:since": "2024-03-01",
    }


def test_ledger_is_kept_in_commit_order(store: Store) -> None:
    first = decision("c1", "e1", at=T0 + timedelta(days=2))
    second = decision("c1", "e2", Status.ENGAGED, at=T0)  # earlier `at`, committed later
    store.commit(Batch(event_keys=["e1"], decisions=[first]))
    store.commit(Batch(event_keys=["e2"], decisions=[second, decision("c2", "e2b")]))
    ledger = store.ledger_for("c1")
    assert [d.cause for d in ledger] == ["e1", "e2"]
    got = ledger[1]
    assert (got.at, got.rule, got.reason, got.from_status, got.to_status, got.policy_version) == (
        second.at,
        "engagement",
        "open +5",
        Status.ACTIVE,
        Status.ENGAGED,
        "v1",
    )
    assert got.changes == {"engagement_score": (0, 5)}
    assert got.event_type == "open"
    assert [(a.kind, a.detail) for a in got.actions] == [("handoff_task", {"score": 25})]
    assert [d.cause for d in store.ledger_for("c2")] == ["e2b"]


def test_inbox_records_each_event_once_and_in_order(store: Store) -> None:
    assert store.inbox_put([event("e1"), event("e2", minutes=1)]) == 2
    assert store.inbox_put([event("e2", minutes=1), event("e3")]) == 1
    store.commit(Batch(event_keys=["e9"]))
    assert store.inbox_put([event("e9")]) == 0  # already processed
    assert [e.event_id for e in store.inbox_take(10)] == ["e1", "e2", "e3"]
    assert [e.event_id for e in store.inbox_take(2)] == ["e1", "e2"]
    store.commit(Batch(event_keys=["e1", "e2"], inbox_done=["e1", "e2"]))
    assert [e.event_id for e in store.inbox_take(10)] == ["e3"]
    assert store.inbox_take(10)[0] == event("e3")


def test_a_quarantined_event_leaves_the_inbox_until_released(store: Store) -> None:
    store.inbox_put([event("e1"), event("e2", minutes=1), event("e3", minutes=2)])
    poison = store.inbox_take(10)[1]
    body = EVENT.dump_json(poison).decode()
    store.inbox_quarantine([Quarantined("e2", body, "engine: date value out of range", T0)])
    assert [e.event_id for e in store.inbox_take(10)] == ["e1", "e3"]
    assert store.quarantine_count() == 1
    [held] = store.quarantined()
    assert (held.key, held.reason, held.at) == ("e2", "engine: date value out of range", T0)
    assert EVENT.validate_json(held.body) == poison
    assert store.unseen(["e2"]) == {"e2"}  # not processed: it can be tried again
    # Quarantined again (a retry that failed again): one entry, the latest reason.
    store.inbox_quarantine([Quarantined("e2", body, "still failing", T0)])
    assert [q.reason for q in store.quarantined()] == ["still failing"]
    assert store.quarantine_release(["e1", "unknown"]) == 0  # only quarantined keys move
    assert store.quarantine_release(["e2"]) == 1
    assert store.quarantine_count() == 0
    assert store.quarantine_release() == 0
    assert [e.event_id for e in store.inbox_take(10)] == ["e1", "e3", "e2"]


def test_an_unreadable_inbox_row_is_quarantined_not_raised(store: Store) -> None:
    """A row an older release recorded that no longer validates (a year-9999 instant)."""
    store.inbox_put([event("e1")])
    bad = '{"event_id":"old","contact_id":"c1","type":"open","occurred_at":"9999-12-31T00:00:00Z"}'
    if isinstance(store, SQLiteStore):
        store.execute("INSERT INTO inbox (key, body) VALUES ('old', ?)", (bad,))
    else:
        client = boto3.client("dynamodb", region_name="eu-west-1")
        client.put_item(
            TableName="state",
            Item={
                "pk": {"S": "inbox"},
                "sk": {"S": "old"},
                "seq": {"S": "99999999999999999999"},
                "body": {"S": bad},
            },
        )
    store.inbox_put([event("e2", minutes=1)])
    assert [e.event_id for e in store.inbox_take(10)] == ["e1", "e2"]
    [held] = store.quarantined()
    assert held.key == "old" and held.body == bad
    assert "occurred_at" in held.reason and "outside the accepted range" in held.reason


def fields(contact_id: str, payload: str) -> OwedWrite:
    return OwedWrite.fields(contact_id, payload)


def task(contact_id: str, cause: str = "e1") -> OwedWrite:
    return OwedWrite.task(contact_id, cause, T0, "{}")


def test_outbox_keeps_owed_writes_until_done_and_newest_last(store: Store) -> None:
    store.commit(Batch(outbox=[fields("c1", '{"a": 1}'), task("c1")]))
    store.commit(Batch(outbox=[fields("c2", '{"b": 2}')]))
    store.commit(Batch(outbox=[fields("c1", '{"a": 3}')]))  # replaces, goes to the back
    assert store.outbox_take(10, OwedKind.FIELDS) == [
        fields("c2", '{"b": 2}'),
        fields("c1", '{"a": 3}'),
    ]
    assert store.outbox_take(1, OwedKind.FIELDS) == [fields("c2", '{"b": 2}')]
    assert store.outbox_take(10, OwedKind.TASK) == [task("c1")]
    assert len(store.outbox_take(10)) == 3
    taken = store.outbox_claim(10, OwedKind.TASK) + store.outbox_claim(1, OwedKind.FIELDS)
    assert [o.owed for o in taken] == [task("c1"), fields("c2", '{"b": 2}')]
    store.commit(Batch(outbox_done=taken))
    assert store.outbox_take(10) == [fields("c1", '{"a": 3}')]
    keys = [fields("c1", "").key, fields("c2", "").key, task("c1").key]
    assert store.outbox_owed(keys) == {fields("c1", "").key}


def test_owed_writes_come_back_typed_whatever_their_contact_id_holds(store: Store) -> None:
    # Ids with the separator the stored keys use: nothing is read back out of a key.
    store.commit(Batch(outbox=[task("a:b", "e:1"), fields("a:b", "{}"), task("a", "b:e")]))
    assert store.outbox_take(10) == [task("a:b", "e:1"), fields("a:b", "{}"), task("a", "b:e")]
    assert [(o.owed.contact_id, o.owed.kind) for o in store.outbox_claim(10)] == [
        ("a:b", OwedKind.TASK),
        ("a:b", OwedKind.FIELDS),
        ("a", OwedKind.TASK),
    ]


def test_a_write_owed_anew_while_the_older_one_is_flushed_stays_owed(store: Store) -> None:
    store.commit(Batch(outbox=[fields("c1", '{"a": 1}')]))
    (taken,) = store.outbox_claim(10, OwedKind.FIELDS)
    store.commit(Batch(outbox=[fields("c1", '{"a": 2}')]))  # decided while `taken` was written
    store.commit(Batch(outbox_done=[taken]))
    assert store.outbox_take(10) == [fields("c1", '{"a": 2}')]
    # ... and the flusher's lease is gone with it: the newer write can be taken at once.
    assert [o.payload for o in store.outbox_claim(10, OwedKind.FIELDS)] == ['{"a": 2}']


def test_an_owed_write_taken_by_one_flusher_is_not_taken_by_another(
    stores: Callable[[], Store], clock: Clock
) -> None:
    first, second = stores(), stores()
    first.commit(Batch(outbox=[task("c1"), fields("c1", '{"a": 1}')]))
    taken = first.outbox_claim(10, lease=timedelta(minutes=5))
    assert len(taken) == 2
    assert second.outbox_claim(10) == []
    # A newer write owed under a taken key waits for the first flusher too: two flushers
    # writing one contact at once could land the older values last.
    second.commit(Batch(outbox=[fields("c1", '{"a": 2}')]))
    assert second.outbox_claim(10) == []
    first.outbox_release([o for o in taken if o.owed.kind is OwedKind.FIELDS])
    assert [o.owed for o in second.outbox_claim(10)] == [fields("c1", '{"a": 2}')]
    # A flusher that died holding a lease delays its writes; it does not lose them.
    clock.now += timedelta(minutes=5, seconds=1)
    assert [o.owed for o in second.outbox_claim(10, OwedKind.TASK)] == [task("c1")]


def test_finishing_writes_another_flusher_took_over_after_expiry_leaves_its_lease(
    stores: Callable[[], Store], clock: Clock
) -> None:
    first, second = stores(), stores()
    first.commit(Batch(outbox=[fields("c1", '{"a": 1}')]))
    (stale,) = first.outbox_claim(10, lease=timedelta(seconds=30))
    clock.now += timedelta(minutes=1)
    first.commit(Batch(outbox=[fields("c1", '{"a": 2}')]))
    (fresh,) = second.outbox_claim(10)
    first.commit(Batch(outbox_done=[stale]))  # the first flusher finishes late
    assert first.outbox_claim(10) == []  # the second still holds the key
    second.commit(Batch(outbox_done=[fresh]))
    assert second.outbox_take(10) == []


def test_contacts_are_read_with_a_version_that_every_write_moves(store: Store) -> None:
    store.commit(Batch(contacts=[contact("c1")], next_due=[None]))
    states, versions = store.get_versioned(["c1", "missing"])
    assert states == {"c1": contact("c1")}
    assert set(versions) == {"c1"}
    store.commit(
        Batch(
            contacts=[contact("c1", engagement_score=5.0)],
            next_due=[None],
            expected_versions={"c1": versions["c1"]},
        )
    )
    _, after = store.get_versioned(["c1"])
    assert after["c1"] != versions["c1"]
    store.commit(Batch(contacts=[contact("c1", engagement_score=6.0)], next_due=[None]))
    _, unconditional = store.get_versioned(["c1"])
    assert unconditional["c1"] not in (versions["c1"], after["c1"])


def test_a_commit_decided_on_a_stale_contact_conflicts_and_writes_nothing(
    stores: Callable[[], Store],
) -> None:
    sync, worker = stores(), stores()
    worker.commit(Batch(contacts=[contact("c1")], next_due=[None]))
    _, read = sync.get_versioned(["c1"])
    # The worker applies an open after the sync read the contact...
    worker.commit(
        Batch(
            event_keys=["open-1"],
            contacts=[contact("c1", engagement_score=5.0)],
            next_due=[None],
            decisions=[decision("c1", "open-1")],
        )
    )
    stale = Batch(
        event_keys=["tick-1"],
        contacts=[contact("c1", campaign_status=Status.DORMANT)],
        next_due=[None],
        decisions=[decision("c1", "tick-1", Status.DORMANT)],
        outbox=[fields("c1", "{}")],
        cursors={"due:after": "c1"},
        expected_versions={"c1": read["c1"]},
    )
    # ... so the sync's commit, decided on what it read before, must not land.
    with pytest.raises(ConflictError):
        sync.commit(stale)
    assert sync.get_contacts(["c1"])["c1"].engagement_score == 5.0
    assert [d.cause for d in sync.ledger_for("c1")] == ["open-1"]
    assert sync.unseen(["tick-1"]) == {"tick-1"}
    assert sync.outbox_take(10) == []
    assert sync.get_cursor("due:after") is None


def test_a_contact_expected_absent_or_unchanged_is_checked_too(store: Store) -> None:
    store.commit(Batch(contacts=[contact("c1")], next_due=[None]))
    _, read = store.get_versioned(["c1"])
    with pytest.raises(ConflictError):  # another writer created it first
        store.commit(
            Batch(contacts=[contact("c1")], next_due=[None], expected_versions={"c1": None})
        )
    store.commit(Batch(contacts=[contact("c1", engagement_score=1.0)], next_due=[None]))
    # An event decided on the old state without changing it is not claimed either.
    with pytest.raises(ConflictError):
        store.commit(Batch(event_keys=["e1"], expected_versions={"c1": read["c1"]}))
    assert store.unseen(["e1"]) == {"e1"}
    store.commit(Batch(contacts=[contact("c2")], next_due=[None], expected_versions={"c2": None}))
    assert set(store.get_contacts(["c2"])) == {"c2"}


def test_a_stale_contact_in_a_batch_larger_than_one_transaction_writes_nothing(
    store: Store,
) -> None:
    ids = [f"c{n:03d}" for n in range(150)]
    store.commit(Batch(contacts=[contact(c) for c in ids], next_due=[None] * 150))
    _, read = store.get_versioned(ids)
    store.commit(Batch(contacts=[contact("c149", engagement_score=5.0)], next_due=[None]))
    batch = Batch(
        event_keys=[f"e-{c}" for c in ids],
        contacts=[contact(c, engagement_score=1.0) for c in ids],
        next_due=[None] * 150,
        decisions=[decision(c, f"e-{c}") for c in ids],
        expected_versions=read,
    )
    with pytest.raises(ConflictError):
        store.commit(batch)
    assert store.unseen(batch.event_keys) == set(batch.event_keys)
    assert {s.engagement_score for s in store.get_contacts(ids).values()} == {0.0, 5.0}


def test_each_inbox_partition_is_taken_on_its_own(store: Store) -> None:
    store.inbox_put([event("h1"), event("h2", minutes=1)], partition="hubspot")
    store.inbox_put([event("s1", minutes=2)], partition="salesforce")
    store.inbox_put([event("u1", minutes=3)])
    assert [e.event_id for e in store.inbox_take(10, "hubspot")] == ["h1", "h2"]
    assert [e.event_id for e in store.inbox_take(10, "salesforce")] == ["s1"]
    assert [e.event_id for e in store.inbox_take(10, "")] == ["u1"]
    assert [e.event_id for e in store.inbox_take(10)] == ["h1", "h2", "s1", "u1"]
    # One event is recorded once, whichever partition it is offered to.
    assert store.inbox_put([event("h1")], partition="salesforce") == 0
    store.commit(Batch(event_keys=["h1"], inbox_done=["h1"]))
    assert [e.event_id for e in store.inbox_take(10, "hubspot")] == ["h2"]


def test_a_batch_larger_than_one_transaction_is_written_whole(store: Store) -> None:
    ids = [f"c{n:03d}" for n in range(150)]
    batch = Batch(
        event_keys=[f"e-{c}" for c in ids] + ["e-orphan"],
        contacts=[contact(c) for c in ids],
        next_due=[T0] * 150,
        decisions=[decision(c, f"e-{c}") for c in ids],
        outbox=[fields(c, "{}") for c in ids],
        cursors={"due:after": ids[-1]},
    )
    store.commit(batch)
    assert store.unseen(batch.event_keys) == set()
    assert len(store.get_contacts(ids)) == 150
    assert len(store.outbox_take(500)) == 150
    assert store.due_contacts(T0, limit=1000) == ids
    assert store.get_cursor("due:after") == "c149"
    assert [d.cause for d in store.ledger_for("c077")] == ["e-c077"]
    taken = store.outbox_claim(500)
    assert len(taken) == 150
    store.commit(Batch(outbox_done=taken))
    assert store.outbox_take(500) == []


def test_contact_histories_round_trip_and_replace_the_stored_one(store: Store) -> None:
    base = contact(
        "c1",
        engagement_score=12.5,
        experiments={"subject": "A"},
        send_times=(T0, T0 + timedelta(hours=1)),
        last_engagement_date=T0,
    )
    events = [
        Event(
            event_id="e2",
            contact_id="c1",
            type="click",
            occurred_at=T0 + timedelta(hours=2),
            campaign="spring",
            variant="B",
            url="https://example.com/p",
            source="hubspot",
        ),
        Event(event_id="e3", contact_id="c1", type="send", occurred_at=T0 + timedelta(hours=3)),
    ]
    fresh = ContactHistory(
        "c2", None, [Event(event_id="e4", contact_id="c2", type="enroll", occurred_at=T0)]
    )
    floor = (T0 + timedelta(minutes=90), "e1")
    store.commit(Batch(histories=[ContactHistory("c1", base, list(events), floor), fresh]))

    found = store.histories(["c1", "c2", "unknown"])

    assert found == {"c1": ContactHistory("c1", base, events, floor), "c2": fresh}
    store.commit(Batch(histories=[ContactHistory("c1", None, events[:1])]))
    assert store.histories(["c1"])["c1"] == ContactHistory("c1", None, events[:1])


# ---- the ledger reader (core.ledger_reader): what report, results and explain read ----------


def _moved(
    cid: str,
    cause: str,
    src: Status | None,
    dst: Status,
    at: datetime,
    reason: str,
    changes: dict | None = None,
    rule: str = "engagement",
) -> Decision:
    return Decision(
        contact_id=cid,
        at=at,
        rule=rule,
        reason=reason,
        cause=cause,
        from_status=src,
        to_status=dst,
        changes=changes or {},
        policy_version="v1",
        actions=[],
        event_type="open",
    )


def _reader_batches() -> list[Batch]:
    """Two commits: enrolments and an engagement, then a compliance exit and a later day."""
    day2 = T0 + timedelta(days=1)
    a = contact("a", campaign_status=Status.ENGAGED, experiments={"subject_line": "Value"})
    b = contact("b")
    first = Batch(
        event_keys=["e1", "e2", "e3"],
        contacts=[a, b],
        next_due=[None, None],
        decisions=[
            _moved("a", "e1", None, Status.ACTIVE, T0, "enrolled", rule="enroll"),
            _moved("b", "e2", None, Status.ACTIVE, T0, "enrolled", rule="enroll"),
            _moved("a", "e3", Status.ACTIVE, Status.ENGAGED, T0, "open +5"),
        ],
        cursors={"policy:v1": '{"version": "v1"}', "sync:cursor": "x"},
    )
    a_engaged = contact("a", campaign_status=Status.ENGAGED, experiments={"subject_line": "Value"})
    b_gone = contact(
        "b", campaign_status=Status.SUPPRESSED, suppression_reason=SuppressionReason.UNSUBSCRIBE
    )
    second = Batch(
        event_keys=["e4", "e5"],
        contacts=[a_engaged, b_gone],
        next_due=[None, None],
        decisions=[
            _moved(
                "b",
                "e4",
                Status.ACTIVE,
                Status.SUPPRESSED,
                day2,
                "unsubscribe",
                {"suppression_reason": (None, "unsubscribe")},
                "compliance",
            ),
            _moved("a", "e5", Status.ENGAGED, Status.ENGAGED, day2, "open +5"),
        ],
        cursors={"changelog:2024-03-02:subject_line": '{"kind": "promotion"}'},
    )
    return [first, second]


def test_the_reader_hands_out_decisions_rollup_levels_and_notes(store: Store) -> None:
    from crm_elasticity.core.ledger_reader import LedgerReader

    assert isinstance(store, LedgerReader)
    batches = _reader_batches()
    for batch in batches:
        store.commit(batch)
    assert [d.cause for d in store.contact_decisions("a")] == ["e1", "e3", "e5"]
    assert store.contact_decisions("nobody") == []
    assert store.contact_now("b").suppression_reason is SuppressionReason.UNSUBSCRIBE
    assert store.contact_now("nobody") is None
    arm = '{"subject_line": "Value"}'
    assert store.rollup() == [
        (DAY0, "engagement", "open +5", "Active", "Engaged", "v1", "open", arm, 0, 1),
        (DAY0, "enroll", "enrolled", "", "Active", "v1", "open", "", 0, 1),
        (DAY0, "enroll", "enrolled", "", "Active", "v1", "open", arm, 0, 1),
        (DAY1, "compliance", "unsubscribe", "Active", "Suppressed", "v1", "open", "", 0, 1),
        (DAY1, "engagement", "open +5", "Engaged", "Engaged", "v1", "open", arm, 0, 1),
    ]
    assert [r[0] for r in store.rollup(T0 + timedelta(days=1))] == [DAY1] * 2
    assert store.contact_levels() == {("Engaged", None): 1, ("Suppressed", "unsubscribe"): 1}
    assert store.policy_notes() == {
        "changelog:2024-03-02:subject_line": '{"kind": "promotion"}',
        "policy:v1": '{"version": "v1"}',
    }
    assert store.quality_counts() == {"quarantined_events": 0, "urls_truncated": 0}


def test_rollup_counters_add_up_across_commits_and_moves(store: Store) -> None:
    for n in range(3):
        state = contact(f"c{n}")
        store.commit(
            Batch(
                event_keys=[f"e{n}"],
                contacts=[state],
                next_due=[None],
                decisions=[
                    _moved(f"c{n}", f"e{n}", None, Status.ACTIVE, T0, "enrolled", rule="enroll")
                ],
            )
        )
    # A suppressed contact's reason replaced by a later exit: the level moves, the status not.
    gone = contact(
        "c0", campaign_status=Status.SUPPRESSED, suppression_reason=SuppressionReason.UNSUBSCRIBE
    )
    store.commit(
        Batch(
            event_keys=["x1"],
            contacts=[gone],
            next_due=[None],
            decisions=[
                _moved(
                    "c0",
                    "x1",
                    Status.ACTIVE,
                    Status.SUPPRESSED,
                    T0,
                    "unsubscribe",
                    {"suppression_reason": (None, "unsubscribe")},
                    "compliance",
                )
            ],
        )
    )
    bounced = contact(
        "c0", campaign_status=Status.SUPPRESSED, suppression_reason=SuppressionReason.HARD_BOUNCE
    )
    store.commit(
        Batch(
            event_keys=["x2"],
            contacts=[bounced],
            next_due=[None],
            decisions=[
                _moved(
                    "c0",
                    "x2",
                    Status.SUPPRESSED,
                    Status.SUPPRESSED,
                    T0,
                    "hard_bounce",
                    {"suppression_reason": ("unsubscribe", "hard_bounce")},
                    "compliance",
                )
            ],
        )
    )
    enrolled = [r for r in store.rollup() if r[1] == "enroll"]
    assert enrolled == [(DAY0, "enroll", "enrolled", "", "Active", "v1", "open", "", 0, 3)]
    assert store.contact_levels() == {("Active", None): 2, ("Suppressed", "hard_bounce"): 1}


def test_the_rollup_of_a_batch_larger_than_one_transaction_counts_every_decision(
    store: Store,
) -> None:
    states = [contact(f"c{n:03d}") for n in range(150)]
    store.commit(
        Batch(
            event_keys=[f"e{n}" for n in range(150)],
            contacts=states,
            next_due=[None] * 150,
            decisions=[
                _moved(
                    f"c{n:03d}",
                    f"e{n}",
                    None,
                    Status.ACTIVE,
                    T0 + timedelta(days=n % 3),
                    "enrolled",
                    rule="enroll",
                )
                for n in range(150)
            ],
        )
    )
    assert [(r[0], r[-1]) for r in store.rollup()] == [(DAY0, 50), (DAY1, 50), (DAY2, 50)]
    assert store.contact_levels() == {("Active", None): 150}


def test_levels_follow_a_contact_changed_without_a_decision(store: Store) -> None:
    """A contact whose CRM values were edited by hand is written as the CRM has it, with no
    decision: the contacts-by-state counts still follow it."""
    store.commit(Batch(contacts=[contact("c")], next_due=[None], expected_versions={"c": None}))
    _, versions = store.get_versioned(["c"])
    dormant = contact("c", campaign_status=Status.DORMANT)
    store.commit(Batch(contacts=[dormant], next_due=[None], expected_versions=versions))
    assert store.contact_levels() == {("Dormant", None): 1}
    _, versions = store.get_versioned(["c"])
    store.commit(Batch(contacts=[dormant], next_due=[None], expected_versions=versions))
    assert store.contact_levels() == {("Dormant", None): 1}
