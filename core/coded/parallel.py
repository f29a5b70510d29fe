"""`replay --workers N`: one process per shard of contacts (a stable hash of `contact_id`,
`core.coded.replay.shard_of`). This process reads the file once, as one process would (so
batches, duplicates, bad lines and the horizon are the same), and hands each worker only its
contacts' events, batch by batch, through pipes deep enough that neither waits on the other
batch by batch; the workers decide. Every worker writes its chunks, contacts and texts
straight into the run's store under its shard number, where readers take the union, each
write a short transaction of its own (the store is in WAL mode: a worker waits for the
other's inserts, never for its deciding or packing); each shard's daily roll-up is added in
as its answer comes. Nothing is copied after the workers end, and there is no file per
shard: a failed run leaves only the partial store, which the caller removes.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from functools import partial
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from crm_elasticity.core.coded import ledger
from crm_elasticity.core.coded.codes import Names, coded_policies, to_us
from crm_elasticity.core.coded.replay import CodedRun, Decider, read_batches, shard_of
from crm_elasticity.core.gcpause import cyclic_gc_paused
from crm_elasticity.core.pipeline import RunStats
from crm_elasticity.core.policy import Policy
from crm_elasticity.core.sqlite_store import SQLiteStore, unjournaled_writer

try:
    import fcntl
except ImportError:  # (not on Windows)
    fcntl = None  # type: ignore[assignment]

_PIPE_BYTES = 1 << 20
"""Each feed's pipe buffer (Linux lets a process raise it to 1 MB; the default is 64 KB): a
few batches for a worker in flight, so this process keeps reading while a worker finishes
a batch, and a worker always has its next batch waiting, rather than the two taking turns."""
_WRITE_WAIT_MS = 600_000
"""How long a worker waits for the store's write lock: the other workers hold it for one
write at a time (a second or so at most), and a worker that dies releases it (SQLite's locks
are the OS's)."""


def _work(policy: Policy, path: Path, shard: int, feed: Any, answer: Any) -> None:
    """One shard, in its own process: decides the batches `feed` brings (batch number, fresh
    events) until ("end", horizon, batches), writing into the run's store at `path`; its
    outcome or its exception goes to `answer`."""
    try:
        run = CodedRun(RunStats())
        db = unjournaled_writer(path, busy_ms=_WRITE_WAIT_MS)
        try:
            decider = Decider(policy, db, shard, run, shared_file=True)
            with cyclic_gc_paused():
                while True:
                    number, fresh = feed.recv()
                    if number == _END:
                        end_us, batches = fresh
                        break
                    decider.decide(fresh, number)
                decider.finish(end_us, batches)
        finally:
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
    pipe holds the reader back, so memory stays bounded. A worker that fails (or is killed)
    stops the others; the caller removes the store, as after any failed run."""
    with store.written_alone():
        path = Path(store.path)
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        _create_ledger(path)  # before the workers: they only add rows
        procs, feeds, answers_in = [], [], []
        for k in range(workers):
            feed_out, feed_in = context.Pipe(duplex=False)
            _widen(feed_in)
            answer_out, answer_in = context.Pipe(duplex=False)
            proc = context.Process(
                target=_work, daemon=True, args=(policy, path, k, feed_out, answer_in)
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
            answers = _answers(procs, answers_in, partial(_add_rollup, path))
        except BaseException:
            _stop(procs, failed=True)
            raise
        finally:
            for pipe in answers_in:
                pipe.close()
        failures = [(k, value) for k, (status, value) in enumerate(answers) if status == "error"]
        _stop(procs, failed=bool(failures))
        if failures or any(status != "ok" for status, _ in answers):
            k, problem = failures[0] if failures else (0, "stopped before the end of its events")
            raise RuntimeError(f"replay worker {k} failed: {problem}")
        return _combined(run, [value for _, value in answers])


def _widen(pipe: Any) -> None:
    """Raise the pipe's buffer to `_PIPE_BYTES` where the system allows it (Linux)."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if set_size is None:
        return
    with suppress(OSError):  # (a lower system limit: the default buffer stays)
        fcntl.fcntl(pipe.fileno(), set_size, _PIPE_BYTES)


def _create_ledger(path: Path) -> None:
    db = unjournaled_writer(path, busy_ms=_WRITE_WAIT_MS)
    try:
        ledger.create(db)
    finally:
        db.close()


@contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """Start a worker with Ctrl-C ignored (an ignored signal stays ignored across exec): a
    terminal's Ctrl-C reaches the whole process group, and a worker still starting its
    interpreter would print a traceback. The parent handles it: it stops the workers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _answers(
    procs: list, pipes: list, on_done: Callable[[CodedRun], None]
) -> list[tuple[str, Any]]:
    """Each worker's answer, in shard order; `on_done(run)` for each shard that succeeded as
    its answer comes (while the others may still be writing). An error (or a worker that
    ended without an answer: killed, out of memory) ends the wait at once: the caller stops
    the others rather than let them decide for a run that has failed."""
    answers: dict[int, tuple[str, Any]] = {}
    pending = dict(enumerate(pipes))
    while pending:
        ready = set(wait([*pending.values(), *(procs[k].sentinel for k in pending)]))
        for k, pipe in list(pending.items()):
            if pipe in ready or procs[k].sentinel in ready:
                # (an ended worker's pipe holds its answer, or says it sent none)
                answers[k] = _answer(k, pipe)
                del pending[k]
                status, value = answers[k]
                if status == "error":
                    return [answers.get(j, ("stopped", None)) for j in range(len(pipes))]
                if status == "ok":
                    on_done(value)
    return [answers[k] for k in range(len(pipes))]


def _answer(k: int, pipe: Any) -> tuple[str, Any]:
    try:
        return pipe.recv()
    except EOFError:
        return ("error", f"worker {k} ended without an answer")


def _stop(procs: list, failed: bool) -> None:
    """Wait for the workers to exit (they have answered, or their feeds are closed); when the
    run failed, kill them instead: their writes go to a store the caller removes."""
    for proc in procs:
        if failed:
            proc.kill()
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _add_rollup(path: Path, run: CodedRun) -> None:
    """A shard's daily roll-up added into the run's store (each row's count adds to what the
    shards before it wrote)."""
    db = unjournaled_writer(path, busy_ms=_WRITE_WAIT_MS)
    try:
        db.execute("BEGIN IMMEDIATE")
        ledger.write_rollup(db, run.rollup)
        db.execute("COMMIT")
    finally:
        db.close()


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
