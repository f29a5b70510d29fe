"""The coded ledger: decisions as integer columns in the run's SQLite file, beside the tables
the rest of the program reads.

Rows are inserted as the engine makes them, the contact index is built once at the end, and
the daily roll-up `report` reads is computed once at the end in SQL. `explain` reads a contact's
rows through `core.coded.decode`, so it shows exactly what the text ledger would.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.coded.codes import M_STEP, Names
from core.coded.decode import Texts, decisions
from core.models import Decision
from core.rollup import UPSERT
from core.sqlite_rows import decision_from_row, decision_row

SCHEMA = """
CREATE TABLE IF NOT EXISTS coded_ledger (
    contact INTEGER NOT NULL, at INTEGER NOT NULL, what INTEGER NOT NULL, cause TEXT,
    from_status INTEGER, to_status INTEGER NOT NULL, event_type INTEGER, mask INTEGER NOT NULL,
    score REAL NOT NULL, last_engagement INTEGER, unanswered INTEGER NOT NULL,
    step INTEGER NOT NULL, cycle INTEGER NOT NULL, reason INTEGER NOT NULL, action INTEGER,
    delayed_from INTEGER
);
CREATE TABLE IF NOT EXISTS coded_contacts (
    idx INTEGER PRIMARY KEY, contact_id TEXT NOT NULL UNIQUE, arm TEXT NOT NULL, segment TEXT
);
CREATE TABLE IF NOT EXISTS coded_names (
    kind TEXT NOT NULL, code INTEGER NOT NULL, text TEXT NOT NULL, PRIMARY KEY (kind, code)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS coded_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)
    WITHOUT ROWID;
"""
INSERT = "INSERT INTO coded_ledger VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_DAY_US = 86_400_000_000
_EPOCH_DAY = datetime(1970, 1, 1, tzinfo=UTC).date()


def create(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


def finish(
    db: sqlite3.Connection,
    names: Names,
    contacts: Iterable[tuple[int, str, str, str | None]],
    version: str,
) -> None:
    """Persist the texts the rows refer to and the contacts (index, id, assignment JSON,
    segment), index the rows by contact and write the roll-up. Inside the caller's
    transaction."""
    db.executemany("INSERT INTO coded_names VALUES (?,?,?)", names.rows())
    db.executemany("INSERT INTO coded_contacts VALUES (?,?,?,?)", contacts)
    db.execute("INSERT OR REPLACE INTO coded_meta VALUES ('policy_version', ?)", (version,))
    db.execute("CREATE INDEX IF NOT EXISTS coded_ledger_contact ON coded_ledger (contact)")
    write_rollup(db, names, version)


def write_rollup(db: sqlite3.Connection, names: Names, version: str) -> None:
    """The daily roll-up of `core.rollup`, counted from the integer columns in one pass."""
    what = {code: json.loads(text) for code, text in enumerate(names.texts["what"])}
    from_dormant = [c for c, (rule, reason) in what.items()
                    if rule == "engagement" and reason == "reactivated_from_dormant"]  # fmt: skip
    types = names.texts["type"]
    statuses = ("Active", "Engaged", "Dormant", "Reactivated", "Suppressed")
    # Floor division for days before 1970 as well (SQLite's `/` truncates toward zero).
    grouped = db.execute(
        f"""SELECT CASE WHEN l.at >= 0 THEN l.at / {_DAY_US}
                        ELSE -((-l.at - 1) / {_DAY_US}) - 1 END,
               l.what, l.from_status, l.to_status, l.event_type, c.arm,
               CASE WHEN l.action IS NOT NULL THEN l.cycle
                    WHEN l.what = ? AND (l.mask & {M_STEP}) <> 0 THEN l.cycle
                    ELSE 0 END,
               COUNT(*)
        FROM coded_ledger l JOIN coded_contacts c ON c.idx = l.contact
        GROUP BY 1, 2, 3, 4, 5, 6, 7""",  # noqa: S608 - integers of this module only
        (from_dormant[0] if from_dormant else -1,),
    )
    rows = []
    for day, code, src, dst, etype, arm, cycle, n in grouped:
        rule, reason = what[code]
        rows.append((
            (_EPOCH_DAY + timedelta(days=day)).isoformat(), rule, reason,
            statuses[src] if src is not None else "", statuses[dst], version,
            types[etype] if etype is not None else "", arm, cycle, n,
        ))  # fmt: skip
    db.executemany(UPSERT, rows)


def has_coded_ledger(path: Path | str) -> bool:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        found = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'coded_ledger'"
        ).fetchone()
        return found is not None
    finally:
        db.close()


def ledger_for(path: Path | str, contact_id: str) -> list[Decision]:
    """The contact's decisions from a coded ledger, oldest first (empty if it has none)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        contact = db.execute(
            "SELECT idx, arm, segment FROM coded_contacts WHERE contact_id = ?", (contact_id,)
        ).fetchone()
        if contact is None:
            return []
        idx, arm, segment = contact
        rows: Sequence[tuple] = db.execute(
            "SELECT * FROM coded_ledger WHERE contact = ? ORDER BY rowid", (idx,)
        ).fetchall()
        texts = Texts(db.execute("SELECT kind, code, text FROM coded_names"))
        version = db.execute(
            "SELECT value FROM coded_meta WHERE name = 'policy_version'"
        ).fetchone()[0]
    finally:
        db.close()
    experiments = json.loads(arm) if arm else {}
    # As the text ledger hands them out: changes and action details through their JSON text.
    return [decision_from_row(decision_row(d))
            for d in decisions(contact_id, rows, texts, version, experiments, segment)]
