"""`elasticity replay` on the coded path: lines decoded with msgspec, contacts as indices,
decisions streamed into the coded ledger, final states written once at the end.

It decides exactly what the object pipeline decides for a replay: the same batches (of
`batch_size` good lines, each sorted by time), the same duplicate rule (an event id counts
once in the whole run), the same time rules up to the horizon. Reading the file
(`read_batches`) and deciding (`Decider`) are apart, so `replay --workers N` reads it once
and hands each worker only its contacts' events.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from itertools import accumulate
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np

from crm_elasticity.core.coded import engine, ledger
from crm_elasticity.core.coded.codes import (
    EPOCH,
    NONE,
    ONE_US,
    STATUSES,
    Names,
    coded_policies,
    from_us,
    to_us,
)
from crm_elasticity.core.coded.events import (
    LineProblem,
    UnknownKeys,
    WireEvent,
    decode_chunk,
    decode_event,
    settle,
)
from crm_elasticity.core.coded.seen import SeenIds
from crm_elasticity.core.coded.states import INSERT_CONTACT, contact_rows, write_contacts
from crm_elasticity.core.cursors import Cursors
from crm_elasticity.core.gcpause import cyclic_gc_paused
from crm_elasticity.core.models import EARLIEST_INSTANT, LATEST_INSTANT, Transition
from crm_elasticity.core.pipeline import RunStats, policy_record
from crm_elasticity.core.policy import Policy
from crm_elasticity.core.sqlite_store import SQLiteStore, unjournaled_writer
from crm_elasticity.core.store import Batch

_BY_TIME = itemgetter(2)
_FLUSH_ROWS = 50_000
_CHUNK_BYTES = 1 << 15
"""Lines read (and decoded in one msgspec call) at a time: a few hundred. Measured: 16-64 KB
reads a file in three quarters of the time line by line takes; 1 MB (thousands of decoded
events alive at once, out of the CPU's caches) no faster than line by line."""
_PROGRESS_LINES = 10_000


class BadEvent(Exception):  # noqa: N818 - it names the thing reported
    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


def shard_of(contact_id: str, shards: int) -> int:
    """A contact's shard: stable across runs, machines and Python versions."""
    return zlib.crc32(contact_id.encode()) % shards


@dataclass
class CodedRun:
    stats: RunStats
    bad_lines: int = 0
    after_until: int = 0
    latest: datetime | None = None
    first: tuple[int, datetime] | None = None
    """(batch number, earliest decision time) of the first batch that decided anything: the
    policy version's record says when it first decided."""
    transitions: Counter[Transition] = field(default_factory=Counter)
    rollup: Counter = field(default_factory=Counter)
    unknown: UnknownKeys = field(default_factory=UnknownKeys)
    """Lines with keys the event format does not have (ignored), and which keys."""


def replay_coded(
    policy: Policy,
    events_path: Path,
    store: SQLiteStore,
    until: datetime | None,
    strict: bool,
    on_bad_line: Callable[[int, str], None] | None,
    progress: Callable[[int, int], None] | None,
    batch_size: int,
) -> CodedRun:
    """Replay into `store` (fresh), in this process."""
    run = CodedRun(RunStats())
    with store.written_alone():
        db = unjournaled_writer(store.path)
        try:
            ledger.create(db)  # (executescript commits: before the run's transaction)
            db.execute("BEGIN IMMEDIATE")
            decider = Decider(policy, db, 0, run)
            number = 0
            with cyclic_gc_paused():
                for number, fresh in enumerate(
                    read_batches(
                        decider.p.type_codes,
                        events_path,
                        until,
                        strict,
                        on_bad_line,
                        progress,
                        batch_size,
                        run,
                    ),
                    1,
                ):
                    decider.decide(fresh, number)
                end = until or run.latest
                decider.finish(None if end is None else to_us(end), number)
                ledger.write_rollup(db, run.rollup)
            db.execute("COMMIT")
        finally:
            db.close()  # (a failed run is removed whole, unjournaled: nothing to roll back)
    return run


def read_batches(
    type_codes: dict[str, int],
    events_path: Path,
    until: datetime | None,
    strict: bool,
    on_bad_line: Callable[[int, str], None] | None,
    progress: Callable[[int, int], None] | None,
    batch_size: int,
    run: CodedRun,
) -> Iterator[list[tuple]]:
    """The file's events, batch by batch (`batch_size` good lines each): each batch's first
    sightings of their event ids as (event id, contact id, time, type code), sorted by time.
    Counts lines, duplicates and the latest time into `run`; reports (or, `strict`, raises)
    bad lines."""
    until_us = to_us(until) if until is not None else None
    stats = run.stats
    latest = -(1 << 62)
    batch: list[tuple] = []
    offsets: list[int] = []
    with events_path.open("rb") as reread, events_path.open("rb") as handle:
        seen = SeenIds(lambda offset: _id_at(reread, offset))

        def fresh() -> list[tuple]:
            stats.events_in += len(batch)
            firsts = seen.first_sightings([item[0] for item in batch], offsets)
            repeated = firsts.count(False)
            stats.duplicates += repeated
            out = (
                [item for item, first in zip(batch, firsts, strict=True) if first]
                if repeated
                else batch.copy()
            )
            out.sort(key=_BY_TIME)
            batch.clear()
            offsets.clear()
            return out

        done = number = 0
        mark = _PROGRESS_LINES
        type_of = type_codes.get
        unknown = run.unknown
        for lines in iter(partial(handle.readlines, _CHUNK_BYTES), []):
            decoded: Sequence = decode_chunk(lines, unknown) or [
                _decoded(line, unknown) for line in lines
            ]
            starts = list(accumulate(map(len, lines), initial=done))
            for event, start in zip(decoded, starts, strict=False):
                number += 1
                if event is None:  # a blank line
                    continue
                if event.__class__ is not str:
                    when = event.occurred_at
                    if when.tzinfo is not UTC or not EARLIEST_INSTANT <= when < LATEST_INSTANT:
                        event = _settled(event)
                if event.__class__ is not str:
                    kind = type_of(event.type)
                    if kind is not None:
                        at = (event.occurred_at - EPOCH) // ONE_US
                        if until_us is not None and at > until_us:
                            run.after_until += 1
                            continue
                        if at > latest:
                            latest = at
                        batch.append((event.event_id, event.contact_id, at, kind))
                        offsets.append(start)
                        if len(batch) >= batch_size:
                            yield fresh()
                        continue
                    event = f"type: unknown event type '{event.type}'"
                if strict:
                    raise BadEvent(number, event)
                run.bad_lines += 1
                if on_bad_line:
                    on_bad_line(number, event)
            done = starts[-1]
            if progress and number >= mark:
                progress(done, number)
                mark = (number // _PROGRESS_LINES + 1) * _PROGRESS_LINES
        if batch:
            yield fresh()
        if progress:
            progress(done, number)
    run.latest = from_us(latest) if stats.events_in else None


class Decider:
    """Decides batches of fresh events (from `read_batches`) into a coded ledger on `db`,
    then the time rules up to the horizon and the final states. Counts what it decides
    (applied, decisions, transitions, the roll-up, the first decision) into `run`."""

    def __init__(
        self,
        policy: Policy,
        db: sqlite3.Connection,
        shard: int,
        run: CodedRun,
        shared_file: bool = False,
    ) -> None:
        self.names = Names()
        self.p = coded_policies(policy, self.names)[None]
        self.db = db
        self.run = run
        self.shared_file = shared_file
        """Other processes write the same file (`replay --workers N`): each write is its own
        short transaction, taken once its rows are packed and counted, so they wait on each
        other only while SQLite inserts, never while one decides or packs. Otherwise the
        caller's transaction holds the whole run."""
        self.pending = _PendingWrites()
        """With `shared_file`: what the chunk writer wrote since the last transaction."""
        self.index: dict[str, int] = {}
        self.ids: list[str] = []
        self.states: list = []
        self.rows: list = []
        # (the writer only inserts: with `shared_file` its statements wait for the lock)
        writes_to = cast(sqlite3.Connection, self.pending) if shared_file else db
        self.writer = ledger.ChunkWriter(writes_to, shard, self.names)

    def decide(self, fresh: list[tuple], number: int) -> None:
        """Batch `number` (counting from 1 over the whole file)."""
        run, rows, index, ids, states, p = (
            self.run,
            self.rows,
            self.index,
            self.ids,
            self.states,
            self.p,
        )
        run.stats.applied += len(fresh)
        apply = engine.apply
        set_arm = self.writer.set_arm
        known = index.get
        made = len(rows)
        for eid, cid, at, kind in fresh:
            i = known(cid)
            if i is None:
                i = index[cid] = len(ids)
                ids.append(cid)
                s = apply(None, i, kind, at, eid, p, rows, cid)
                states.append(s)
                set_arm(i, s.arm)
            else:  # (a known contact's state is updated in place)
                apply(states[i], i, kind, at, eid, p, rows, cid)
        if run.first is None and len(rows) > made:
            run.first = (number, from_us(min(r[1] for r in rows[made:])))
        if len(rows) >= _FLUSH_ROWS:
            self._flush()

    def finish(self, end_us: int | None, batches: int) -> None:
        """The time rules up to `end_us` (after the file's `batches` batches), the texts,
        contacts and final states; the roll-up into `run.rollup`."""
        run, rows = self.run, self.rows
        if end_us is not None:
            advance = engine.advance
            made = len(rows)
            for s in self.states:
                advance(s, end_us, rows)
                if len(rows) >= _FLUSH_ROWS:
                    self._flush()
                    made = 0
            if run.first is None and len(rows) > made:
                run.first = (batches + 1, from_us(min(r[1] for r in rows[made:])))
        self._flush()
        ids, states = self.ids, self.states
        segments = [(i, cid, states[i].policy.segment) for i, cid in enumerate(ids)]
        self.writer.finish(segments, self.p.version)
        if self.shared_file:
            contacts = list(contact_rows(ids, states))
            with _write_transaction(self.db):
                self.pending.run_on(self.db)
                self.db.executemany(INSERT_CONTACT, contacts)
        else:
            write_contacts(self.db, ids, states)
        run.rollup = self.writer.rollup_rows(self.p.version)
        run.stats.contacts_touched = len(ids)
        run.stats.transitions = run.transitions

    def _flush(self) -> None:
        if not self.rows:
            return
        _flush(self.writer, self.rows, self.run)
        if self.shared_file:
            with _write_transaction(self.db):
                self.pending.run_on(self.db)


class _PendingWrites:
    """Stands in for the connection a `ChunkWriter` inserts through: keeps its statements
    (consecutive ones of the same SQL as one `executemany`) for `run_on` to run on the real
    connection, in a transaction taken only then."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, list]] = []

    def execute(self, sql: str, params: Sequence = ()) -> None:
        if self.statements and self.statements[-1][0] == sql:
            self.statements[-1][1].append(params)
        else:
            self.statements.append((sql, [params]))

    def executemany(self, sql: str, many: Iterable[Sequence]) -> None:
        self.statements.append((sql, list(many)))

    def run_on(self, db: sqlite3.Connection) -> None:
        for sql, many in self.statements:
            db.executemany(sql, many)
        self.statements.clear()


@contextmanager
def _write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _decoded(line: bytes, unknown: UnknownKeys) -> WireEvent | str | None:
    """A line read on its own: its event, the problem with it, or None for a blank line."""
    if not line.strip():
        return None
    try:
        return decode_event(line, unknown)
    except LineProblem as exc:
        return str(exc)


def _settled(event: WireEvent) -> WireEvent | str:
    try:
        return settle(event)
    except LineProblem as exc:
        return str(exc)


def _id_at(handle: BinaryIO, offset: int) -> str:
    handle.seek(offset)
    return decode_event(handle.readline()).event_id


def _flush(writer: ledger.ChunkWriter, rows: list, run: CodedRun) -> None:
    if not rows:
        return
    decided = writer.write(rows)
    assert decided is not None  # rows is not empty
    run.stats.decisions += len(rows)
    moved = run.transitions
    # (from, to) pairs counted on the packed columns: from is NONE (-1) or a status code.
    pairs = (decided["from_status"] + 1) * len(STATUSES) + decided["to_status"]
    found, counts = np.unique(pairs, return_counts=True)
    for pair, n in zip(found.tolist(), counts.tolist(), strict=True):
        src, dst = divmod(pair, len(STATUSES))
        src -= 1
        if src == NONE:
            moved[Transition.ENROLLED] += n
        elif src != dst:
            moved[Transition.between(STATUSES[src], STATUSES[dst])] += n
    rows.clear()


def record_policy(store: SQLiteStore, policy: Policy, first_at: datetime) -> None:
    """What the run's policy version says, as the object pipeline records it."""
    store.commit(Batch(cursors={Cursors.policy(policy.version): policy_record(policy, first_at)}))
