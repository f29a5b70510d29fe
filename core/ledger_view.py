"""What a report reads, taken once from a `LedgerReader` into small in-memory tables.

The report's figures are aggregations over the roll-up (a few thousand rows even for a
10M-decision ledger), written once as SQL: this view loads the reader's rows into an in-memory
SQLite database so those queries run the same whichever store the rows came from, and two stores
holding the same decisions give the same report, byte for byte.

Tables: `ledger_rollup` (all-time roll-up: levels need the history before a window),
`report_rows` (the rows inside the `--since` window), `contacts` (campaign_status,
suppression_reason, n: contacts now) and `cursors` (name, value: the policy notes).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from crm_elasticity.core.rollup import SCHEMA as ROLLUP_SCHEMA

if TYPE_CHECKING:
    from crm_elasticity.core.ledger_reader import LedgerReader

_TABLES = """
CREATE TABLE report_rows (
    day TEXT NOT NULL, rule TEXT NOT NULL, reason TEXT NOT NULL, from_status TEXT NOT NULL,
    to_status TEXT NOT NULL, policy_version TEXT NOT NULL, event_type TEXT NOT NULL,
    arm TEXT NOT NULL, cycle INTEGER NOT NULL, n INTEGER NOT NULL
);
CREATE TABLE contacts (campaign_status TEXT NOT NULL, suppression_reason TEXT, n INTEGER NOT NULL);
CREATE TABLE cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_INSERT_ROW = "INSERT INTO report_rows VALUES (?,?,?,?,?,?,?,?,?,?)"
_INSERT_ALL = "INSERT INTO ledger_rollup VALUES (?,?,?,?,?,?,?,?,?,?)"


class LedgerView:
    """A report's reads: the roll-up (all-time and the window), contacts now, policy notes and
    data-quality counts. `contacts=False` skips what only the full report needs."""

    def __init__(
        self, reader: LedgerReader, since: datetime | None = None, contacts: bool = True
    ) -> None:
        self.since = since
        self._db = sqlite3.connect(":memory:")
        self._db.executescript(ROLLUP_SCHEMA + _TABLES)
        every = reader.rollup(None)
        window = every if since is None else reader.rollup(since)
        self._db.executemany(_INSERT_ALL, every)
        self._db.executemany(_INSERT_ROW, window)
        self.quality: dict[str, int] = {}
        if contacts:
            levels = reader.contact_levels()
            self._db.executemany(
                "INSERT INTO contacts VALUES (?,?,?)",
                [
                    (status, reason, n)
                    for (status, reason), n in sorted(
                        levels.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
                    )
                ],
            )
            self._db.executemany(
                "INSERT INTO cursors VALUES (?,?)", sorted(reader.policy_notes().items())
            )
            self.quality = reader.quality_counts()

    def execute(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        self._db.close()
