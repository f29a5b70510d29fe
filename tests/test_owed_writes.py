"""Owed CRM writes are typed (`core.owed`); a store from an earlier release, whose outbox kept
only the key, still drains."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from crm_elasticity.core.owed import OwedKind, OwedWrite
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.store import Batch


def test_an_outbox_an_earlier_release_wrote_drains_typed(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL "
            "UNIQUE, payload TEXT NOT NULL, holder TEXT, leased_until REAL)"
        )
        db.executemany(
            "INSERT INTO outbox (key, payload) VALUES (?, ?)",
            [
                ("fields:c1", '{"a": 1}'),
                ("task:c:2:e1:2025-01-01T00:00:00+00:00", '{"contact_id": "c:2"}'),
            ],
        )
    store = SQLiteStore(str(path))
    try:
        assert store.outbox_take(10, OwedKind.FIELDS) == [
            OwedWrite("c1", OwedKind.FIELDS, "fields:c1", '{"a": 1}')
        ]
        taken = store.outbox_claim(10, OwedKind.TASK)
        assert [(o.owed.contact_id, o.owed.kind) for o in taken] == [("c:2", OwedKind.TASK)]
        store.commit(Batch(outbox_done=taken))
        # A newer write owed under the old key replaces the old row, as before.
        store.commit(Batch(outbox=[OwedWrite.fields("c1", '{"a": 2}')]))
        assert store.outbox_take(10) == [OwedWrite.fields("c1", '{"a": 2}')]
    finally:
        store.close()
