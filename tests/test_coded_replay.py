"""`replay` on the coded path against the object pipeline: same states, ledger (as explain
and report read it), bad lines, duplicates and counts, from one messy events file."""

from __future__ import annotations

import io
import json
import multiprocessing
import random
import sqlite3
from datetime import timedelta

import pytest

from crm_elasticity.core.coded.ledger import coded_decisions
from crm_elasticity.core.coded.ledger import ledger_for as coded_ledger_for
from crm_elasticity.core.explain import explain_contact
from crm_elasticity.core.replay import BadLine, replay_file
from crm_elasticity.core.report import render_report
from tests.experiments.helpers import mapping
from tests.helpers import T0

CAPPED = "\neligibility:\n  frequency_cap: {max_sends: 1, window_days: 30}\n"
KINDS = (
    ["send"] * 6
    + ["open"] * 3
    + ["click", "high_intent_visit", "unsubscribe", "hard_bounce", "resubscribe", "enroll"]
)


def messy_events(path, seed: int, n: int = 1500, contacts: int = 40) -> None:
    """Out of order within and across batches, duplicate ids, and bad lines of every kind."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        day = rng.uniform(0, 250)
        item = {
            "event_id": f"e{i}",
            "contact_id": f"c{rng.randrange(contacts)}",
            "type": rng.choice(KINDS),
            "occurred_at": (T0 + timedelta(days=day)).isoformat(),
        }
        roll = rng.random()
        if roll < 0.03:
            item["event_id"] = f"e{rng.randrange(max(i, 1))}"  # a redelivery (or a clash)
        elif roll < 0.04:
            item["occurred_at"] = item["occurred_at"][:19]  # no timezone
        elif roll < 0.05:
            item["type"] = "bounce"  # unknown to the policy
        elif roll < 0.055:
            item["extra"] = 1
        elif roll < 0.06:
            lines.append("{not json")
            continue
        elif roll < 0.065:
            lines.append("   ")
            continue
        elif roll < 0.07:
            item["occurred_at"] = "2026-02-01T10:00:00.12345678+02:00"
        lines.append(json.dumps(item))
    path.write_text("\n".join(lines) + "\n")


def _run(tmp_path, m, events, engine, workers=1, **kw):
    bad: list[tuple[int, str]] = []
    store_path = tmp_path / f"{engine}.sqlite3"
    result = replay_file(
        m,
        events,
        store_path,
        engine=engine,
        batch_size=97,
        workers=workers,
        on_bad_line=lambda b: bad.append((b.line, b.problem)),
        **kw,
    )
    sink = io.StringIO()
    result.write_states(sink)
    result.store.close()
    return result, bad, sink.getvalue(), store_path


def _table(path, sql):
    db = sqlite3.connect(path)
    try:
        return sorted(db.execute(sql).fetchall())
    finally:
        db.close()


@pytest.mark.parametrize(
    ("extra", "seed", "until", "workers"),
    [
        ("", 1, None, 1),
        (CAPPED, 2, None, 1),
        ("", 3, T0 + timedelta(days=150), 1),
        (CAPPED, 5, None, 3),
    ],
)
def test_coded_replay_decides_and_shows_what_the_object_replay_does(
    tmp_path, monkeypatch, extra, seed, until, workers
):
    if seed == 2:
        # A contact over many chunks.
        monkeypatch.setattr("crm_elasticity.core.coded.ledger.CHUNK_ROWS", 64)
    m = mapping(extra)
    events = tmp_path / "events.jsonl"
    messy_events(events, seed)
    old, old_bad, old_out, old_path = _run(tmp_path, m, events, "object", until=until)
    new, new_bad, new_out, new_path = _run(
        tmp_path, m, events, "coded", until=until, workers=workers
    )
    assert new_bad == old_bad and old_bad
    assert new_out == old_out
    assert (new.bad_lines, new.after_until, new.until) == (
        old.bad_lines,
        old.after_until,
        old.until,
    )
    assert new.unknown == old.unknown and old.unknown.keys["extra"] > 0  # extra columns
    for name in ("applied", "duplicates", "decisions", "events_in", "transitions"):
        assert getattr(new.stats, name) == getattr(old.stats, name), name
    assert old.stats.duplicates > 0
    for n in range(40):
        cid = f"c{n}"
        from crm_elasticity.core.sqlite_store import SQLiteStore

        store = SQLiteStore(old_path)
        expected = store.ledger_for(cid)
        store.close()
        assert coded_ledger_for(new_path, cid) == expected
        assert explain_contact(new_path, cid) == explain_contact(old_path, cid)
    # The direct read tells a store without a coded ledger from a contact without decisions.
    assert coded_decisions(old_path, "c1") is None
    assert coded_decisions(new_path, "nobody") == []
    assert explain_contact(new_path, "nobody") is None
    assert _table(new_path, "SELECT * FROM ledger_rollup") == _table(
        old_path, "SELECT * FROM ledger_rollup"
    )
    assert _table(new_path, "SELECT * FROM cursors") == _table(old_path, "SELECT * FROM cursors")
    # The contacts table itself (written straight from the coded states), column for column.
    assert _table(new_path, "SELECT * FROM contacts") == _table(old_path, "SELECT * FROM contacts")
    for since in (None, T0 + timedelta(days=40), T0 + timedelta(days=61, hours=13)):
        old_report = json.loads(render_report(old_path, "json", since=since, mapping=m))
        new_report = json.loads(render_report(new_path, "json", since=since, mapping=m))
        for report in (old_report, new_report):
            report.pop("store"), report.pop("generated_at")
        assert new_report == old_report, since


def test_strict_stops_at_the_first_bad_line_with_the_same_problem(tmp_path):
    m = mapping()
    events = tmp_path / "events.jsonl"
    messy_events(events, 4)
    problems = []
    for engine, workers in (("object", 1), ("coded", 1), ("coded", 2)):
        with pytest.raises(BadLine) as caught:
            replay_file(
                m,
                events,
                tmp_path / f"{engine}{workers}.sqlite3",
                strict=True,
                engine=engine,
                workers=workers,
            )
        problems.append((caught.value.line, caught.value.problem))
    assert problems[0] == problems[1] == problems[2]
    assert not list(tmp_path.glob("*.shard*"))  # no shard left behind


def test_progress_reaches_the_whole_file_across_workers(tmp_path):
    events = tmp_path / "events.jsonl"
    messy_events(events, 6, n=25_000)
    seen: list[tuple[int, int]] = []
    replay_file(
        mapping(),
        events,
        tmp_path / "r.sqlite3",
        workers=2,
        progress=lambda done, lines: seen.append((done, lines)),
    )
    assert seen[-1] == (events.stat().st_size, len(events.read_bytes().splitlines()))
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)


@pytest.mark.parametrize(("engine", "workers"), [("coded", 1), ("coded", 2), ("object", 1)])
def test_a_run_stopped_part_way_keeps_the_previous_store_and_leaves_no_partial_file(
    tmp_path, engine, workers
):
    events = tmp_path / "events.jsonl"
    messy_events(events, 7, n=400)
    store_path = tmp_path / "replay.sqlite3"
    replay_file(mapping(), events, store_path).store.close()  # a complete earlier run
    before = _table(store_path, "SELECT * FROM contacts")
    assert before
    with events.open("a") as handle:
        handle.write("{broken\n")
    with pytest.raises(BadLine):
        replay_file(mapping(), events, store_path, strict=True, engine=engine, workers=workers)
    assert _table(store_path, "SELECT * FROM contacts") == before

    def refuse(_result):
        raise RuntimeError("a limit the caller checks")

    with pytest.raises(RuntimeError):
        replay_file(
            mapping(), events, store_path, engine=engine, workers=workers, before_publish=refuse
        )
    assert _table(store_path, "SELECT * FROM contacts") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "replay.sqlite3"]


def test_events_read_from_crm_properties_take_the_object_path(tmp_path):
    """A resent property value counts once: only the object pipeline tracks that, so a file
    with observations is replayed there (and decides as it always did)."""
    m = mapping()
    lines = []
    for n, page in enumerate(["/pricing", "/pricing", "/demo"]):
        lines.append(
            json.dumps(
                {
                    "event_id": f"v{n}",
                    "contact_id": "c1",
                    "type": "high_intent_visit",
                    "occurred_at": (T0 + timedelta(days=n)).isoformat(),
                    "observed": {
                        "property": "last_page",
                        "value": page,
                        "changed_at": (T0 + timedelta(days=0 if n < 2 else 2)).isoformat(),
                    },
                }
            )
        )
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    old, _, old_out, _ = _run(tmp_path, m, events, "object")
    new, _, new_out, new_path = _run(tmp_path, m, events, "coded")
    assert new_out == old_out
    assert (new.stats.applied, new.stats.duplicates) == (old.stats.applied, old.stats.duplicates)
    assert new.stats.duplicates == 1
    assert _table(new_path, "SELECT COUNT(*) FROM ledger") != [(0,)]  # the text ledger


def test_out_lines_are_the_state_json_of_every_stored_contact(tmp_path):
    """`--out` formats the contacts table's rows directly: the same bytes as `json.dumps` of
    `state_json` of each state read back, for awkward ids, reasons, scores and experiments."""
    from crm_elasticity.core.coded.states import write_state_lines
    from crm_elasticity.core.models import ContactState, Status, SuppressionReason
    from crm_elasticity.core.replay import state_json
    from crm_elasticity.core.sqlite_store import SQLiteStore
    from crm_elasticity.core.store import Batch

    at = T0 + timedelta(microseconds=123_456)
    states = [
        ContactState(
            'q"uote\\d',
            Status.SUPPRESSED,
            T0,
            at,
            at,
            T0,
            0.1 + 0.2,
            3.0,
            suppression_reason=SuppressionReason.HARD_BOUNCE,
        ),
        ContactState(
            "ünïcode ☃",
            Status.ENGAGED,
            T0,
            at,
            at,
            T0,
            25.0,
            25.0,
            last_engagement_date=at,
            reactivation_cycle=2,
            reactivation_step=1,
            unanswered_sends=3,
            experiments={"subject": "b", "holdout": "héld"},
        ),
        ContactState("plain", Status.ACTIVE, T0, T0, T0, T0, 1e-7, 1e22),
    ]
    store = SQLiteStore(tmp_path / "s.sqlite3")
    store.commit(Batch(contacts=states, next_due=[None] * len(states)))
    expected = "".join(
        json.dumps(state_json(s)) + "\n" for page in store.iter_contacts() for s in page
    )
    store.close()
    sink = io.StringIO()
    assert write_state_lines(str(tmp_path / "s.sqlite3"), sink) == 3
    assert sink.getvalue() == expected


def test_times_are_formatted_as_iso_utc_formats_them():
    from hypothesis import given
    from hypothesis import strategies as st

    from crm_elasticity.core.coded.codes import from_us, to_us
    from crm_elasticity.core.coded.states import _IsoText
    from crm_elasticity.core.models import EARLIEST_INSTANT, LATEST_INSTANT, iso_utc

    iso = _IsoText()
    earliest = to_us(EARLIEST_INSTANT)
    latest = to_us(LATEST_INSTANT) - 1

    whole_seconds = st.integers(earliest // 10**6, latest // 10**6).map(lambda s: s * 10**6)

    @given(
        st.integers(earliest, latest)
        | whole_seconds
        | st.sampled_from([earliest, latest, 1, 10**6 - 1])
    )
    def check(us):
        assert iso[us] == iso_utc(from_us(us))

    check()


def test_times_formatted_at_once_match_iso_utc():
    from hypothesis import given
    from hypothesis import strategies as st

    from crm_elasticity.core.coded.codes import from_us, to_us
    from crm_elasticity.core.coded.states import iso_texts
    from crm_elasticity.core.models import EARLIEST_INSTANT, LATEST_INSTANT, iso_utc

    earliest = to_us(EARLIEST_INSTANT)
    latest = to_us(LATEST_INSTANT) - 1
    year_one = -62_135_596_800_000_000  # before the epoch: formatted one by one
    whole_seconds = st.integers(earliest // 10**6, latest // 10**6).map(lambda s: s * 10**6)
    times = (
        st.integers(earliest, latest)
        | whole_seconds
        | st.integers(year_one, -1)
        | st.sampled_from([earliest, latest, 1, 10**6 - 1, year_one])
    )

    @given(st.lists(times, max_size=12))
    def check(us):
        assert iso_texts(us) == [iso_utc(from_us(t)) for t in us]

    check()


@pytest.mark.parametrize(
    ("stand_in", "problem"),
    [
        ("work_raising_on_shard_1", "RuntimeError('the disk went away')"),
        ("work_killed_on_shard_1", "worker 1 ended without an answer"),
    ],
)
def test_a_worker_that_fails_or_is_killed_fails_the_run_and_leaves_no_file_behind(
    tmp_path, monkeypatch, stand_in, problem
):
    from tests import coded_workers

    events = tmp_path / "events.jsonl"
    messy_events(events, 8, n=3000)
    store_path = tmp_path / "replay.sqlite3"
    replay_file(mapping(), events, store_path).store.close()  # a complete earlier run
    before = _table(store_path, "SELECT * FROM contacts")
    monkeypatch.setattr(
        "crm_elasticity.core.coded.parallel._work", getattr(coded_workers, stand_in)
    )
    with pytest.raises(RuntimeError) as caught:
        replay_file(mapping(), events, store_path, workers=3, batch_size=97)
    assert str(caught.value) == f"replay worker 1 failed: {problem}"
    assert not multiprocessing.active_children()  # the other workers were stopped
    assert _table(store_path, "SELECT * FROM contacts") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "replay.sqlite3"]


def test_workers_write_one_store_whatever_their_number(tmp_path):
    """Shards write their chunks, contacts and roll-ups into the same file, each write its
    own transaction: any number of them leaves the store one worker leaves."""
    events = tmp_path / "events.jsonl"
    messy_events(events, 9, n=4000, contacts=300)
    tables = (
        "SELECT * FROM contacts",
        "SELECT * FROM ledger_rollup",
        "SELECT * FROM cursors",
        "SELECT contact_id, shard, arm, segment FROM coded_contacts",
    )
    found = {}
    for workers in (1, 2, 5):
        path = tmp_path / f"w{workers}.sqlite3"
        replay_file(mapping(), events, path, workers=workers, batch_size=101).store.close()
        found[workers] = (
            [_table(path, sql) for sql in tables[:3]],
            [coded_ledger_for(path, f"c{n}") for n in range(300)],
        )
        shards = {row[1] for row in _table(path, tables[3])}
        assert shards == set(range(workers))
    assert found[1] == found[2] == found[5]
    assert not [p.name for p in tmp_path.iterdir() if "shard" in p.name or "partial" in p.name]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_coded_run_written_without_a_journal_leaves_a_whole_store_in_wal_mode(tmp_path, workers):
    events = tmp_path / "events.jsonl"
    messy_events(events, 7)
    _, _, _, path = _run(tmp_path, mapping(""), events, "coded", workers=workers)
    db = sqlite3.connect(path)
    try:
        # Readers beside a writer (`serve`, a later sync) need WAL; the run wrote with none.
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT COUNT(*) FROM coded_chunks").fetchone()[0] > 0
    finally:
        db.close()
    assert not path.with_name(f"{path.name}-journal").exists()
