"""The embedded store: one SQLite file in WAL mode under the data dir (or `:memory:`)."""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from crm_elasticity.core.bulk_states import BulkStates
from crm_elasticity.core.cursors import Cursors
from crm_elasticity.core.data_dir import DataDir
from crm_elasticity.core.gcpause import cyclic_gc_paused
from crm_elasticity.core.ledger_reader import LedgerReader, RollupRow
from crm_elasticity.core.models import EVENT, ContactState, Decision, Event, iso_utc
from crm_elasticity.core.order import ContactHistory, history_from_json, history_json
from crm_elasticity.core.owed import OwedKind, OwedWrite
from crm_elasticity.core.rollup import UPSERT, ensure_rollup, rollup_rows
from crm_elasticity.core.sqlite_rows import (
    contact_from_row,
    contact_row,
    decision_from_row,
    decision_row,
)
from crm_elasticity.core.store import (
    OUTBOX_LEASE,
    QUALITY_MEASURES,
    QUARANTINE_REASON_CHARS,
    Batch,
    ClaimedWrite,
    ConflictError,
    Quarantined,
    Store,
    StoreError,
    read_inbox_bodies,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS processed_events (key TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contacts (
    contact_id TEXT PRIMARY KEY, campaign_status TEXT NOT NULL, enrolled_at TEXT NOT NULL,
    as_of TEXT NOT NULL, status_changed_at TEXT NOT NULL, stream_entered_at TEXT NOT NULL,
    engagement_score REAL NOT NULL, base_score REAL NOT NULL, last_engagement_date TEXT,
    decay_steps INTEGER NOT NULL, reactivation_cycle INTEGER NOT NULL,
    reactivation_step INTEGER NOT NULL, reactivation_step_at TEXT,
    unanswered_sends INTEGER NOT NULL, suppression_reason TEXT, experiments TEXT,
    next_due TEXT, segment TEXT, send_times TEXT, version INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS contacts_next_due ON contacts (next_due) WHERE next_due IS NOT NULL;
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY, contact_id TEXT NOT NULL, at TEXT NOT NULL, rule TEXT NOT NULL,
    reason TEXT NOT NULL, cause TEXT NOT NULL, from_status TEXT, to_status TEXT NOT NULL,
    changes TEXT NOT NULL, actions TEXT, policy_version TEXT NOT NULL, event_type TEXT
);
CREATE INDEX IF NOT EXISTS ledger_contact ON ledger (contact_id);
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, payload TEXT NOT NULL,
    holder TEXT, leased_until REAL, contact_id TEXT
);
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, body TEXT NOT NULL,
    part TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, body TEXT NOT NULL,
    reason TEXT NOT NULL, at TEXT NOT NULL, part TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS quality (
    measure TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (measure, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contact_history (
    contact_id TEXT PRIMARY KEY, body TEXT NOT NULL
) WITHOUT ROWID;
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS inbox_part ON inbox (part, seq);
"""
"""Indexes on columns a store from an earlier release gains in `_add_missing_columns`."""

_CONTACT_COLUMNS = (
    "contact_id, campaign_status, enrolled_at, as_of, status_changed_at, stream_entered_at, "
    "engagement_score, base_score, last_engagement_date, decay_steps, reactivation_cycle, "
    "reactivation_step, reactivation_step_at, unanswered_sends, suppression_reason, experiments, "
    "segment, send_times"
)
_ADDED_COLUMNS = (
    ("contacts", "segment", "TEXT"),
    ("contacts", "send_times", "TEXT"),
    ("ledger", "event_type", "TEXT"),
    ("contacts", "version", "INTEGER NOT NULL DEFAULT 0"),
    ("outbox", "holder", "TEXT"),
    ("outbox", "leased_until", "REAL"),
    ("outbox", "contact_id", "TEXT"),
    ("inbox", "part", "TEXT NOT NULL DEFAULT ''"),
    ("quarantine", "part", "TEXT NOT NULL DEFAULT ''"),
)
"""Columns newer than the first release: added in place to a store that predates them."""
_UPSERT_CONTACT = (
    f"INSERT INTO contacts ({_CONTACT_COLUMNS}, next_due, version) "  # noqa: S608
    f"VALUES ({','.join('?' * 19)}, 1) ON CONFLICT (contact_id) DO UPDATE SET "
    + ", ".join(
        f"{name} = excluded.{name}" for name in [*_CONTACT_COLUMNS.split(", ")[1:], "next_due"]
    )
    + ", version = contacts.version + 1"
)
"""A contact written outside a bulk run: every write moves its version."""
_BUSY_MS = 5000
_CHUNK = 500  # stays under SQLite's bound-parameter limit on every build


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


_PARTIAL_DAY = """
SELECT substr(l.at, 1, 10), l.rule, l.reason, COALESCE(l.from_status, ''), l.to_status,
       l.policy_version, COALESCE(l.event_type, ''), COALESCE(c.experiments, ''),
       CASE WHEN l.reason LIKE 'reactivation_step_%'
              THEN COALESCE(json_extract(l.actions, '$[0][1].cycle'), 0)
            WHEN l.reason = 'reactivated_from_dormant'
                 AND json_extract(l.changes, '$.reactivation_step') IS NOT NULL
              THEN c.reactivation_cycle
            ELSE 0 END,
       COUNT(*)
FROM ledger l LEFT JOIN contacts c ON c.contact_id = l.contact_id
WHERE l.at >= ? AND l.at < ? GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
"""
"""The roll-up rows of the decisions in [start, end) counted from the ledger: the part of a
report window's first day after a mid-day `since`."""


def _chunks(items: Sequence, size: int = _CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def unjournaled_writer(path: str | Path, busy_ms: int = _BUSY_MS) -> sqlite3.Connection:
    """A connection that writes a store inside `SQLiteStore.written_alone`, with no journal
    and no syncs (the store syncs the file once at the end)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
    return db


def _sync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SQLiteStore(Store, LedgerReader):
    def __init__(
        self,
        path: str | Path = ":memory:",
        cache_mb: int = 128,
        defer_limit: int = 250_000,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.path = str(path)
        self.clock = clock
        """Times the leases of owed writes (other processes on the file read the same)."""
        self.defer_limit = defer_limit
        """At most this many contact states (~1 KB each) wait in memory during `bulk()`."""
        # One connection shared by the local server's threads: transactions must not interleave.
        self._lock = threading.RLock()
        self._bulk: BulkStates | None = None
        """Inside `bulk()`: the states committed but not yet written."""
        self._bulk_failed = False
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._cache_mb = cache_mb
        self._connect()

    def _connect(self) -> None:
        cache_mb = self._cache_mb
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
            # Ledger and contact indexes take random keys: a small page cache thrashes.
            self._db.execute(f"PRAGMA cache_size=-{int(cache_mb) * 1024}")
            self._db.execute("PRAGMA temp_store=MEMORY")
            self._db.executescript(_SCHEMA)
            self._add_missing_columns()
            self._db.executescript(_INDEXES)
            ensure_rollup(self._db)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc
        self._identity = _file_identity(self.path) if self.path != ":memory:" else None
        """The file this connection opened: a file put at the path later is another store."""

    def _add_missing_columns(self) -> None:
        for table, column, kind in _ADDED_COLUMNS:
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    @classmethod
    def in_data_dir(cls, data_dir: str | Path | None = None) -> SQLiteStore:
        return cls(DataDir.resolve(data_dir).main)

    def checkpoint_after(self, pages: int) -> None:
        """This connection's commits checkpoint the WAL once it holds `pages` (SQLite's
        default: 1000)."""
        with self._lock:
            self._db.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")

    def unseen(self, event_keys: Sequence[str]) -> set[str]:
        wanted = set(event_keys)
        keys = list(wanted)
        for part in _chunks(keys):
            marks = ",".join("?" * len(part))
            sql = f"SELECT key FROM processed_events WHERE key IN ({marks})"  # noqa: S608
            wanted.difference_update(row[0] for row in self._query(sql, part))
        return wanted

    def commit(self, batch: Batch) -> None:
        if batch.is_empty():
            return
        # Building the rows allocates as much as deciding did: the collector stays paused.
        with self._lock, cyclic_gc_paused():
            try:
                self._commit_locked(batch)
            except sqlite3.IntegrityError as exc:
                raise ConflictError("an event in this batch was already processed") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"could not commit a batch to {self.path}: {exc}") from exc

    def _commit_locked(self, batch: Batch) -> None:
        db, bulk = self._db, self._bulk
        if bulk is None:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._write(batch, defer_contacts=False)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return
        if self._bulk_failed:
            raise StoreError("an earlier batch of this run failed: the run cannot land")
        try:
            self._write(batch, defer_contacts=True)
            for state, due in zip(batch.contacts, batch.next_due, strict=True):
                bulk.put(state, due)
            if len(bulk) > self.defer_limit:
                self._flush_deferred()  # memory stays bounded on a very large population
        except BaseException:
            # The batch's states were the run's own, changed in place: the run is void.
            self._bulk_failed = True
            raise

    def _write(self, batch: Batch, defer_contacts: bool) -> None:
        db = self._db
        db.executemany(
            "INSERT INTO processed_events (key) VALUES (?)", [(k,) for k in batch.event_keys]
        )
        if not defer_contacts:
            # Only here: a bulk run owns its private store, with no other writer to check.
            self._check_versions(batch.expected_versions)
            db.executemany(_UPSERT_CONTACT, map(contact_row, batch.contacts, batch.next_due))
        rows = [decision_row(d) for d in batch.decisions]
        db.executemany(
            "INSERT INTO ledger (contact_id, at, rule, reason, cause, from_status, "
            "to_status, changes, actions, policy_version, event_type) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        db.executemany(UPSERT, rollup_rows(batch.decisions, rows, batch.contacts))
        db.executemany(
            "INSERT OR REPLACE INTO cursors (name, value) VALUES (?, ?)", batch.cursors.items()
        )
        db.executemany("INSERT OR IGNORE INTO quality (measure, key) VALUES (?, ?)", batch.quality)
        db.executemany(
            "INSERT OR REPLACE INTO contact_history (contact_id, body) VALUES (?, ?)",
            [(h.contact_id, history_json(h)) for h in batch.histories],
        )
        db.executemany("DELETE FROM inbox WHERE key = ?", [(k,) for k in batch.inbox_done])
        if batch.outbox_done:
            db.executemany(
                "DELETE FROM outbox WHERE key = ? AND seq = ?",
                [(o.key, int(o.version)) for o in batch.outbox_done],
            )
            self._release(batch.outbox_done)
        # A newer write for the same key replaces the owed one and goes to the back; a lease
        # on the key stays, so the flusher holding it writes the newer one only after its own.
        db.executemany(
            "INSERT OR REPLACE INTO outbox (key, payload, contact_id, holder, leased_until) "
            "VALUES (?, ?, ?, (SELECT holder FROM outbox WHERE key = ?), "
            "(SELECT leased_until FROM outbox WHERE key = ?))",
            [(o.key, o.payload, o.contact_id, o.key, o.key) for o in batch.outbox],
        )

    def _check_versions(self, expected: dict[str, int | None]) -> None:
        """Inside the write transaction: raise `ConflictError` if a contact moved since read."""
        if not expected:
            return
        found: dict[str, int] = {}
        ids = list(expected)
        for part in _chunks(ids):
            marks = ",".join("?" * len(part))
            sql = f"SELECT contact_id, version FROM contacts WHERE contact_id IN ({marks})"  # noqa: S608
            found.update(self._db.execute(sql, part).fetchall())
        moved = [cid for cid in ids if found.get(cid) != expected[cid]]
        if moved:
            raise ConflictError(f"{len(moved)} contact(s) changed since they were read")

    def _release(self, owed: Sequence[ClaimedWrite]) -> None:
        self._db.executemany(
            "UPDATE outbox SET holder = NULL, leased_until = NULL WHERE key = ? AND holder = ?",
            [(o.key, o.holder) for o in owed],
        )

    def _write_contacts(self, rows: Iterable[tuple]) -> None:
        self._db.executemany(
            f"INSERT OR REPLACE INTO contacts ({_CONTACT_COLUMNS}, next_due) "  # noqa: S608
            f"VALUES ({','.join('?' * 19)})",
            rows,
        )

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """One transaction for the whole run, for a private store (replay, simulate).

        Inside it, a commit writes its ledger rows at once but keeps its contacts' states in
        memory (read back by `get_contacts` and `due_contacts`) and writes each contact once,
        at the end: rewriting a contact row after every batch costs ~10 us a row, more than
        deciding the events that changed it. On a store with an empty ledger the ledger's
        contact index is also built once at the end instead of row by row. An exception
        inside discards the whole run. `get_contacts` hands out the run's own states (the
        pipeline changes them in place and commits them back), so a failed commit voids the
        run: later commits raise and nothing lands. Other threads wait until the run ends."""
        with self._lock:
            if self._bulk is not None:
                yield  # already inside one: it is the unit
                return
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                empty = db.execute("SELECT 1 FROM ledger LIMIT 1").fetchone() is None
                if empty:
                    db.execute("DROP INDEX IF EXISTS ledger_contact")
            except sqlite3.Error as exc:
                raise StoreError(f"could not start a run on {self.path}: {exc}") from exc
            self._bulk = BulkStates()
            self._bulk_failed = False
            try:
                yield
                if self._bulk_failed:
                    raise StoreError("a batch of this run failed: nothing of the run was written")
                self._flush_deferred()
                if empty:
                    db.execute("CREATE INDEX IF NOT EXISTS ledger_contact ON ledger (contact_id)")
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise StoreError(f"could not commit the run to {self.path}: {exc}") from exc
            except BaseException:
                db.execute("ROLLBACK")
                raise
            finally:
                self._bulk = None

    def _flush_deferred(self) -> None:
        """Write the deferred contact states (in key order: the B-tree fills page by page)."""
        deferred = self._bulk
        if deferred:
            self._write_contacts(contact_row(state, due) for state, due in deferred.drain())

    def get_contacts(self, contact_ids: Iterable[str]) -> dict[str, ContactState]:
        found: dict[str, ContactState] = {}
        deferred = self._bulk
        if deferred:
            wanted = []
            for cid in contact_ids:
                held = deferred.get(cid)
                if held is None:
                    wanted.append(cid)
                else:
                    found[cid] = held
            contact_ids = wanted
        for part in _chunks(list(contact_ids)):
            marks = ",".join("?" * len(part))
            sql = f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE contact_id IN ({marks})"  # noqa: S608
            for row in self._query(sql, part):
                found[row[0]] = contact_from_row(row)
        return found

    def get_versioned(
        self, contact_ids: Iterable[str]
    ) -> tuple[dict[str, ContactState], dict[str, int]]:
        self._write_deferred()
        found: dict[str, ContactState] = {}
        versions: dict[str, int] = {}
        for part in _chunks(list(dict.fromkeys(contact_ids))):
            marks = ",".join("?" * len(part))
            sql = (
                f"SELECT {_CONTACT_COLUMNS}, version FROM contacts "  # noqa: S608
                f"WHERE contact_id IN ({marks})"
            )
            for row in self._query(sql, part):
                found[row[0]] = contact_from_row(row)
                versions[row[0]] = row[-1]
        return found, versions

    def histories(self, contact_ids: Iterable[str]) -> dict[str, ContactHistory]:
        found: dict[str, ContactHistory] = {}
        for part in _chunks(list(contact_ids)):
            marks = ",".join("?" * len(part))
            sql = f"SELECT contact_id, body FROM contact_history WHERE contact_id IN ({marks})"  # noqa: S608
            for cid, body in self._query(sql, part):
                found[cid] = history_from_json(cid, body)
        return found

    def iter_contacts(self, page_size: int = 5000) -> Iterator[list[ContactState]]:
        self._write_deferred()
        after = ""
        while True:
            rows = self._query(
                f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE contact_id > ? "  # noqa: S608
                "ORDER BY contact_id LIMIT ?",
                (after, page_size),
            )
            if not rows:
                return
            yield [contact_from_row(row) for row in rows]
            after = rows[-1][0]

    def due_contacts(self, now: datetime, after: str = "", limit: int = 5000) -> list[str]:
        sql = (
            "SELECT contact_id FROM contacts WHERE next_due IS NOT NULL AND next_due <= ? "
            "AND contact_id > ? ORDER BY contact_id LIMIT ?"
        )
        deferred = self._bulk
        if not deferred:
            return [row[0] for row in self._query(sql, (iso_utc(now), after, limit))]
        # The deferred states are newer than their rows: a deferred contact's row is stale,
        # so read rows until `limit` fresh ones are found or the table ends. Where it did not
        # end, held contacts past the last row read wait for a later page: the rows between
        # were not read, and a page is the first `limit` due contacts after `after`.
        ids: list[str] = []
        read_to, ended = after, False
        while len(ids) < limit and not ended:
            rows = self._query(sql, (iso_utc(now), read_to, limit))
            ids += [row[0] for row in rows if row[0] not in deferred]
            ended = len(rows) < limit
            if rows:
                read_to = rows[-1][0]
        held = deferred.due(now, after, limit)
        ids += held if ended else [cid for cid in held if cid <= read_to]
        ids.sort()
        return ids[:limit]

    def count_contacts(self) -> int:
        self._write_deferred()
        return self._query("SELECT COUNT(*) FROM contacts")[0][0]

    def get_cursors(self, names: Iterable[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for part in _chunks(list(names)):
            marks = ",".join("?" * len(part))
            sql = f"SELECT name, value FROM cursors WHERE name IN ({marks})"  # noqa: S608
            found.update(self._query(sql, part))
        return found

    def ledger_for(self, contact_id: str) -> list[Decision]:
        rows = self._query(
            "SELECT contact_id, at, rule, reason, cause, from_status, to_status, changes, "
            "actions, policy_version, event_type FROM ledger WHERE contact_id = ? ORDER BY seq",
            (contact_id,),
        )
        return [decision_from_row(row) for row in rows]

    def inbox_put(self, events: Sequence[Event], partition: str = "") -> int:
        if not events:
            return 0
        rows = [(e.event_id, EVENT.dump_json(e).decode(), partition, e.event_id) for e in events]
        try:
            with self._lock, self._db:
                self._begin_promptly()
                before = self._db.total_changes
                # Checked under the write lock, not in a read before it: one round trip less
                # on the intake path, and a worker commit cannot land between check and insert.
                self._db.executemany(
                    "INSERT OR IGNORE INTO inbox (key, body, part) SELECT ?, ?, ? WHERE NOT EXISTS "
                    "(SELECT 1 FROM processed_events WHERE key = ?)",
                    rows,
                )
                return self._db.total_changes - before
        except sqlite3.Error as exc:
            raise StoreError(f"could not record events in {self.path}: {exc}") from exc

    def _begin_promptly(self, patience: float = _BUSY_MS / 1000) -> None:
        """BEGIN IMMEDIATE, tried again every half millisecond while another connection writes.
        SQLite's busy handler sleeps 1, 2, 5, 10, 15, 20... ms between tries: a write lock freed
        after 4 ms is taken after 8, and one the worker frees and takes again meanwhile after
        18, 33 or more; an intake answer waits all that."""
        db = self._db
        db.execute("PRAGMA busy_timeout=0")
        try:
            give_up = time.monotonic() + patience
            while True:
                try:
                    db.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                    if not busy or time.monotonic() > give_up:
                        raise
                time.sleep(0.0005)
        finally:
            db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")

    def inbox_take(self, limit: int, partition: str | None = None) -> list[Event]:
        if partition is None:
            rows = self._query("SELECT key, body FROM inbox ORDER BY seq LIMIT ?", (limit,))
        else:
            rows = self._query(
                "SELECT key, body FROM inbox WHERE part = ? ORDER BY seq LIMIT ?",
                (partition, limit),
            )
        events, unreadable = read_inbox_bodies(rows)
        if unreadable:
            self.inbox_quarantine(unreadable)
        return events

    def inbox_quarantine(self, entries: Sequence[Quarantined]) -> None:
        if not entries:
            return
        # The entry keeps its inbox partition, so a release gives it back to the same runner.
        rows = [
            (q.key, q.body, q.reason[:QUARANTINE_REASON_CHARS], iso_utc(q.at), q.key)
            for q in entries
        ]
        try:
            with self._lock, self._db:
                self._begin_promptly()
                self._db.executemany(
                    "INSERT OR REPLACE INTO quarantine (key, body, reason, at, part) "
                    "VALUES (?, ?, ?, ?, COALESCE((SELECT part FROM inbox WHERE key = ?), ''))",
                    rows,
                )
                self._db.executemany("DELETE FROM inbox WHERE key = ?", [(r[0],) for r in rows])
        except sqlite3.Error as exc:
            raise StoreError(f"could not quarantine events in {self.path}: {exc}") from exc

    def quarantined(self, limit: int = 1000) -> list[Quarantined]:
        rows = self._query(
            "SELECT key, body, reason, at FROM quarantine ORDER BY seq LIMIT ?", (limit,)
        )
        return [Quarantined(k, b, r, datetime.fromisoformat(a)) for k, b, r, a in rows]

    def quarantine_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM quarantine")[0][0])

    def marked_counts(self) -> dict[str, int]:
        counts = dict(self._query("SELECT measure, COUNT(*) FROM quality GROUP BY measure"))
        return {m: int(counts.get(m, 0)) for m in QUALITY_MEASURES}

    def quarantine_release(self, keys: Sequence[str] | None = None) -> int:
        try:
            with self._lock, self._db:
                self._begin_promptly()
                held = [r[0] for r in self._db.execute("SELECT key FROM quarantine ORDER BY seq")]
                chosen = None if keys is None else set(keys)
                wanted = [k for k in held if chosen is None or k in chosen]
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT OR IGNORE INTO inbox (key, body, part) "
                    "SELECT key, body, part FROM quarantine WHERE key = ?",
                    [(k,) for k in wanted],
                )
                moved = self._db.total_changes - before
                self._db.executemany("DELETE FROM quarantine WHERE key = ?", [(k,) for k in wanted])
                return moved
        except sqlite3.Error as exc:
            raise StoreError(f"could not release quarantined events in {self.path}: {exc}") from exc

    def outbox_take(self, limit: int, kind: OwedKind | None = None) -> list[OwedWrite]:
        prefix = kind.prefix if kind else ""
        rows = self._query(
            "SELECT key, payload, contact_id FROM outbox WHERE substr(key, 1, ?) = ? "
            "ORDER BY seq LIMIT ?",
            (len(prefix), prefix, limit),
        )
        return [OwedWrite.stored(*row) for row in rows]

    def outbox_claim(
        self, limit: int, kind: OwedKind | None = None, lease: timedelta = OUTBOX_LEASE
    ) -> list[ClaimedWrite]:
        now = self.clock().timestamp()
        prefix = kind.prefix if kind else ""
        free = (
            "SELECT seq, key, payload, contact_id FROM outbox WHERE substr(key, 1, ?) = ? "
            "AND (leased_until IS NULL OR leased_until <= ?) ORDER BY seq LIMIT ?"
        )
        params = (len(prefix), prefix, now, limit)
        if not self._query(free, params):
            return []  # nothing to take: no write lock for that
        holder = secrets.token_hex(8)
        with self._lock:
            db = self._db
            try:
                self._begin_promptly()
                try:
                    rows = db.execute(free, params).fetchall()
                    db.executemany(
                        "UPDATE outbox SET holder = ?, leased_until = ? WHERE seq = ?",
                        [(holder, now + lease.total_seconds(), row[0]) for row in rows],
                    )
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"could not take owed writes from {self.path}: {exc}") from exc
        return [
            ClaimedWrite(OwedWrite.stored(key, payload, cid), str(seq), holder)
            for seq, key, payload, cid in rows
        ]

    def outbox_release(self, owed: Sequence[ClaimedWrite]) -> None:
        if not owed:
            return
        with self._lock:
            try:
                self._begin_promptly()
                try:
                    self._release(owed)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"could not release owed writes in {self.path}: {exc}") from exc

    def outbox_owed(self, keys: Iterable[str]) -> set[str]:
        owed: set[str] = set()
        for part in _chunks(list(dict.fromkeys(keys))):
            marks = ",".join("?" * len(part))
            sql = f"SELECT key FROM outbox WHERE key IN ({marks})"  # noqa: S608
            owed.update(row[0] for row in self._query(sql, part))
        return owed

    # ---- the ledger reader (core.ledger_reader) -------------------------------------------

    def contact_decisions(self, contact_id: str) -> list[Decision]:
        """The text ledger's decisions, or the coded ledger's of a replay or simulation, read
        on this connection (a second one would parse the schema again)."""
        decisions = self.ledger_for(contact_id)
        if not decisions and self.path != ":memory:":
            from crm_elasticity.core.coded.contact_ledger import coded_contact_decisions

            with self._lock:
                try:
                    decisions = coded_contact_decisions(self._db, contact_id) or []
                except sqlite3.Error as exc:
                    raise StoreError(f"could not read from {self.path}: {exc}") from exc
        return decisions

    def contact_now(self, contact_id: str) -> ContactState | None:
        return self.get_contacts([contact_id]).get(contact_id)

    def rollup(self, since: datetime | None = None) -> list[RollupRow]:
        """Whole days from the roll-up; when `since` is mid-day, the rest of its day counted
        exactly from the ledger (one scan of that day)."""
        if since is None:
            return self.execute("SELECT * FROM ledger_rollup")
        start = iso_utc(since) or ""
        day = start[:10]
        if start == day + "T00:00:00+00:00":
            return self.execute("SELECT * FROM ledger_rollup WHERE day >= ?", (day,))
        next_day = (datetime.fromisoformat(day) + timedelta(days=1)).date().isoformat()
        rows = self.execute("SELECT * FROM ledger_rollup WHERE day >= ?", (next_day,))
        rows += self.execute(_PARTIAL_DAY, (start, next_day))
        if self.path != ":memory:":
            from crm_elasticity.core.coded.codes import to_us
            from crm_elasticity.core.coded.ledger import has_coded_ledger, window_rollup

            if has_coded_ledger(self.path):  # a replay or simulate on the coded path
                end = since.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
                window = window_rollup(self.path, to_us(since), to_us(end))
                rows += [(*key, n) for key, n in window.items()]
        return rows

    def contact_levels(self) -> dict[tuple[str, str | None], int]:
        rows = self.execute(
            "SELECT campaign_status, suppression_reason, COUNT(*) FROM contacts GROUP BY 1, 2"
        )
        return {(status, reason): n for status, reason, n in rows}

    def policy_notes(self) -> dict[str, str]:
        return dict(
            self.execute(
                "SELECT name, value FROM cursors WHERE name LIKE ? OR name LIKE ? OR name LIKE ? "
                "ORDER BY name",
                Cursors.note_likes,
            )
        )

    def quality_counts(self) -> dict[str, int]:
        return {"quarantined_events": self.quarantine_count(), **self.marked_counts()}

    def execute(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Read-only SQL for reports that aggregate in the database, not in Python lists."""
        self._write_deferred()
        return self._query(sql, params)

    def _write_deferred(self) -> None:
        # SQL over the contacts table must see the states a run has kept in memory.
        if self._bulk:
            with self._lock:
                try:
                    self._flush_deferred()
                except sqlite3.Error as exc:
                    self._bulk_failed = True  # the drained states are gone with the run
                    raise StoreError(f"could not write contacts to {self.path}: {exc}") from exc

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"could not read from {self.path}: {exc}") from exc

    def file_replaced(self) -> bool:
        """Whether the path no longer names the file this connection writes: deleted, or
        replaced by another (a restored backup, a copy moved in). Writes would then land in a
        file nobody will read again. One `stat`: cheap enough for every request."""
        return self._identity is not None and _file_identity(self.path) != self._identity

    def inbox_backlog(self) -> int:
        """Events recorded and not yet processed."""
        return self._query("SELECT count(*) FROM inbox")[0][0]

    def close(self) -> None:
        with self._lock:  # not under a statement another thread is running
            self._close_locked()

    @contextlib.contextmanager
    def written_alone(self) -> Iterator[None]:
        """Hand a private store (a run's partial store: nobody else opens it, and a failed run
        removes it) to connections from `unjournaled_writer`, in this process or others. A
        journal or WAL would write every page twice (the coded ledger is most of the file):
        with none, a bulk run writes 7% faster. The store's own connection is closed
        meanwhile; after, the file is synced and opened again in WAL mode."""
        if self.path == ":memory:":
            raise StoreError("an in-memory store has no file to write alone")
        with self._lock:
            self._close_locked()
            try:
                db = sqlite3.connect(self.path, isolation_level=None)
                try:
                    db.execute("PRAGMA journal_mode=DELETE")  # out of WAL: journals per connection
                finally:
                    db.close()
                yield
                _sync_file(self.path)
            finally:
                self._connect()

    def _close_locked(self) -> None:
        if self.file_replaced():
            # The WAL and shared-memory files are found by name, not by the file they belong
            # to: left as they are, their pages would be applied to whatever file is put at
            # the path next. Checkpointed into the old file and emptied, they are harmless.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
