"""A run on a private store (`SQLiteStore.bulk`) lands whole or not at all and reads its own
deferred writes; it ends with the same rows as batch-by-batch commits."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_elasticity.core.models import Status, SuppressionReason, iso_utc
from crm_elasticity.core.pipeline import Pipeline
from crm_elasticity.core.sqlite_rows import changes_json
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.store import Batch, ConflictError, StoreError
from tests.helpers import T0, days


def history(ev, contacts=30):
    kinds = ["open", "send", "send", "click", "send", "high_intent_visit", "unsubscribe"]
    return [
        ev(kinds[(i * 7 + c) % len(kinds)], (i * 13 + c) % 200, contact=f"c{c:03d}")
        for c in range(contacts)
        for i in range(12)
    ]


def run(store, policy, events, bulk):
    pipeline = Pipeline(store, policy)
    if bulk:
        with store.bulk():
            pipeline.process_stream(events, batch_size=50)
            pipeline.tick(T0 + days(300), page_size=7)
    else:
        pipeline.process_stream(events, batch_size=50)
        pipeline.tick(T0 + days(300), page_size=7)


def dump(store, table, order):
    # A contact's version counts its writes, and a bulk run writes each contact once: every
    # other column must match.
    columns = [r[1] for r in store.execute(f"PRAGMA table_info({table})") if r[1] != "version"]
    return store.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")  # noqa: S608


def test_a_bulk_run_ends_with_the_rows_of_batch_commits(ev, policy):
    events = history(ev)
    plain, bulk = SQLiteStore(":memory:"), SQLiteStore(":memory:")
    run(plain, policy, events, bulk=False)
    run(bulk, policy, events, bulk=True)
    tables = (
        ("contacts", "contact_id"),
        ("ledger", "seq"),
        ("ledger_rollup", "1,2,3,4,5,6,7,8,9"),
        ("processed_events", "key"),
    )
    for table, order in tables:
        assert dump(bulk, table, order) == dump(plain, table, order), table
    indexes = {row[0] for row in bulk.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "ledger_contact" in indexes
    assert bulk.ledger_for("c001") == plain.ledger_for("c001")


def test_a_run_over_its_memory_limit_writes_contacts_early_and_ends_the_same(ev, policy):
    events = history(ev)
    plain, bounded = SQLiteStore(":memory:"), SQLiteStore(":memory:", defer_limit=4)
    run(plain, policy, events, bulk=False)
    run(bounded, policy, events, bulk=True)
    for table, order in (("contacts", "contact_id"), ("ledger", "seq")):
        assert dump(bounded, table, order) == dump(plain, table, order), table


def test_reads_inside_a_run_see_its_deferred_states(ev, policy):
    store = SQLiteStore(":memory:")
    pipeline = Pipeline(store, policy)
    with store.bulk():
        pipeline.process([ev("open", 0, contact="a"), ev("send", 1, contact="b")])
        assert store.get_contacts(["a", "b"])["a"].engagement_score == 5.0
        assert store.due_contacts(T0 + days(200)) == ["a", "b"]
        assert store.due_contacts(T0 + days(200), after="a") == ["b"]
        assert store.count_contacts() == 2
        pipeline.process([ev("click", 2, contact="a")])
        assert store.get_contacts(["a"])["a"].engagement_score == 15.0
        assert store.execute("SELECT engagement_score FROM contacts WHERE contact_id='a'") == [
            (15.0,)
        ]
    assert store.get_contacts(["a"])["a"].engagement_score == 15.0


def test_an_exception_inside_a_run_discards_all_of_it(tmp_path, ev, policy):
    path = tmp_path / "run.sqlite3"
    store = SQLiteStore(path)

    def crash_mid_run():
        with store.bulk():
            Pipeline(store, policy).process_stream(history(ev), batch_size=50)
            raise RuntimeError("crash mid-run")

    with pytest.raises(RuntimeError):
        crash_mid_run()
    store.close()
    reopened = SQLiteStore(path)
    assert reopened.count_contacts() == 0
    assert reopened.execute("SELECT COUNT(*) FROM ledger") == [(0,)]
    assert reopened.execute("SELECT COUNT(*) FROM processed_events") == [(0,)]


def test_others_see_nothing_until_the_run_ends(tmp_path, ev, policy):
    path = tmp_path / "run.sqlite3"
    store, reader = SQLiteStore(path), SQLiteStore(path)
    with store.bulk():
        Pipeline(store, policy).process([ev("open", 0)])
        assert reader.count_contacts() == 0
    assert reader.count_contacts() == 1


def test_a_failed_batch_voids_the_run(tmp_path, ev, policy):
    path = tmp_path / "run.sqlite3"
    store = SQLiteStore(path)
    pipeline = Pipeline(store, policy)

    def run_with_a_failed_batch():
        with store.bulk():
            pipeline.process([ev("open", 0, event_id="e1")])
            applied = pipeline.prepare_events([ev("click", 1)])  # changes the run's own state
            applied.batch.event_keys.append("e1")  # already claimed: the batch must not land
            with pytest.raises(ConflictError):
                store.commit(applied.batch)
            with pytest.raises(StoreError, match="earlier batch"):
                store.commit(Batch(cursors={"k": "v"}))

    with pytest.raises(StoreError, match="nothing of the run"):
        run_with_a_failed_batch()
    assert store.count_contacts() == 0
    assert store.execute("SELECT COUNT(*) FROM ledger") == [(0,)]
    assert store.get_cursor("k") is None
    store.commit(Batch(cursors={"k": "v"}))  # the store itself stays usable
    assert SQLiteStore(path).get_cursor("k") == "v"


values = st.one_of(  # what the engine records: 64-bit integers, finite floats, UTC times
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(list(Status) + list(SuppressionReason)),
    st.datetimes(timezones=st.just(UTC)),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
)


names = st.sampled_from(
    ["engagement_score", "campaign_status", "experiments", "last_engagement_date"]
)


@settings(deadline=None)  # (a first example can pass 200 ms on a loaded machine)
@given(st.dictionaries(names, st.tuples(values, values)))
def test_changes_json_reads_back_like_json_dumps(changes):
    fast = json.loads(changes_json(changes))
    slow = json.loads(json.dumps(changes, default=iso_utc))
    assert json.dumps(fast, sort_keys=True) == json.dumps(slow, sort_keys=True)


def test_changes_json_keeps_times_in_utc_iso():
    at = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    assert json.loads(changes_json({"t": (None, at)})) == {"t": [None, "2026-03-01T09:30:00+00:00"]}


def _state(cid: str):
    from crm_elasticity.core.models import ContactState

    return ContactState(
        contact_id=cid,
        campaign_status=Status.ACTIVE,
        enrolled_at=T0,
        as_of=T0,
        status_changed_at=T0,
        stream_entered_at=T0,
    )


def test_due_pages_of_a_run_over_its_memory_limit_skip_no_written_contact():
    """Contacts written early (the run held more than its limit) and held again with a later
    due time leave stale due rows: a page must neither return them nor skip the written
    contacts past them (a replay of 300K contacts lost time rules that way)."""
    store = SQLiteStore(":memory:", defer_limit=4)
    ids = [f"c{i:03d}" for i in range(40)]
    soon, later, now = T0 + days(1), T0 + days(100), T0 + days(2)
    with store.bulk():
        for cid in ids:  # every fifth commit writes the held states out
            store.commit(Batch(contacts=[_state(cid)], next_due=[soon]))
        for cid in ("c001", "c002", "c003"):  # held again, no longer due by `now`
            store.commit(Batch(contacts=[_state(cid)], next_due=[later]))
        store.commit(Batch(contacts=[_state("c030")], next_due=[soon]))  # held again, due
        pages, after = [], ""
        while page := store.due_contacts(now, after=after, limit=5):
            pages.append(page)
            after = page[-1]
    found = [cid for page in pages for cid in page]
    assert found == [cid for cid in ids if cid not in ("c001", "c002", "c003")]
    assert all(len(page) <= 5 for page in pages)
