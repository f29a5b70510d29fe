"""The coded ledger: decisions packed as fixed-width binary rows in the run's SQLite file,
beside the tables the rest of the program reads.

Rows (`ROW`: 14 int64 and the score as a float64, in decision order) are stored in parts
(`coded_parts`): each holds a run of consecutive rows, their causes' ends (uint32) and their
causes (event ids, UTF-8), up to `PART_BYTES` in all, so a part's record fits one 4 KB page and
reading a row reads that page, never a chain of overflow pages. A part's id is its shard
<< 32 | its number in the shard. Packing a row costs a tenth of binding it as SQLite columns,
and one statement per chunk cuts the packed bytes into parts. A chunk (`coded_chunks`) is
`CHUNK_ROWS` consecutive rows: its time range and its parts, which `report --since` reads
(`window_rollup`); the daily roll-up is counted with numpy as rows are written.
`coded_contacts` lists where each of a contact's rows is (its part and its position in it),
so `explain` reads just the pages its rows are on (`core.coded.contact_ledger`) and decodes
them (`core.coded.decode`), showing exactly what the text ledger would. `coded_shards` holds
each shard's policy version and interned texts, in one record.

A run split over worker processes keeps each worker's parts, chunks, contacts and texts under
its shard number; readers take the union.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from crm_elasticity.core.coded.codes import M_STEP, NONE, STATUSES, Names
from crm_elasticity.core.coded.contact_ledger import POSITION_BITS, coded_contact_decisions
from crm_elasticity.core.coded.decode import stored_names
from crm_elasticity.core.coded.row import ROW
from crm_elasticity.core.models import Decision, Reason, Rule
from crm_elasticity.core.rollup import UPSERT

SCHEMA = """
CREATE TABLE IF NOT EXISTS coded_parts (
    id INTEGER PRIMARY KEY, rows BLOB NOT NULL, cause_ends BLOB NOT NULL, causes BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS coded_chunks (
    shard INTEGER NOT NULL, chunk INTEGER NOT NULL, n INTEGER NOT NULL,
    min_at INTEGER NOT NULL, max_at INTEGER NOT NULL, parts_from INTEGER NOT NULL,
    parts_to INTEGER NOT NULL, PRIMARY KEY (shard, chunk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS coded_contacts (
    contact_id TEXT PRIMARY KEY, shard INTEGER NOT NULL, idx INTEGER NOT NULL,
    arm TEXT NOT NULL, segment TEXT, rows BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS coded_shards (
    shard INTEGER PRIMARY KEY, version TEXT NOT NULL, names TEXT NOT NULL
);
"""
CHUNK_ROWS = 512
"""Rows per chunk: the unit of time range `report --since` picks rows by."""
PART_BYTES = 4040
"""At most this many bytes of rows, cause ends and causes per part (unless one row alone is
larger): a part's record then fits a 4 KB page whole (SQLite keeps up to 4061 bytes of a
record on its page), so reading a row reads one page, not a chain of overflow pages."""
_INSERT_PARTS = f"""
INSERT INTO coded_parts
SELECT ?1 + k,
    substr(?2, (s >> 32) * {ROW.size} + 1, ((e >> 32) - (s >> 32)) * {ROW.size}),
    substr(?3, (s >> 32) * 4 + 1, ((e >> 32) - (s >> 32)) * 4),
    ifnull(substr(?4, (s & 4294967295) + 1, (e & 4294967295) - (s & 4294967295)), x'')
FROM (SELECT key AS k, value AS s, lead(value) OVER (ORDER BY key) AS e FROM json_each(?5))
WHERE e IS NOT NULL
"""  # noqa: S608 (the row size, a constant)
"""Parts cut from a chunk's packed rows (?2), cause ends (?3) and causes (?4) at the bounds
listed in ?5 (a part's first row << 32 | the offset of its first cause, both in the chunk; then
the chunk's end), numbered on from ?1. (substr of an empty blob is NULL: a chunk of time rules
has no causes.)"""
_MOST_PARTS = (1 << (31 - POSITION_BITS)) - 1
"""Where a row is fits an int32 (`coded_contacts.rows`): a shard's parts are this many at
most (about a billion decisions)."""
_END = np.dtype("<u4")
"""A cause's end in its part's causes."""
ROW_DTYPE = np.dtype(
    [
        ("contact", "<i8"),
        ("at", "<i8"),
        ("what", "<i8"),
        ("from_status", "<i8"),
        ("to_status", "<i8"),
        ("event_type", "<i8"),
        ("mask", "<i8"),
        ("last", "<i8"),
        ("unanswered", "<i8"),
        ("step", "<i8"),
        ("cycle", "<i8"),
        ("reason", "<i8"),
        ("action", "<i8"),
        ("delayed", "<i8"),
        ("score", "<f8"),
    ]
)
_DAY_US = 86_400_000_000
_EPOCH_DAY = datetime(1970, 1, 1, tzinfo=UTC).date()


def create(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


class ChunkWriter:
    """Writes one shard's decisions as chunks, counting the roll-up as it goes."""

    def __init__(self, db: sqlite3.Connection, shard: int, names: Names) -> None:
        self.db = db
        self.shard = shard
        self.names = names
        self.chunks = 0
        self.parts = 0
        self.rows = 0
        self.arms: list[int] = []
        self._arm_array = np.zeros(0, dtype=np.int64)
        self._arms_known = 0
        """The assignment (an `arm` code of `names`) of each contact index."""
        self._located: list[bytes] = []
        """Per `write`, each row's contact index << 32 | where it is (`POSITION_BITS`), as
        bytes: kept as numpy arrays, they cost a 1M-event replay 0.2-0.3 s more in the kernel
        (page faults) in interleaved runs against keeping them as bytes."""
        self.rollup: Counter = Counter()
        """(day, what, from, to, event type, arm, cycle) codes -> decisions."""
        self._from_dormant = names.what(Rule.ENGAGEMENT, Reason.REACTIVATED_FROM_DORMANT)

    def write(self, rows: list[tuple]) -> np.ndarray | None:
        """Pack and count the rows at once (numpy's per-call cost is per batch, not per
        chunk), then store them in parts, chunk by chunk. Returns them packed (`ROW_DTYPE`)."""
        if not rows:
            return None
        pack = ROW.pack
        packed = b"".join([pack(*r[:15]) for r in rows])
        decided = np.frombuffer(packed, dtype=ROW_DTYPE)
        self._count(decided)
        n = len(rows)
        causes = [b"" if r[15] is None else r[15].encode() for r in rows]
        cause_len = np.fromiter(map(len, causes), dtype=np.int64, count=n)
        chunk = np.arange(n) // CHUNK_ROWS
        chunk_start = np.arange(0, n, CHUNK_ROWS)
        # Parts: cut where a chunk's bytes so far cross a multiple of the budget less the
        # largest row, so none exceeds `PART_BYTES` and a cut needs no loop over the rows.
        size = cause_len + (ROW.size + _END.itemsize)
        in_chunk = np.cumsum(size)
        in_chunk -= (in_chunk - size)[chunk_start][chunk]
        label = (in_chunk - 1) // max(PART_BYTES - int(size.max()) + 1, 1)
        first = np.r_[True, (label[1:] != label[:-1]) | (chunk[1:] != chunk[:-1])]
        starts = np.flatnonzero(first)
        part = np.cumsum(first) - 1
        cause_ends = np.cumsum(cause_len)
        cause_from = (cause_ends - cause_len)[starts]
        ends_in_part = (cause_ends - cause_from[part]).astype(_END).tobytes()
        if self.parts + len(starts) > _MOST_PARTS:
            raise OverflowError(f"a coded ledger shard holds at most {_MOST_PARTS} parts")
        located = (part + self.parts) << POSITION_BITS
        located |= np.arange(n) - starts[part]
        located |= decided["contact"] << 32
        self._located.append(located.tobytes())
        # One statement per chunk cuts its bytes into its parts: binding each part's slices
        # from Python cost as much again as inserting them. A part's bounds are its first
        # row and the offset of its first cause (packed as one integer), the next part's
        # first the end of it.
        rows_view, ends_view, causes_view = (
            memoryview(packed),
            memoryview(ends_in_part),
            memoryview(b"".join(causes)),
        )
        chunk_parts = np.r_[part[chunk_start], len(starts)].tolist()
        first_cause = np.r_[cause_from, cause_ends[-1]]
        bounds = np.r_[starts, n] << 32 | first_cause
        row_size, end_size = ROW.size, _END.itemsize
        for c, (p, q) in enumerate(pairwise(chunk_parts)):
            r0, r1 = c * CHUNK_ROWS, min((c + 1) * CHUNK_ROWS, n)
            c0, c1 = int(first_cause[p]), int(first_cause[q])
            self.db.execute(
                _INSERT_PARTS,
                (
                    (self.shard << 32) + self.parts + p,
                    rows_view[r0 * row_size : r1 * row_size],
                    ends_view[r0 * end_size : r1 * end_size],
                    causes_view[c0:c1],
                    json.dumps((bounds[p : q + 1] - ((r0 << 32) | c0)).tolist()),
                ),
            )
        base = (self.shard << 32) + self.parts
        at = decided["at"]
        chunk_end = np.r_[chunk_start[1:], n]
        self.db.executemany(
            "INSERT INTO coded_chunks VALUES (?,?,?,?,?,?,?)",
            zip(
                [self.shard] * len(chunk_start),
                range(self.chunks, self.chunks + len(chunk_start)),
                (chunk_end - chunk_start).tolist(),
                np.minimum.reduceat(at, chunk_start).tolist(),
                np.maximum.reduceat(at, chunk_start).tolist(),
                (base + part[chunk_start]).tolist(),
                (base + part[chunk_end - 1] + 1).tolist(),
                strict=True,
            ),
        )
        self.chunks += len(chunk_start)
        self.parts += len(starts)
        self.rows += n
        return decided

    def _count(self, r: np.ndarray) -> None:
        count_rollup(r, self._arm_codes(int(r["contact"].max())), self._from_dormant, self.rollup)

    def set_arm(self, contact: int, arm: int) -> None:
        """A contact's assignment, set once, when it enrolls."""
        arms = self.arms
        while len(arms) <= contact:
            arms.append(NONE)
        arms[contact] = arm
        if contact < self._arms_known:
            self._arms_known = contact  # (re)convert from here on the next count

    def _arm_codes(self, highest: int) -> np.ndarray:
        """`arms` as a numpy array, converting only what changed since the last call."""
        if self._arms_known < len(self.arms) or self._arm_array.size <= highest:
            known = self._arms_known
            self._arm_array = np.concatenate(
                [self._arm_array[:known], np.asarray(self.arms[known:], dtype=np.int64)]
            )
            self._arms_known = len(self.arms)
        return self._arm_array

    def rollup_rows(self, version: str) -> Counter:
        """The roll-up as `core.rollup` keys it (texts), so shards add up."""
        texts = self.names.texts
        return rollup_texts(self.rollup, texts["what"], texts["type"], texts["arm"], version)

    def _rows_of(self) -> dict[int, bytes]:
        """Each contact's rows, where they are (`contact_ledger.POSITION_BITS`), in order, as
        the int32 list `coded_contacts` keeps."""
        if not self._located:
            return {}
        # One array of (contact, where) keys, sorted in place: where grows with the decision
        # order, so each contact's rows stay in it.
        keys = np.frombuffer(bytearray().join(self._located), dtype=np.int64)
        self._located.clear()
        keys.sort()
        located = keys.astype(np.int32)  # (the low 32 bits: where)
        keys >>= 32
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], keys.size]
        return {
            int(keys[s]): located[s:e].tobytes()
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
        }

    def finish(self, contacts: list[tuple[int, str, str | None]], version: str) -> None:
        """Persist the texts and the contacts (index, id, segment)."""
        db, shard = self.db, self.shard
        db.execute(
            "INSERT INTO coded_shards VALUES (?,?,?)",
            (shard, version, json.dumps(stored_names(self.names.texts))),
        )
        texts = self.names.texts["arm"]
        rows_of = self._rows_of()
        db.executemany(
            "INSERT INTO coded_contacts VALUES (?,?,?,?,?,?)",
            [
                (
                    cid,
                    shard,
                    i,
                    texts[self.arms[i]] if self.arms[i] != NONE else "",
                    segment,
                    rows_of.get(i, b""),
                )
                for i, cid, segment in contacts
            ],
        )


def count_rollup(r: np.ndarray, arm_of: np.ndarray, from_dormant: int, into: Counter) -> None:
    """Add rows `r` (`ROW_DTYPE`) to roll-up counts keyed by (day, what, from, to, event
    type, arm, cycle) codes; `arm_of` is each contact index's assignment code."""
    if not r.size:
        return
    step_changed = (r["mask"] & M_STEP) != 0
    cycle = np.where(
        (r["action"] != NONE) | ((r["what"] == from_dormant) & step_changed), r["cycle"], 0
    )
    arms = arm_of[r["contact"]]
    day = r["at"] // _DAY_US
    first_day = int(day.min())
    # Every part is a small int (-1 for absent): one flat key per decision sorts far
    # faster than unique rows of seven columns.
    parts = [
        day - first_day,
        r["what"],
        r["from_status"] + 1,
        r["to_status"],
        r["event_type"] + 1,
        arms + 1,
        cycle,
    ]
    sizes = tuple(int(part.max()) + 1 for part in parts)
    keys: Iterable[tuple[Any, ...]]
    try:
        flat = np.ravel_multi_index(parts, sizes)
    except ValueError:  # a key space beyond int64 (a ledger spanning centuries)
        unique, counts = np.unique(np.stack(parts, axis=1), axis=0, return_counts=True)
        keys = (tuple(row) for row in unique.tolist())
    else:
        unique, counts = np.unique(flat, return_counts=True)
        keys = zip(*np.unravel_index(unique, sizes), strict=True)
    for (d, what, src, dst, etype, arm, cyc), n in zip(keys, counts.tolist(), strict=True):
        key = (
            int(d) + first_day,
            int(what),
            int(src) - 1,
            int(dst),
            int(etype) - 1,
            int(arm) - 1,
            int(cyc),
        )
        into[key] += n


def rollup_texts(
    rollup: Counter,
    what_texts: list[str],
    type_texts: list[str],
    arm_texts: list[str],
    version: str,
) -> Counter:
    what = [json.loads(t) for t in what_texts]
    status = [s.value for s in STATUSES]
    days: dict[int, str] = {}
    out: Counter = Counter()
    for (day, code, src, dst, etype, arm, cycle), n in rollup.items():
        date = days.get(day)
        if date is None:
            date = days[day] = (_EPOCH_DAY + timedelta(days=day)).isoformat()
        rule, reason = what[code]
        key = (
            date,
            rule,
            reason,
            status[src] if src != NONE else "",
            status[dst],
            version,
            type_texts[etype] if etype != NONE else "",
            arm_texts[arm] if arm != NONE else "",
            cycle,
        )
        out[key] += n
    return out


def window_rollup(path: Path | str, start: int, end: int) -> Counter:
    """Roll-up rows (as `core.rollup` keys them) of the decisions at `start` <= at < `end`
    (epoch microseconds), from the chunks whose time range meets the window."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    out: Counter = Counter()
    try:
        for shard, version, stored in db.execute(
            "SELECT shard, version, names FROM coded_shards"
        ).fetchall():
            names = json.loads(stored)
            arm_code = {text: code for code, text in enumerate(names.get("arm", []))}
            contacts = db.execute(
                "SELECT idx, arm FROM coded_contacts WHERE shard = ?", (shard,)
            ).fetchall()
            arm_of = np.full(max((i for i, _ in contacts), default=-1) + 1, NONE, np.int64)
            for idx, arm in contacts:
                arm_of[idx] = arm_code.get(arm, NONE)
            from_dormant = next(
                (
                    c
                    for c, pair in enumerate(names.get("what", []))
                    if pair == ["engagement", "reactivated_from_dormant"]
                ),
                NONE,
            )
            counts: Counter = Counter()
            for parts_from, parts_to in db.execute(
                "SELECT parts_from, parts_to FROM coded_chunks "
                "WHERE shard = ? AND max_at >= ? AND min_at < ?",
                (shard, start, end),
            ).fetchall():
                blobs = db.execute(
                    "SELECT rows FROM coded_parts WHERE id >= ? AND id < ? ORDER BY id",
                    (parts_from, parts_to),
                )
                r = np.frombuffer(b"".join(blob for (blob,) in blobs), dtype=ROW_DTYPE)
                count_rollup(r[(r["at"] >= start) & (r["at"] < end)], arm_of, from_dormant, counts)
            out.update(
                rollup_texts(
                    counts,
                    [json.dumps(pair) for pair in names.get("what", [])],
                    names.get("type", []),
                    names.get("arm", []),
                    version,
                )
            )
    finally:
        db.close()
    return out


def write_rollup(db: sqlite3.Connection, rollup: Counter) -> None:
    db.executemany(UPSERT, [(*key, n) for key, n in rollup.items()])


def has_coded_ledger(path: Path | str) -> bool:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        found = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'coded_chunks'"
        ).fetchone()
        return found is not None
    finally:
        db.close()


def ledger_for(path: Path | str, contact_id: str) -> list[Decision]:
    """The contact's decisions from a coded ledger, oldest first (empty if it has none)."""
    return coded_decisions(path, contact_id) or []


def coded_decisions(path: Path | str, contact_id: str) -> list[Decision] | None:
    """The contact's decisions from the coded ledger of the store at `path`, oldest first,
    or None when the store has no coded ledger (its decisions are in the text ledger). A
    store already open reads them on its own connection (`core.coded.contact_ledger`)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return coded_contact_decisions(db, contact_id)
    finally:
        db.close()
