"""The `Connector` contract (connectors/base.py), run against every vendor connector and its
fake: ids ascending in every scan, missing ids absent from reads, one hand-off task per key even
when a create request took effect but its answer was lost, cursors that resume without gaps
or repeats, a write result for every record, and history exports whose event ids are stable
and whose page cursors resume with nothing lost. A third vendor passes these before anything
uses it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from crm_elasticity.connectors.base import ConnectorError, CrmRecord, HandoffTask, HistoryPage
from tests.contract.vendors import AFTER_COMMIT, Vendor
from tests.helpers import writes

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SINCE = NOW - timedelta(days=1)

Scan = Callable[[Vendor, str | None], Iterator[list[CrmRecord]]]
SCANS: dict[str, Scan] = {
    "iter_all": lambda v, after: v.connector.iter_all(after),
    "find_due": lambda v, after: v.connector.find_due(NOW, after),
    "find_engaged_since": lambda v, after: v.connector.find_engaged_since(SINCE, after),
}


def _dormant_cooled(vendor: Vendor, n: int) -> list[str]:
    """Dormant, cooling over, no reactivation step yet: a time rule is due."""
    return vendor.add_contacts(
        n, {"campaign_status": "Dormant", "status_changed_at": NOW - timedelta(days=40)}
    )


def _engaged(vendor: Vendor, n: int) -> list[str]:
    return vendor.add_contacts(
        n,
        {
            "campaign_status": "Active",
            "engagement_score": 0,
            "last_engagement_date": NOW - timedelta(days=3),
            "status_changed_at": NOW - timedelta(days=3),
        },
        engaged_at=NOW - timedelta(hours=2),
    )


def _quiet(vendor: Vendor, n: int) -> list[str]:
    """Suppressed long ago, nothing new: no time rule, no recent signal."""
    return vendor.add_contacts(
        n,
        {"campaign_status": "Suppressed", "status_changed_at": NOW - timedelta(days=400)},
        engaged_at=NOW - timedelta(days=300),
    )


def _seed_for(scan: str, vendor: Vendor, n: int) -> list[str]:
    """Contacts `scan` must find (and a few it must not)."""
    _quiet(vendor, 3)
    if scan == "find_due":
        wanted = _dormant_cooled(vendor, n)
    elif scan == "find_engaged_since":
        wanted = _engaged(vendor, n)
    else:
        wanted = _dormant_cooled(vendor, n // 2) + _engaged(vendor, n - n // 2)
    _quiet(vendor, 3)
    return wanted


def _ids(pages: Iterator[list[CrmRecord]]) -> list[str]:
    return [r.contact_id for page in pages for r in page]


def _assert_ascending(vendor: Vendor, ids: list[str]) -> None:
    keys = [vendor.id_key(i) for i in ids]
    assert keys == sorted(set(keys)), "ids must be strictly ascending: no repeats, no going back"


def _task(key: str, contact_id: str) -> HandoffTask:
    return HandoffTask(
        key=key,
        contact_id=contact_id,
        owner_id=None,
        subject="Follow up",
        body="Engaged in the newsletter program",
        priority="HIGH",
        due_at=NOW + timedelta(days=1),
    )


# ---- reads ---------------------------------------------------------------------------------------


def test_read_records_returns_present_ids_once_and_omits_missing_ones(vendor: Vendor) -> None:
    ids = _dormant_cooled(vendor, 3)
    found = vendor.connector.read_records([ids[2], vendor.missing_id(), ids[0], ids[2], ids[1]])
    assert set(found) == set(ids)
    assert all(found[i].contact_id == i for i in ids)
    assert {r.values["campaign_status"] for r in found.values()} == {"Dormant"}
    assert vendor.connector.read_records([vendor.missing_id()]) == {}
    assert vendor.connector.read_records([]) == {}


@pytest.mark.parametrize("scan", sorted(SCANS))
def test_scans_page_in_ascending_id_order_and_find_what_they_must(
    vendor: Vendor, scan: str
) -> None:
    wanted = _seed_for(scan, vendor, 2 * vendor.page_size + 17)
    pages = list(SCANS[scan](vendor, None))
    assert len(pages) >= 3, "the seed spans several pages"
    assert all(len(page) <= vendor.page_size for page in pages)
    found = [r.contact_id for page in pages for r in page]
    _assert_ascending(vendor, found)
    assert set(wanted) <= set(found)
    if scan == "iter_all":
        assert found == sorted(vendor.all_contact_ids(), key=vendor.id_key)


@pytest.mark.parametrize("scan", sorted(SCANS))
def test_a_scan_interrupted_after_a_page_resumes_from_its_cursor(vendor: Vendor, scan: str) -> None:
    _seed_for(scan, vendor, 2 * vendor.page_size + 17)
    whole = _ids(SCANS[scan](vendor, None))
    pages = SCANS[scan](vendor, None)
    first = next(pages)
    pages.close()  # the process stops here; the runner kept the last id as its cursor
    cursor = first[-1].contact_id
    rest = _ids(SCANS[scan](vendor, cursor))
    assert [r.contact_id for r in first] + rest == whole, "no gap and no repeat at the cursor"
    middle = whole[len(whole) // 2]
    assert _ids(SCANS[scan](vendor, middle)) == whole[whole.index(middle) + 1 :]
    assert _ids(SCANS[scan](vendor, whole[-1])) == []


@pytest.mark.parametrize("scan", sorted(SCANS))
def test_a_scan_broken_by_failures_resumes_after_the_last_page_received(
    vendor: Vendor, scan: str
) -> None:
    _seed_for(scan, vendor, 2 * vendor.page_size + 17)
    whole = _ids(SCANS[scan](vendor, None))
    pages = SCANS[scan](vendor, None)
    received = [next(pages)]
    vendor.fail_reads()
    with pytest.raises(ConnectorError):
        received.extend(pages)
    vendor.heal_reads()
    cursor = received[-1][-1].contact_id
    assert _ids(iter(received)) + _ids(SCANS[scan](vendor, cursor)) == whole


# ---- writes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["few", "many"])
def test_every_record_written_is_either_written_or_failed_with_a_reason(
    vendor: Vendor, size: str
) -> None:
    n = 5 if size == "few" else vendor.write_many
    ids = _dormant_cooled(vendor, n)
    rejected = ids[1]
    vendor.reject_writes([rejected])
    missing = vendor.missing_id()
    values = {"campaign_status": "Active", "engagement_score": 7, "status_changed_at": NOW}
    result = vendor.connector.write_records(writes({cid: values for cid in [*ids, missing]}))
    written, failed = set(result.written), set(result.failed)
    assert written | failed == {*ids, missing}, "no record lost"
    assert not written & failed, "no record both written and failed"
    assert len(result.written) == len(written), "no record reported twice"
    assert {rejected, missing} <= failed
    assert all(isinstance(m, str) and m.strip() for m in result.failed.values())
    back = vendor.connector.read_records(sorted(written))
    assert {(r.values["campaign_status"], r.values["engagement_score"]) for r in back.values()} == {
        ("Active", 7)
    }
    assert back[ids[0]].values["status_changed_at"] == NOW


# ---- hand-off tasks ------------------------------------------------------------------------------


def test_one_task_per_key_when_offered_again(vendor: Vendor) -> None:
    contacts = _engaged(vendor, 3)
    tasks = [_task(f"handoff-{c}", c) for c in contacts]
    first = vendor.connector.create_tasks([*tasks, tasks[0]])
    again = vendor.connector.create_tasks(tasks)
    assert sorted(first.written) == sorted(again.written) == sorted(t.key for t in tasks)
    assert (first.failed, again.failed) == ({}, {})
    assert vendor.tasks_per_contact() == dict.fromkeys(contacts, 1)


def _offer_until_written(vendor: Vendor, tasks: list[HandoffTask], rounds: int = 3) -> set[str]:
    """What the runner does: keep owed tasks and offer them again on the next flush."""
    written: set[str] = set()
    lost: list[ConnectorError] = []
    for _ in range(rounds):
        owed = [t for t in tasks if t.key not in written]
        if not owed:
            break
        try:
            result = vendor.connector.create_tasks(owed)
        except ConnectorError as exc:
            lost.append(exc)
            continue
        assert not result.failed, result.failed
        written |= set(result.written)
    assert all(exc.retriable for exc in lost), "a lost answer must stay owed, not fail for good"
    return written


@pytest.mark.parametrize("how", AFTER_COMMIT)
def test_one_task_per_key_when_the_create_took_effect_but_the_answer_was_lost(
    vendor: Vendor, how: str
) -> None:
    contacts = _engaged(vendor, 4)
    tasks = [_task(f"handoff-{c}", c) for c in contacts]
    vendor.fail_task_create_after_commit(how)
    written = _offer_until_written(vendor, tasks)
    assert vendor.faults_pending() == 0, "the injected failure happened"
    assert written == {t.key for t in tasks}
    assert vendor.tasks_per_contact() == dict.fromkeys(contacts, 1), "no duplicate hand-off"


# ---- history ---------------------------------------------------------------------------------


def _history(vendor: Vendor, cursor: dict[str, str] | None) -> list[HistoryPage]:
    return list(vendor.connector.export_history(SINCE, NOW, cursor))


def test_a_history_export_has_stable_ids_and_resumes_from_any_page_cursor(vendor: Vendor) -> None:
    contacts = vendor.add_contacts(3, {})
    count = 2 * vendor.history_page + 17
    for n, contact in enumerate(contacts):
        vendor.record_opens(
            contact, [SINCE + timedelta(seconds=3 * k + n) for k in range(count // 3 + 1)]
        )
    pages = _history(vendor, None)
    whole = [e.event_id for p in pages for e in p.events]
    assert len(whole) == len(set(whole)) >= count
    assert {e.type for p in pages for e in p.events} == {"open"}
    assert {e.event_id for p in _history(vendor, None) for e in p.events} == set(whole)
    with_events = [i for i, p in enumerate(pages) if p.events]
    assert len(with_events) >= 3
    for i in with_events[:-1]:
        before = {e.event_id for p in pages[: i + 1] for e in p.events}
        after = {e.event_id for p in _history(vendor, pages[i].cursor) for e in p.events}
        assert before | after == set(whole), "nothing lost at the cursor"
        assert len(before & after) <= 1, "at most the event at the cursor's instant again"
    ended = [e for p in _history(vendor, pages[-1].cursor) for e in p.events]
    assert len(ended) <= 1, "the last page's cursor (the checkpoint at the end) reads nothing again"
