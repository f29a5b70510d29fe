"""The shared runner (read CRM, decide, commit with owed writes, flush) against the in-memory
fake CRM: outages, redeliveries, hand-off tasks, interrupted syncs, write failures."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from crm_elasticity.connectors.base import ConnectorError
from crm_elasticity.connectors.runner import Runner
from crm_elasticity.core.cursors import Cursors
from crm_elasticity.core.models import Event, Status
from crm_elasticity.core.pipeline import CONFLICT_ATTEMPTS
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.store import Batch, ConflictError
from tests.fakes.memory_crm import MemoryConnector, MemoryCrm, memory_mapping
from tests.helpers import T0


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def crm() -> MemoryCrm:
    return MemoryCrm()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def runner(crm: MemoryCrm, clock: Clock) -> Runner:
    return Runner(MemoryConnector(memory_mapping(), crm), SQLiteStore(":memory:"), clock)


def ev(eid: str, kind: str, cid: str = "c1", minutes: int = 0) -> Event:
    return Event(
        event_id=eid, contact_id=cid, type=kind, occurred_at=T0 + timedelta(minutes=minutes)
    )


def test_owed_writes_survive_a_crm_outage_and_are_flushed_once(
    runner: Runner, crm: MemoryCrm
) -> None:
    crm.unavailable = {"write"}
    stats = runner.process([ev("e1", "open")])
    assert stats.applied == 1
    assert "campaign_status" not in crm.values.get("c1", {})  # the write did not get through
    assert len(runner.store.outbox_take(10)) == 1  # owed: the flush below delivers it

    crm.unavailable = set()
    runner.flush()
    assert crm.values["c1"]["campaign_status"] == "Active"
    assert crm.values["c1"]["engagement_score"] == 5
    assert runner.store.outbox_take(10) == []
    writes_before = crm.calls["write"]
    runner.flush()  # nothing owed any more: no second write
    assert crm.calls["write"] == writes_before
    assert sum("c1" in batch for batch in crm.write_log) == 1


def test_a_redelivered_event_is_not_counted_twice(runner: Runner, crm: MemoryCrm) -> None:
    runner.process([ev("e1", "open")])
    again = runner.process([ev("e1", "open"), ev("e2", "click", minutes=1)])
    assert (again.duplicates, again.applied) == (1, 1)
    assert runner.store.get_contacts(["c1"])["c1"].engagement_score == 15
    assert crm.values["c1"]["engagement_score"] == 15


def test_draining_stops_between_batches_when_asked(runner: Runner) -> None:
    """`serve`'s worker drains in small transactions and must stop without emptying a backlog."""
    runner.record([ev(f"e{i}", "open", cid=f"c{i}") for i in range(5)])
    asked = 0

    def stop() -> bool:
        nonlocal asked
        asked += 1
        return asked > 2  # asked before each batch: two batches, then stop

    assert runner.drain_inbox(2, stop=stop).applied == 4
    assert [e.event_id for e in runner.store.inbox_take(10)] == ["e4"]
    assert runner.drain_inbox(2).applied == 1
    assert runner.store.inbox_take(10) == []


def test_events_during_a_crm_write_outage_build_on_each_other(
    runner: Runner, crm: MemoryCrm
) -> None:
    """While the CRM refuses writes it is behind the store, not hand-edited: the next event is
    decided on the stored state, not on the CRM's older values."""
    runner.process([ev("e1", "open")])
    assert crm.values["c1"]["engagement_score"] == 5
    crm.unavailable = {"write"}
    runner.process([ev("e2", "open", minutes=1)])
    runner.process([ev("e3", "open", minutes=2)])
    assert runner.store.get_contacts(["c1"])["c1"].engagement_score == 15
    crm.unavailable = set()
    runner.flush()
    assert crm.values["c1"]["engagement_score"] == 15


