"""`replay --workers N`: one process per shard of contacts (a stable hash of `contact_id`),
each reading the whole file (so batches, duplicates, bad lines and the horizon are the same
as in one process) and deciding only its own contacts. Shard 0 writes straight into the run's
store; every other shard into its own file, whose chunks, contacts and texts are then copied
whole into the run's store under their shard numbers, where readers take the union; only the
small daily roll-up is added up.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from core.coded import ledger
from core.coded.replay import BadEvent, CodedRun, replay_coded
from core.policy import Policy
from core.sqlite_store import SQLiteStore

_COPY_SHARD = (
    "INSERT INTO main.coded_chunks SELECT * FROM shard.coded_chunks",
    "INSERT INTO main.coded_contacts SELECT * FROM shard.coded_contacts",
    "INSERT INTO main.coded_names SELECT * FROM shard.coded_names",
    "INSERT INTO main.contacts SELECT * FROM shard.contacts",
    "INSERT OR REPLACE INTO main.coded_meta SELECT * FROM shard.coded_meta",
)
"""A shard's tables copied into the run's store (written out: no SQL is built from names)."""


def shard_path(store_path: Path, shard: int) -> Path:
    """Where shard `shard` writes: the run's store itself for shard 0 (nothing to copy)."""
    return store_path if shard == 0 else store_path.with_name(f"{store_path.name}.shard{shard}")


def _work(policy: Policy, events_path: Path, path: Path, until: datetime | None, strict: bool,
          batch_size: int, shard: tuple[int, int], done: Any, read: Any,
          answer: Any) -> None:  # fmt: skip
    """One shard, in its own process: the run's outcome or its exception goes to `answer`."""
    bad: list[tuple[int, str]] = []
    try:
        if shard[0]:  # (shard 0 writes into the run's fresh store)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        store = SQLiteStore(path, defer_limit=5_000, cache_mb=8)
        try:
            report = (lambda n, p: bad.append((n, p))) if shard[0] == 0 else None

            def progress(n: int, lines: int) -> None:
                done[shard[0]] = n
                read[shard[0]] = lines

            run = replay_coded(policy, events_path, store, until, strict, report, progress,
                               batch_size, shard=shard)  # fmt: skip
        finally:
            store.close()
        answer.send(("ok", run, bad))
    except BadEvent as exc:
        answer.send(("bad", (exc.line, exc.problem), bad))
    except BaseException as exc:  # noqa: BLE001 - carried to the parent, which raises it
        answer.send(("error", repr(exc), bad))
    finally:
        answer.close()


def replay_sharded(
    policy: Policy,
    events_path: Path,
    store: SQLiteStore,
    until: datetime | None,
    strict: bool,
    on_bad_line: Callable[[int, str], None] | None,
    progress: Callable[[int, int], None] | None,
    batch_size: int,
    workers: int,
) -> CodedRun:
    """Replay over `workers` processes into `store` (fresh); the same outcome as one."""
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    # Bytes and lines each worker has read: progress is the slowest worker's.
    done = context.Array("q", workers, lock=False)
    read = context.Array("q", workers, lock=False)
    base = Path(store.path)
    procs, pipes = [], []
    for k in range(workers):
        reader, writer = context.Pipe(duplex=False)
        proc = context.Process(
            target=_work, daemon=True,
            args=(policy, events_path, shard_path(base, k), until, strict, batch_size,
                  (k, workers), done, read, writer),
        )  # fmt: skip
        proc.start()
        writer.close()
        procs.append(proc)
        pipes.append(reader)
    answers: dict[int, tuple] = {}
    pending = dict(enumerate(pipes))
    try:
        while pending:
            for ready in wait(list(pending.values()), timeout=0.25):
                k = pipes.index(ready)
                try:
                    answers[k] = ready.recv()
                except EOFError:
                    answers[k] = ("error", f"worker {k} ended without an answer", [])
                del pending[k]
            if progress:
                progress(min(done), min(read))
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    bad_lines = answers[0][2]
    if on_bad_line:
        for number, problem in bad_lines:
            on_bad_line(number, problem)
    for k in range(workers):
        status, value, _ = answers[k]
        if status == "bad":
            _remove_shards(base, workers)
            raise BadEvent(*value)
        if status == "error":
            _remove_shards(base, workers)
            raise RuntimeError(f"replay worker {k} failed: {value}")
    runs: list[CodedRun] = [answers[k][1] for k in range(workers)]
    _merge(store, base, workers, runs)
    return _combined(runs)


def _merge(store: SQLiteStore, base: Path, workers: int, runs: list[CodedRun]) -> None:
    """Copy every other shard's tables into the run's store (shard 0's are there)."""
    store.close()
    db = sqlite3.connect(base, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        ledger.create(db)
        for k in range(1, workers):
            db.execute("ATTACH DATABASE ? AS shard", (str(shard_path(base, k)),))
            db.execute("BEGIN IMMEDIATE")
            for statement in _COPY_SHARD:
                db.execute(statement)
            db.execute("COMMIT")
            db.execute("DETACH DATABASE shard")
        db.execute("BEGIN IMMEDIATE")
        rollup: Counter = Counter()
        for run in runs:
            rollup.update(run.rollup)
        ledger.write_rollup(db, rollup)
        db.execute("COMMIT")
    finally:
        db.close()
    _remove_shards(base, workers)


def _remove_shards(base: Path, workers: int) -> None:
    """The other shards' files (shard 0's store is the run's, which the caller removes on
    failure)."""
    for k in range(1, workers):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{shard_path(base, k)}{suffix}").unlink(missing_ok=True)


def _combined(runs: list[CodedRun]) -> CodedRun:
    """One outcome from the shards': what every shard saw once (lines, duplicates), what
    each decided added up."""
    first = runs[0]
    out = CodedRun(first.stats, first.bad_lines, first.after_until, first.latest)
    stats = out.stats
    stats.applied = sum(r.stats.applied for r in runs)
    stats.decisions = sum(r.stats.decisions for r in runs)
    stats.contacts_touched = sum(r.stats.contacts_touched for r in runs)
    for r in runs[1:]:
        stats.transitions.update(r.transitions)
    out.transitions = stats.transitions
    firsts = [r.first for r in runs if r.first is not None]
    out.first = min(firsts) if firsts else None
    return out
