"""`replay --workers N`: one process per shard of contacts (a stable hash of `contact_id`,
`core.coded.replay.shard_of`). This process reads the file once, as one process would (so
batches, duplicates, bad lines and the horizon are the same), and hands each worker only its
contacts' events, batch by batch; the workers decide. Shard 0 writes straight into the run's
store; every other shard into its own file, whose chunks, contacts and texts are then copied
whole into the run's store under their shard numbers, where readers take the union; only the
small daily roll-up is added up.
"""

from __future__ import annotations

import multiprocessing
import signal
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from core.coded import ledger
from core.coded.codes import Names, coded_policies, to_us
from core.coded.replay import CodedRun, Decider, read_batches, shard_of
from core.gcpause import cyclic_gc_paused
from core.pipeline import RunStats
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


def _work(policy: Policy, path: Path, shard: int, feed: Any, answer: Any) -> None:
    """One shard, in its own process: decides the batches `feed` brings (batch number, fresh
    events) until ("end", horizon, batches); its outcome or its exception goes to `answer`."""
    try:
        if shard:  # (shard 0 writes into the run's fresh store)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        SQLiteStore(path, cache_mb=8).close()  # the store's tables, for the final states
        run = CodedRun(RunStats())
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            ledger.create(db)
            db.execute("BEGIN IMMEDIATE")
            decider = Decider(policy, db, shard, run)
            with cyclic_gc_paused():
                while True:
                    number, fresh = feed.recv()
                    if number == _END:
                        end_us, batches = fresh
                        break
                    decider.decide(fresh, number)
                decider.finish(end_us, batches)
            db.execute("COMMIT")
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")
            db.close()
        answer.send(("ok", run))
    except EOFError:  # the reader stopped (a bad line under --strict, or it failed)
        answer.send(("stopped", None))
    except BaseException as exc:  # noqa: BLE001 - carried to the parent, which raises it
        answer.send(("error", repr(exc)))
    finally:
        answer.close()
        feed.close()


_END = -1


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
    """Replay over `workers` processes into `store` (fresh); the same outcome as one. This
    process reads the file once (lines, duplicates, batches, bad lines, the horizon) and
    sends each worker its contacts' fresh events, batch by batch; a worker waiting on a full
    pipe holds the reader back, so memory stays bounded."""
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    base = Path(store.path)
    procs, feeds, answers_in = [], [], []
    for k in range(workers):
        feed_out, feed_in = context.Pipe(duplex=False)
        answer_out, answer_in = context.Pipe(duplex=False)
        proc = context.Process(
            target=_work, daemon=True, args=(policy, shard_path(base, k), k, feed_out, answer_in)
        )
        with _ctrl_c_ignored():
            proc.start()
        feed_out.close()
        answer_in.close()
        procs.append(proc)
        feeds.append(feed_in)
        answers_in.append(answer_out)
    run = CodedRun(RunStats())
    type_codes = coded_policies(policy, Names())[None].type_codes
    shards: dict[str, int] = {}
    """Each contact's shard, hashed once (a contact has events in many batches)."""
    shard_known = shards.get
    try:
        try:
            number = 0
            with cyclic_gc_paused():
                for number, fresh in enumerate(
                    read_batches(
                        type_codes,
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
                    parts: list[list[tuple]] = [[] for _ in range(workers)]
                    for item in fresh:
                        cid = item[1]
                        shard = shard_known(cid)
                        if shard is None:
                            shard = shards[cid] = shard_of(cid, workers)
                        parts[shard].append(item)
                    for feed, part in zip(feeds, parts, strict=True):
                        if part:
                            feed.send((number, part))
            end = until or run.latest
            for feed in feeds:
                feed.send((_END, (None if end is None else to_us(end), number)))
        except BrokenPipeError:
            pass  # a worker ended: its answer says why
        finally:
            for feed in feeds:
                feed.close()
        answers = [_answer(k, pipe) for k, pipe in enumerate(answers_in)]
    except BaseException:
        _stop(procs)
        _remove_shards(base, workers)
        raise
    finally:
        for pipe in answers_in:
            pipe.close()
    _stop(procs)
    for k, (status, value) in enumerate(answers):
        if status != "ok":
            _remove_shards(base, workers)
            raise RuntimeError(f"replay worker {k} failed: {value}")
    runs: list[CodedRun] = [value for _, value in answers]
    _merge(store, base, workers, runs)
    return _combined(run, runs)


@contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """Start a worker with Ctrl-C ignored (an ignored signal stays ignored across exec): a
    terminal's Ctrl-C reaches the whole process group, and a worker still starting its
    interpreter would print a traceback. The parent handles it: it closes the feeds, and each
    worker stops at the end of its feed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _answer(k: int, pipe: Any) -> tuple[str, Any]:
    try:
        return pipe.recv()
    except EOFError:
        return ("error", f"worker {k} ended without an answer")


def _stop(procs: list) -> None:
    for proc in procs:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()


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


def _combined(run: CodedRun, runs: list[CodedRun]) -> CodedRun:
    """One outcome: what the reader counted (lines, duplicates, the latest time), what each
    shard decided added up."""
    stats = run.stats
    stats.applied = sum(r.stats.applied for r in runs)
    stats.decisions = sum(r.stats.decisions for r in runs)
    stats.contacts_touched = sum(r.stats.contacts_touched for r in runs)
    for r in runs:
        stats.transitions.update(r.transitions)
    run.transitions = stats.transitions
    firsts = [r.first for r in runs if r.first is not None]
    run.first = min(firsts) if firsts else None
    return run
