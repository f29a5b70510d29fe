"""Writers racing on the DynamoDB store of the deployed path: the scheduled sync beside the
worker, and flushers beside each other (the worker Lambda has no concurrency limit)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from crm_elasticity.connectors.aws import handlers
from crm_elasticity.connectors.runner import Runner
from crm_elasticity.core.dynamodb_store import DynamoDBStore
from crm_elasticity.core.models import Event, Status
from crm_elasticity.core.store import Batch
from tests.aws.harness import FakeContext, Stack
from tests.aws.test_deployed_path import NOW, canonical, post
from tests.fakes.memory_crm import MemoryConnector, MemoryCrm, memory_mapping


def test_a_sync_that_read_a_contact_before_the_worker_committed_decides_again(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync reads a contact silent for 100 days and decides Dormant; meanwhile the worker
    applies an open (Reactivated, score 5) and commits. The sync's commit must not land over
    it: it fails, the sync reads again and decides nothing more."""
    old = NOW - timedelta(days=100)
    post(
        [
            {
                "event_id": "enroll-c1",
                "contact_id": "c1",
                "type": "enroll",
                "occurred_at": old.isoformat(),
            }
        ]
    )
    stack.poller.drain()
    assert stack.crm.values["c1"]["campaign_status"] == "Active"

    commit = DynamoDBStore.commit
    raced: list[Status] = []

    def worker_commits_first(store: DynamoDBStore, batch: Batch) -> None:
        dormant = [s for s in batch.contacts if s.campaign_status is Status.DORMANT]
        if dormant and not raced:
            raced.append(dormant[0].campaign_status)
            # The worker Lambda, in its own thread, between the sync's read and its commit.
            post([canonical("open-c1", "c1")])
            worker = threading.Thread(target=stack.poller.drain)
            worker.start()
            worker.join(60)
            assert not worker.is_alive()
        commit(store, batch)

    monkeypatch.setattr(DynamoDBStore, "commit", worker_commits_first)
    summary = handlers.sync({"vendor": "memory"}, FakeContext())

    assert raced == [Status.DORMANT]  # the race happened
    state = stack.store.get_contacts(["c1"])["c1"]
    assert (state.campaign_status, state.engagement_score) == (Status.REACTIVATED, 5)
    assert stack.crm.values["c1"]["campaign_status"] == "Reactivated"
    assert stack.crm.values["c1"]["engagement_score"] == 5
    ledger = stack.store.ledger_for("c1")
    assert [d.cause for d in ledger].count("open-c1") == 1
    assert ledger[-1].to_status is Status.REACTIVATED  # nothing decided over the open
    assert summary["stopped"] is None


class TaskLog:
    """Counts task creations per key across every runner sharing one CRM."""

    def __init__(self, crm: MemoryCrm) -> None:
        self.crm = crm

    def created(self) -> Counter:
        return Counter(self.crm.task_attempts)


class AtomicCalls:
    """A DynamoDB client whose every call is atomic, as the service's are; moto's in-memory
    tables are not when threads call them at once. Calls of different writers still
    interleave as they would against DynamoDB."""

    _lock = threading.Lock()

    def __init__(self) -> None:
        self._client = boto3.client("dynamodb", region_name="eu-west-1")

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return method(*args, **kwargs)

        return call


def _runner(crm: MemoryCrm, table: str, clock: Callable[[], datetime]) -> Runner:
    store = DynamoDBStore(table, client=AtomicCalls())
    return Runner(MemoryConnector(memory_mapping(), crm), store, clock, write_page=3)


def test_flushers_racing_on_one_outbox_lose_no_write_and_create_each_task_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    start = datetime(2026, 3, 2, 9, tzinfo=UTC)
    with mock_aws():
        DynamoDBStore("state", client=boto3.client("dynamodb")).create_table()
        crm = MemoryCrm()
        ids = [f"c{n:02d}" for n in range(12)]
        worker = _runner(crm, "state", lambda: start + timedelta(hours=1))
        flushers = [_runner(crm, "state", lambda: start + timedelta(hours=1)) for _ in range(2)]
        done = threading.Event()
        errors: list[BaseException] = []

        def work() -> None:
            try:
                # Each contact: enrolled, then three clicks (10 points each, Engaged at 20),
                # one event per transaction so the flushers race with every commit.
                for step, kind in enumerate(["enroll", "click", "click", "click"]):
                    for cid in ids:
                        at = start + timedelta(minutes=step)
                        event = Event(
                            event_id=f"{kind}-{step}-{cid}",
                            contact_id=cid,
                            type=kind,
                            occurred_at=at,
                        )
                        worker.process([event], flush=False)
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)
            finally:
                done.set()

        def flush(runner: Runner) -> None:
            try:
                while not done.is_set():
                    runner.flush()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work)]
        threads += [threading.Thread(target=flush, args=(f,)) for f in flushers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        worker.flush()

        states = worker.store.get_contacts(ids)
        for cid in ids:
            assert states[cid].campaign_status is Status.ENGAGED
            assert crm.values[cid]["campaign_status"] == "Engaged", cid
            assert crm.values[cid]["engagement_score"] == states[cid].engagement_score, cid
        engaged = [
            d
            for cid in ids
            for d in worker.store.ledger_for(cid)
            if d.to_status is Status.ENGAGED and d.from_status is not Status.ENGAGED
        ]
        created = TaskLog(crm).created()
        assert len(engaged) == len(ids)
        assert len(created) == len(ids)
        assert set(created.values()) == {1}  # no task key created twice
        assert worker.store.outbox_take(100) == []
