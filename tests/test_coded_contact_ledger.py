"""`explain`'s read of one contact from the coded ledger (`core.coded.contact_ledger`): on the
store's own connection, without numpy, and decisions exactly as the text ledger hands them out."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from crm_elasticity.core.coded.contact_ledger import coded_contact_decisions
from crm_elasticity.core.explain import explain_contact
from crm_elasticity.core.replay import replay_file
from crm_elasticity.core.sqlite_rows import decision_from_row, decision_row
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.experiments.helpers import mapping
from tests.test_coded_replay import messy_events

ROOT = Path(__file__).resolve().parents[1]


def _replay(tmp_path: Path, engine: str) -> Path:
    events = tmp_path / "events.jsonl"
    if not events.exists():
        messy_events(events, seed=4, n=600, contacts=12)
    path = tmp_path / f"{engine}.sqlite3"
    result = replay_file(mapping(), events, path, engine=engine, batch_size=97)
    result.store.close()
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("stores")
    return _replay(tmp, "object"), _replay(tmp, "coded")


def test_decisions_decode_as_the_text_ledger_hands_them_out(stores):
    """Decoded straight into the text ledger's form: through its row and back, unchanged
    (times as ISO text and statuses as their values inside `changes`)."""
    _, coded_path = stores
    db = sqlite3.connect(coded_path)
    try:
        decisions = [d for n in range(12) for d in coded_contact_decisions(db, f"c{n}") or []]
    finally:
        db.close()
    assert any(d.actions for d in decisions) and any(d.from_status for d in decisions)
    for d in decisions:
        assert d == decision_from_row(decision_row(d))
        assert all(
            type(v) in (str, int, float, dict, type(None))
            for pair in d.changes.values()
            for v in pair
        )


def test_a_coded_store_reads_on_its_own_connection_as_the_text_store_does(stores, monkeypatch):
    text_path, coded_path = stores
    text = SQLiteStore(text_path)
    coded = SQLiteStore(coded_path)
    try:
        opened: list[object] = []
        real_connect = sqlite3.connect
        monkeypatch.setattr(
            sqlite3, "connect", lambda *a, **k: opened.append(a) or real_connect(*a, **k)
        )
        for n in range(12):
            cid = f"c{n}"
            assert coded.contact_decisions(cid) == text.contact_decisions(cid)
            assert coded.contact_decisions(cid), cid
        assert opened == []  # no second connection to the file
        assert coded.contact_decisions("nobody") == []
    finally:
        text.close()
        coded.close()
    db = sqlite3.connect(text_path)
    try:
        assert coded_contact_decisions(db, "c1") is None  # no coded ledger: the text one holds it
    finally:
        db.close()


def test_explain_opens_the_file_once(stores, monkeypatch):
    text_path, coded_path = stores
    expected = explain_contact(text_path, "c3")
    opened: list[object] = []
    real_connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3, "connect", lambda *a, **k: opened.append(a) or real_connect(*a, **k)
    )
    assert explain_contact(coded_path, "c3") == expected
    assert len(opened) == 1
    opened.clear()
    explain_contact(text_path, "c3")
    assert len(opened) == 1


def test_explain_of_a_coded_store_leaves_numpy_unloaded(stores):
    """numpy is the coded writer's; the CLI's `explain` pays its import for nothing."""
    text_path, coded_path = stores
    check = (
        "import sys\n"
        "from crm_elasticity.core.explain import explain_contact\n"
        f"text = explain_contact({str(coded_path)!r}, 'c3')\n"
        "assert text, 'no decisions read'\n"
        "print('numpy' in sys.modules)\n"
        "print(text)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, check=True
    )
    loaded, shown = run.stdout.split("\n", 1)
    assert loaded == "False"
    assert shown.rstrip("\n") == explain_contact(text_path, "c3")


@pytest.mark.parametrize(
    ("part_bytes", "most_rows"),
    [
        (400, 3),  # parts of up to three rows
        (100, 1),  # a row larger than a part: each row is a part of its own
    ],
)
def test_a_contact_over_many_parts_and_chunks_explains_as_the_object_path(
    tmp_path, monkeypatch, part_bytes, most_rows
):
    monkeypatch.setattr("crm_elasticity.core.coded.ledger.CHUNK_ROWS", 16)
    monkeypatch.setattr("crm_elasticity.core.coded.ledger.PART_BYTES", part_bytes)
    text_path, coded_path = _replay(tmp_path, "object"), _replay(tmp_path, "coded")
    db = sqlite3.connect(coded_path)
    try:
        sizes = [n for (n,) in db.execute("SELECT length(rows) / 120 FROM coded_parts")]
        # (a contact's rows: 4 bytes of location each)
        (spans,) = db.execute("SELECT max(length(rows) / 4) FROM coded_contacts").fetchone()
        chunks = db.execute("SELECT count(*) FROM coded_chunks").fetchone()[0]
    finally:
        db.close()
    assert max(sizes) == most_rows and spans > 20 and chunks > 10
    for n in range(12):
        cid = f"c{n}"
        assert explain_contact(coded_path, cid) == explain_contact(text_path, cid), cid