def test_a_writer_that_keeps_losing_races_gives_up_and_leaves_the_inbox_queued(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner.record([ev("e1", "open")])
    attempts = 0

    def another_writer_first(batch: Batch) -> None:
        nonlocal attempts
        attempts += 1
        raise ConflictError("another writer changed c1 first")

    monkeypatch.setattr(runner.store, "commit", another_writer_first)
    with pytest.raises(ConflictError):
        runner.drain_inbox()
    assert attempts == CONFLICT_ATTEMPTS  # decided again each time, then left for later
    monkeypatch.undo()
    assert [e.event_id for e in runner.store.inbox_take(10)] == ["e1"]
    assert runner.drain_inbox().applied == 1


def test_one_handoff_task_per_engaged_transition(runner: Runner, crm: MemoryCrm) -> None:
    events = [
        ev("e1", "open"),
        ev("e2", "click", minutes=1),
        ev("e3", "high_intent_visit", minutes=2),
    ]
    stats = runner.process(events)
    assert stats.transitions["Active->Engaged"] == 1
    runner.process(events)  # the webhook delivered the batch again
    runner.process([ev("e4", "click", minutes=3)])  # already Engaged: no new hand-off
    assert len(crm.tasks) == 1
    assert len(crm.task_attempts) == 1
    assert next(iter(crm.tasks.values())).contact_id == "c1"
    assert crm.values["c1"]["campaign_status"] == "Engaged"


def test_an_interrupted_sync_resumes_from_its_cursor(
    runner: Runner, crm: MemoryCrm, clock: Clock
) -> None:
    ids = [f"c{n}" for n in range(1, 7)]
    runner.process([ev(f"enroll-{c}", "enroll", c) for c in ids])
    later = T0 + timedelta(days=91)
    clock.now = later
    crm.fail_at = {("find_due", 2)}  # the CRM fails while paging the second page of due contacts
    with pytest.raises(ConnectorError):
        runner.sync(later)
    store = runner.store
    done = [c for c, s in store.get_contacts(ids).items() if s.campaign_status is Status.DORMANT]
    assert done == ["c1", "c2"]  # the first page was committed and written back
    assert store.get_cursor(Cursors.due_after) == "c2"

    calls_before = crm.calls["find_due"]
    summary = runner.sync(later)
    assert summary.transitions["Active->Dormant"] == 4  # only the rest: c1, c2 not redone
    assert crm.calls["find_due"] - calls_before == 2  # pages c3-c4 and c5-c6, not from the start
    assert all(crm.values[c]["campaign_status"] == "Dormant" for c in ids)
    for cid in ids:
        dormancy = [d for d in store.ledger_for(cid) if d.to_status is Status.DORMANT]
        assert len(dormancy) == 1
    assert store.get_cursor(Cursors.due_after) == ""


def test_permanent_write_failures_go_to_the_ledger_not_a_retry_loop(
    runner: Runner, crm: MemoryCrm
) -> None:
    crm.write_failures = {"c2": "INVALID_EMAIL_ADDRESS: bad address"}
    runner.process([ev("e1", "open", "c1"), ev("e2", "open", "c2")])
    assert crm.values["c1"]["engagement_score"] == 5
    assert "engagement_score" not in crm.values.get("c2", {})
    failures = [d for d in runner.store.ledger_for("c2") if d.reason == "write_failed"]
    assert len(failures) == 1
    assert "INVALID_EMAIL_ADDRESS" in failures[0].cause
    assert runner.store.outbox_take(10) == []  # not retried forever
    writes = crm.calls["write"]
    runner.flush()
    assert crm.calls["write"] == writes


def test_a_write_deferred_for_a_passing_reason_stays_owed_and_lands_later(
    runner: Runner, crm: MemoryCrm
) -> None:
    crm.write_deferrals = {"c2": "INTERNAL_ERROR: still failing after 3 attempts"}
    runner.process([ev("e1", "open", "c1"), ev("e2", "open", "c2")])
    assert crm.values["c1"]["engagement_score"] == 5
    assert "engagement_score" not in crm.values.get("c2", {})
    assert not [d for d in runner.store.ledger_for("c2") if d.reason == "write_failed"]
    assert len(runner.store.outbox_take(10)) == 1  # c2's, still owed (c1's landed)
    crm.write_deferrals = {}
    runner.flush()
    assert crm.values["c2"]["engagement_score"] == 5
    assert runner.store.outbox_take(10) == []


def test_a_throttled_crm_read_fails_the_batch_without_committing(
    runner: Runner, crm: MemoryCrm
) -> None:
    crm.throttle_next = 1
    with pytest.raises(ConnectorError) as raised:
        runner.process([ev("e1", "open")])
    assert raised.value.retriable
    assert runner.store.unseen(["e1"]) == {"e1"}  # the retry will apply it
    assert runner.process([ev("e1", "open")]).applied == 1


def test_a_second_sync_reports_only_its_own_api_calls(runner: Runner) -> None:
    """A warm container keeps one connector: its counters must not leak into the next summary."""
    runner.process([ev("e1", "open"), ev("e2", "open", cid="c2")])
    spent = runner.connector.calls.api_calls
    first = runner.sync(T0 + timedelta(days=1))
    second = runner.sync(T0 + timedelta(days=1))
    assert first.api_calls > 0
    assert runner.connector.calls.api_calls == spent + first.api_calls + second.api_calls
    assert second.api_calls < spent + first.api_calls + second.api_calls
