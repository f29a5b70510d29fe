"""Intake on the SQLite store while another connection (`serve`'s worker process) writes: it
waits for the write lock by trying again every half millisecond, not SQLite's growing sleeps,
and still gives up, leaving the connection's own busy timeout as it was."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crm_elasticity.core.models import Event
from crm_elasticity.core.sqlite_store import SQLiteStore

WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def _event(event_id: str) -> Event:
    return Event(event_id=event_id, contact_id="c1", type="open", occurred_at=WHEN)


def test_intake_gives_up_on_a_write_lock_held_too_long(tmp_path: Path) -> None:
    intake, worker = SQLiteStore(tmp_path / "s.db"), SQLiteStore(tmp_path / "s.db")
    worker._db.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            intake._begin_promptly(patience=0.01)
    finally:
        worker._db.execute("ROLLBACK")
    assert intake.execute("PRAGMA busy_timeout") == [(5000,)]
    assert intake.inbox_put([_event("e1")]) == 1


def test_intake_records_once_the_other_writer_commits(tmp_path: Path) -> None:
    intake, worker = SQLiteStore(tmp_path / "s.db"), SQLiteStore(tmp_path / "s.db")
    recorded: list[int] = []
    worker._db.execute("BEGIN IMMEDIATE")
    put = threading.Thread(target=lambda: recorded.append(intake.inbox_put([_event("e1")])))
    put.start()
    worker._db.execute("COMMIT")
    put.join(10)
    assert recorded == [1]
    assert [e.event_id for e in worker.inbox_take(10)] == ["e1"]
