"""`elasticity replay` on the coded path: lines decoded with msgspec, contacts as indices,
decisions streamed into the coded ledger, final states written once at the end.

It decides exactly what the object pipeline decides for a replay: the same batches (of
`batch_size` good lines, each sorted by time), the same duplicate rule (an event id counts
once in the whole run), the same time rules up to the horizon.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO

from core.coded import engine, ledger
from core.coded.codes import NONE, STATUSES, Names, coded_policies, from_us, to_us
from core.coded.events import LineProblem, decode_event
from core.coded.seen import SeenIds
from core.coded.states import write_contacts
from core.gcpause import cyclic_gc_paused
from core.pipeline import RunStats, policy_record, version_key
from core.policy import Policy
from core.sqlite_store import SQLiteStore
from core.store import Batch

_BY_TIME = itemgetter(2)
_FLUSH_ROWS = 50_000


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
    transitions: Counter = field(default_factory=Counter)
    rollup: Counter = field(default_factory=Counter)


def replay_coded(
    policy: Policy,
    events_path: Path,
    store: SQLiteStore,
    until: datetime | None,
    strict: bool,
    on_bad_line: Callable[[int, str], None] | None,
    progress: Callable[[int, int], None] | None,
    batch_size: int,
    shard: tuple[int, int] | None = None,
    horizon: datetime | None = None,
) -> CodedRun:
    """Replay into `store` (fresh). With `shard=(k, n)` only contacts of shard k of n are
    decided; every line is still read, so batches, duplicates and bad lines are the same as
    in one process (`on_bad_line` is for the caller to call from one shard only), and
    `horizon` (the last event's time over all shards) must be given."""
    names = Names()
    p = coded_policies(policy, names)[None]
    type_codes = p.type_codes
    until_us = to_us(until) if until is not None else None
    run = CodedRun(RunStats())
    stats = run.stats
    reread = events_path.open("rb")
    seen = SeenIds(lambda offset: _id_at(reread, offset))
    index: dict[str, int] = {}
    ids: list[str] = []
    states: list = []
    rows: list = []
    latest = -(1 << 62)
    mine = (lambda cid: True) if shard is None else (
        lambda cid: shard_of(cid, shard[1]) == shard[0])  # fmt: skip
    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        ledger.create(db)  # (executescript commits: before the run's transaction)
        db.execute("BEGIN IMMEDIATE")
        batch: list[tuple] = []
        batches = [0]
        writer = ledger.ChunkWriter(db, shard[0] if shard else 0, names)

        def decide() -> None:
            stats.events_in += len(batch)
            firsts = seen.first_sightings([item[0] for item in batch],
                                          [item[5] for item in batch])  # fmt: skip
            stats.duplicates += firsts.count(False)
            fresh = [item for item, first in zip(batch, firsts, strict=True)
                     if first and item[4]]  # fmt: skip
            fresh.sort(key=_BY_TIME)
            stats.applied += len(fresh)
            apply = engine.apply
            made = len(rows)
            for eid, cid, at, kind, _, _ in fresh:
                i = index.get(cid)
                if i is None:
                    i = index[cid] = len(ids)
                    ids.append(cid)
                    states.append(apply(None, i, kind, at, eid, p, rows, cid))
                    writer.set_arm(i, states[i].arm)
                else:
                    states[i] = apply(states[i], i, kind, at, eid, p, rows, cid)
            batches[0] += 1
            if run.first is None and len(rows) > made:
                run.first = (batches[0], from_us(min(r[1] for r in rows[made:])))
            batch.clear()
            if len(rows) >= _FLUSH_ROWS:
                _flush(writer, rows, run)

        done = number = 0
        with cyclic_gc_paused(), events_path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                done += len(line)
                if progress and number % 10_000 == 0:
                    progress(done, number)
                if not line.strip():
                    continue
                try:
                    event = decode_event(line)
                except LineProblem as exc:
                    problem = str(exc)
                else:
                    kind = type_codes.get(event.type)
                    if kind is not None:
                        at = to_us(event.occurred_at)
                        if until_us is not None and at > until_us:
                            run.after_until += 1
                            continue
                        if at > latest:
                            latest = at
                        cid = event.contact_id
                        batch.append((event.event_id, cid, at, kind, mine(cid),
                                      done - len(line)))  # fmt: skip
                        if len(batch) >= batch_size:
                            decide()
                        continue
                    problem = f"type: unknown event type '{event.type}'"
                if strict:
                    raise BadEvent(number, problem)
                run.bad_lines += 1
                if on_bad_line:
                    on_bad_line(number, problem)
            if batch:
                decide()
            if progress:
                progress(done, number)
            run.latest = from_us(latest) if stats.events_in else None
            end = horizon or until or run.latest
            if end is not None:
                end_us = to_us(end)
                advance = engine.advance
                made = len(rows)
                for s in states:
                    advance(s, end_us, rows)
                    if len(rows) >= _FLUSH_ROWS:
                        _flush(writer, rows, run)
                        made = 0
                if run.first is None and len(rows) > made:
                    run.first = (batches[0] + 1, from_us(min(r[1] for r in rows[made:])))
            _flush(writer, rows, run)
            writer.finish([(i, cid, states[i].policy.segment) for i, cid in enumerate(ids)],
                          p.version)  # fmt: skip
            run.rollup = writer.rollup_rows(p.version)
            if shard is None:
                ledger.write_rollup(db, run.rollup)
            write_contacts(db, ids, states)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.close()
        reread.close()
    stats.contacts_touched = len(ids)
    stats.transitions = run.transitions
    return run


def _id_at(handle: BinaryIO, offset: int) -> str:
    handle.seek(offset)
    return decode_event(handle.readline()).event_id


def _flush(writer: ledger.ChunkWriter, rows: list, run: CodedRun) -> None:
    if not rows:
        return
    writer.write(rows)
    run.stats.decisions += len(rows)
    moved = run.transitions
    for (src, dst), n in Counter((r[3], r[4]) for r in rows).items():
        if src == NONE:
            moved["enrolled"] += n
        elif src != dst:
            moved[f"{STATUSES[src].value}->{STATUSES[dst].value}"] += n
    rows.clear()


def record_policy(store: SQLiteStore, policy: Policy, first_at: datetime) -> None:
    """What the run's policy version says, as the object pipeline records it."""
    store.commit(Batch(cursors={version_key(policy.version): policy_record(policy, first_at)}))
