"""Real processes writing one SQLite store at once: `serve`'s worker beside a second flusher, a
scheduled `sync` (plain or `--full`) looping during load, or a second `serve`'s worker. Nothing
the worker decided may be lost in the CRM, and each Engaged transition makes one hand-off task."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crm_elasticity.core.models import Status
from tests.fakes.hubspot_server import FakeHubSpot
from tests.reliability.writer_processes import (
    STEPS,
    drainer_main,
    flusher_main,
    hubspot_runner,
    start,
    sync_main,
    worker_main,
)

CONTACTS = 40
BOUND_S = 240  # a generous bound on a shared 2-core machine; a run takes seconds


@pytest.fixture
def hubspot() -> Iterator[FakeHubSpot]:
    server = FakeHubSpot(now=lambda: datetime.now(UTC) - timedelta(days=30))
    server.url = server.start()
    yield server
    server.stop()


RIVALS = {
    "second-flusher": lambda url, db, stop: start(flusher_main, url, db, stop),
    "sync-looping": lambda url, db, stop: start(sync_main, url, db, False, stop),
    "sync-full-looping": lambda url, db, stop: start(sync_main, url, db, True, stop),
    "second-serve-worker": lambda url, db, stop: start(drainer_main, url, db, stop),
}


def race(processes: list, done, stop) -> None:  # noqa: ANN001 - multiprocessing events
    try:
        assert done.wait(BOUND_S), "the worker did not finish"
    finally:
        stop.set()
        for process in processes:
            process.join(BOUND_S)
            if process.is_alive():
                process.kill()
    assert [p.exitcode for p in processes] == [0] * len(processes)


@pytest.mark.parametrize("rival", list(RIVALS))
def test_a_rival_writer_on_the_same_store_loses_no_update_and_makes_no_extra_task(
    hubspot: FakeHubSpot, tmp_path: Path, rival: str
) -> None:
    db = str(tmp_path / "elasticity.sqlite3")
    runner = hubspot_runner(hubspot.url, db)
    runner.connector.provision()
    contacts = [hubspot.add_contact({"email": f"w{n}@example.com"}) for n in range(CONTACTS)]
    context = multiprocessing.get_context("spawn")
    done, stop = context.Event(), context.Event()
    begin = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    processes = [RIVALS[rival](hubspot.url, db, stop)]
    processes.append(start(worker_main, hubspot.url, db, contacts, begin, 4, STEPS, done))
    race(processes, done, stop)
    runner.drain_inbox()  # a second serve's worker may have stopped with events left
    runner.flush()

    states = runner.store.get_contacts(contacts)
    assert {s.campaign_status for s in states.values()} == {Status.ENGAGED}
    assert {s.engagement_score for s in states.values()} == {30}
    crm = runner.connector.read_records(contacts)
    stale = [
        cid
        for cid in contacts
        if (crm[cid].values["campaign_status"], crm[cid].values["engagement_score"])
        != ("Engaged", 30)
    ]
    assert stale == []
    engaged = [
        d
        for cid in contacts
        for d in runner.store.ledger_for(cid)
        if d.to_status is Status.ENGAGED and d.from_status is not Status.ENGAGED
    ]
    assert len(engaged) == CONTACTS
    assert len(hubspot.tasks()) == CONTACTS
    assert runner.store.outbox_take(10) == []


def test_a_sync_deciding_dormancy_beside_the_worker_applying_opens_loses_no_open(
    hubspot: FakeHubSpot, tmp_path: Path
) -> None:
    """Contacts silent for 100 days: the looping sync decides Dormant while the worker
    applies an open to each. A sync commit decided on a state read before the worker's commit
    must fail and decide again: every contact ends with its open's 5 points (Active if the open
    came first, Reactivated if dormancy did), in the store and in the CRM."""
    hubspot.latency = 0.02  # a CRM's round trip: the worker's write-back takes a while
    db = str(tmp_path / "elasticity.sqlite3")
    runner = hubspot_runner(hubspot.url, db)
    runner.connector.provision()
    now = datetime.now(UTC).replace(microsecond=0)
    silent_since = (now - timedelta(days=100)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    props = {
        "elastic_campaign_status": "active",
        "elastic_engagement_score": "0",
        "elastic_reactivation_cycle": "0",
        "elastic_unanswered_sends": "0",
        "elastic_reactivation_step": "0",
        "elastic_status_changed_at": silent_since,
        "elastic_last_engagement_date": silent_since,
    }
    hubspot.now = lambda: now - timedelta(days=200)  # when HubSpot created them
    contacts = [hubspot.add_contact(props) for _ in range(CONTACTS)]
    context = multiprocessing.get_context("spawn")
    done, stop, go = context.Event(), context.Event(), context.Barrier(2, timeout=BOUND_S)
    processes = [start(sync_main, hubspot.url, db, False, stop, go)]
    processes.append(
        start(
            worker_main, hubspot.url, db, contacts, now - timedelta(hours=1), 2, ("open",), done, go
        )
    )
    race(processes, done, stop)
    runner.flush()

    states = runner.store.get_contacts(contacts)
    lost = [
        c
        for c in contacts
        if states[c].engagement_score != 5
        or states[c].campaign_status not in (Status.ACTIVE, Status.REACTIVATED)
    ]
    assert lost == []
    crm = runner.connector.read_records(contacts)
    stale = [
        c
        for c in contacts
        if (crm[c].values["campaign_status"], crm[c].values["engagement_score"])
        != (states[c].campaign_status.value, 5)
    ]
    assert stale == []
    for cid in contacts:
        assert f"open-0-{cid}" in {d.cause for d in runner.store.ledger_for(cid)}
