"""`elasticity serve`: the webhook endpoints as an ASGI application under uvicorn, and a worker
that drains the store's inbox through the shared runner.

`serve` runs the worker in a process of its own on the same SQLite file (WAL lets both write):
deciding and writing back is CPU-bound Python, and in the server's process it would hold the
GIL against the intake, whose answers must stay fast. The server's main thread supervises it:
a worker that dies is respawned (with a growing delay if it keeps dying), and the intake is
never blocked on it. Tests use the thread worker.

The store file is watched by identity (device and inode): deleted or replaced under a running
`serve`, every webhook is answered 503 (the vendor delivers it again later) instead of being
acknowledged into a file nobody will read; once a file is at the path again, `serve` reopens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import multiprocessing
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from multiprocessing import reduction
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from crm_elasticity.connectors.base import Connector, ConnectorError, WebhookRequest
from crm_elasticity.connectors.intake import (
    MAX_BODY_BYTES,
    HttpAnswer,
    handle_rotating,
    json_answer,
    retiring_env,
)
from crm_elasticity.connectors.registry import load_connector
from crm_elasticity.connectors.runner import Runner
from crm_elasticity.core.models import Event
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.store import StoreError

log = logging.getLogger(__name__)
access_log = logging.getLogger("crm_elasticity.connectors.server.access")

DRAIN_BATCH = 100
"""Events a worker transaction commits (still one CRM batch read). Intake's insert waits for
the SQLite write lock while a batch commits: under load a 500-event commit held it for 15-30
ms, and SQLite's busy handler, sleeping 1, 2, 5, 10, 15 ms between tries, made that an 18 or
33 ms wait for the request and those queued behind it; 100 events hold it for under 10 ms."""
INTAKE_CHECKPOINT_PAGES = 4096
"""WAL pages before an intake commit checkpoints, when a worker process shares the file.
SQLite checkpoints inside the commit that finds the WAL past the threshold: at the default
1000 that was mostly an intake request's, copying ~1000 pages before answering (up to 260 ms
under load, with the requests queued behind it waiting). The worker keeps the default, so its
commits copy nearly everything and intake's rare checkpoints only the rest. Never (0) is no
better: a checkpoint racing intake's writes never completes, so the WAL never restarts from
the beginning and grew past 500 MB in 40 s of load; 4096 keeps it near 18 MB, and bounds it
too when the worker commits nothing (a CRM outage)."""
SUPERVISE_SECONDS = 0.25
"""How often the server's main thread checks the worker and the store file."""
LOCK_NAME = "serve.lock"


@dataclass(frozen=True)
class ServerLimits:
    request_seconds: float = 10.0
    """A connection must deliver a whole request (headers and body) within this, counted from
    its opening or its previous answer: a stalled or trickling client is disconnected."""
    keep_alive_seconds: int = 5
    """An idle keep-alive connection is closed after this."""
    max_connections: int = 256
    """Open connections (and requests in progress) at most; a request beyond is answered 503."""
    handler_threads: int = 8
    """Requests verified and recorded at once. The store takes one write at a time anyway.
    0: in the event loop itself (no thread hop, but a slow store write holds every request)."""
    shutdown_seconds: int = 30
    """On SIGTERM, requests in progress are finished for up to this long."""


# ---- the inbox worker ------------------------------------------------------------------------


class InboxWorker(threading.Thread):
    """Drains the inbox whenever woken (and every `idle_seconds`); a CRM outage only delays."""

    def __init__(self, runners: list[Runner], idle_seconds: float = 5.0) -> None:
        super().__init__(name="inbox-worker", daemon=True)
        self.runners = runners
        self.idle_seconds = idle_seconds
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(self.idle_seconds)
            self.wake.clear()
            self.drain_once()

    def drain_once(self) -> None:
        with self.lock:
            # Events recorded before the inbox had a partition per runner are a sole runner's.
            sole = len(self.runners) == 1
            for runner in self.runners:
                try:
                    runner.drain_inbox(DRAIN_BATCH, stop=self.stopping.is_set, unpartitioned=sole)
                except (ConnectorError, StoreError) as exc:
                    log.warning("inbox stays queued for %s: %s", runner.connector.vendor, exc)

    def alive(self) -> bool:
        return self.is_alive()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()


RunnerFactory = Callable[[], list[Runner]]
"""Builds a process's own runners (connectors and store connections are not shared across
processes). Must be picklable: a module-level function or a partial of one."""


class Waker:
    """Wakes the worker process through a pipe, never blocking: a full pipe means it is woken
    already, a broken one that it is dead (its supervisor respawns it). A multiprocessing Event
    would block every caller for good once the worker died holding its lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None

    def attach(self, fd: int) -> None:
        os.set_blocking(fd, False)
        with self._lock:
            old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)

    def detach(self) -> None:
        with self._lock:
            old, self._fd = self._fd, None
        if old is not None:
            os.close(old)

    def set(self) -> None:
        with self._lock:  # the fd is not closed (and its number reused) while written
            if self._fd is None:
                return
            with contextlib.suppress(OSError):
                os.write(self._fd, b"\0")


class RespawnDelay:
    """How long to wait before respawning a dead worker: `first`, doubling while it keeps
    dying within `stable` seconds of its start, at most `most`; back to `first` after a run
    that lasted."""

    def __init__(self, first: float = 0.5, most: float = 30.0, stable: float = 60.0) -> None:
        self.first, self.most, self.stable = first, most, stable
        self.current = 0.0

    def after(self, ran_seconds: float) -> float:
        if ran_seconds >= self.stable or not self.current:
            self.current = self.first
        else:
            self.current = min(self.most, self.current * 2)
        return self.current


class _InheritedFd:
    """A file descriptor handed to a spawned child (which keeps the data dir's lock held)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple:
        return (_InheritedFd._rebuild, (reduction.DupFd(self.fd),))

    @staticmethod
    def _rebuild(dup: Any) -> _InheritedFd:
        return _InheritedFd(dup.detach())


class WorkerProcess:
    """The inbox worker in a child process, woken through a pipe. `supervise()`, called
    periodically, respawns it when it has died."""

    def __init__(
        self,
        factory: RunnerFactory,
        idle_seconds: float = 5.0,
        inherit_fds: Sequence[int] = (),
        delay: RespawnDelay | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.factory = factory
        self.idle_seconds = idle_seconds
        self.inherit_fds = tuple(inherit_fds)
        self.delay = delay or RespawnDelay()
        self.clock = clock
        self.wake = Waker()
        self.process: Any = None
        self.respawns = 0
        self._context = multiprocessing.get_context("spawn")
        self._started_at = 0.0
        self._respawn_at: float | None = None
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self._respawn_at = None
        reader, writer = os.pipe()
        process = self._context.Process(
            target=_worker_main,
            name="inbox-worker",
            daemon=True,
            args=(
                self.factory,
                _InheritedFd(reader),
                self.idle_seconds,
                [_InheritedFd(fd) for fd in self.inherit_fds],
            ),
        )
        try:
            process.start()
        finally:
            os.close(reader)
        self.wake.attach(writer)
        self.process = process
        self._started_at = self.clock()

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def supervise(self) -> None:
        if self._stopping or self.process is None or self.alive():
            return
        now = self.clock()
        if self._respawn_at is None:
            wait = self.delay.after(now - self._started_at)
            log.error(
                "the inbox worker (pid %s) died (exit code %s); respawning it in %.1f s",
                self.process.pid,
                self.process.exitcode,
                wait,
            )
            self.wake.detach()
            self._respawn_at = now + wait
        if now >= self._respawn_at:
            self.respawns += 1
            self.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the batch in progress (SIGTERM), killed if it does not within `timeout`."""
        self._stopping = True
        process = self.process
        if process is not None and process.is_alive():
            process.terminate()
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join(timeout)
        self.wake.detach()


EXIT_STORE_REPLACED = 3


def _worker_main(
    factory: RunnerFactory, wake: _InheritedFd, idle_seconds: float, keep: list[_InheritedFd]
) -> None:
    """The worker process. `keep`: descriptors held open, unused, for the process's life (the
    data dir's lock: it outlives a killed server until this process follows it)."""
    stopping = threading.Event()
    interrupt_r, interrupt_w = os.pipe()
    os.set_blocking(interrupt_w, False)
    signal.set_wakeup_fd(interrupt_w)  # a signal ends the idle wait at once
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which stops us
    worker = InboxWorker(factory(), idle_seconds)
    worker.stopping = stopping  # stop between batches, not after a backlog
    try:
        while not stopping.is_set():
            if any(_replaced(runner.store) for runner in worker.runners):
                log.error("the store file was removed or replaced; the worker stops")
                raise SystemExit(EXIT_STORE_REPLACED)
            worker.drain_once()  # the first pass: events recorded while no worker ran
            readable, _, _ = select.select([wake.fd, interrupt_r], [], [], idle_seconds)
            if wake.fd in readable and not os.read(wake.fd, 4096):
                return  # the server is gone (its end of the pipe closed): so are we
            if interrupt_r in readable:
                os.read(interrupt_r, 4096)
    finally:
        for runner in worker.runners:
            with contextlib.suppress(Exception):
                runner.store.close()


def _replaced(store: object) -> bool:
    return isinstance(store, SQLiteStore) and store.file_replaced()


# ---- the data dir's lock ---------------------------------------------------------------------


class DataDirUnavailable(Exception):
    """`serve` cannot take the data dir."""


class DataDirInUse(DataDirUnavailable):
    """Another `serve` holds the data dir."""


class DataDirLock:
    """An exclusive lock on `serve.lock` in the data dir, held while `serve` (or the worker it
    started) runs: two serves on one store would each flush the other's owed writes. The
    kernel releases it when the holders exit, however they exit."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DataDirUnavailable(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"another `elasticity serve` (pid {holder}) is running on the data dir "
                f"{directory}; only one may serve a data dir at a time"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        os.close(self.fd)


def lock_data_dirs(runners: Sequence[Runner]) -> list[DataDirLock]:
    """Lock the data dir of every file-backed store of `runners` (once each)."""
    directories = sorted(
        {
            Path(r.store.path).resolve().parent
            for r in runners
            if isinstance(r.store, SQLiteStore) and r.store.path != ":memory:"
        }
    )
    locks: list[DataDirLock] = []
    try:
        for directory in directories:
            locks.append(DataDirLock(directory))
    except DataDirUnavailable:
        for lock in locks:
            lock.release()
        raise
    return locks


# ---- secrets that can be rotated without a restart -----------------------------------------


class SecretsFile:
    """`serve --secrets-file`: an env file (`NAME=value` lines, `#` comments, optional `export`
    and quotes) whose values `serve` puts in its environment, read again when the file changes
    (its modification time, size or identity) or on SIGHUP. A `<NAME>_PREVIOUS` value keeps
    the retiring secret accepted beside NAME's. Values are never logged, only names."""

    def __init__(self, path: Path, environ: Any = None) -> None:
        self.path = Path(path)
        self.environ = os.environ if environ is None else environ
        self._stamp: tuple[int, int, int, int] | None = None
        self._names: set[str] = set()

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def changed(self) -> bool:
        """Whether the file looks different from when it was last read (cheap: one stat)."""
        stamp = self._stat()
        return stamp is not None and stamp != self._stamp

    def load(self) -> list[str]:
        """Read the file and put its values in the environment (names it no longer has are
        removed); the names whose value changed. Raises `OSError`/`ValueError` when it cannot
        be read, leaving the environment as it was."""
        from dotenv import dotenv_values

        stamp = self._stat()
        if stamp is None:
            raise OSError(f"cannot read the secrets file {self.path}")
        self._stamp = stamp  # a file that cannot be read is reported once, not every check
        with open(self.path, encoding="utf-8") as handle:
            values = {k: v for k, v in dotenv_values(stream=handle).items() if v is not None}
        changed = sorted(
            [n for n, v in values.items() if self.environ.get(n) != v]
            + [n for n in self._names - values.keys() if n in self.environ]
        )
        for name in self._names - values.keys():
            self.environ.pop(name, None)
        self.environ.update(values)
        self._names = set(values)
        return changed


# ---- the intake ------------------------------------------------------------------------------


class Intake:
    """What the HTTP front end answers: webhooks recorded into the store, and `/healthz`.

    `rebuild` builds fresh runners after the store file was replaced; without it a lost store
    stays lost (503) until `serve` restarts."""

    def __init__(
        self,
        runners: list[Runner],
        worker: InboxWorker | WorkerProcess | None = None,
        rebuild: RunnerFactory | None = None,
    ) -> None:
        self.worker = worker
        self.rebuild = rebuild
        self._set_runners(runners)
        self.store_lost: str | None = None
        """Why the store cannot take writes (its file gone or replaced), or None."""
        self._closed = False

    def _set_runners(self, runners: list[Runner]) -> None:
        self.runners = runners
        self.routes = routes_for(runners)
        self._previous: dict[int, Connector | None] = {}
        """Per runner: its connector built with the `<NAME>_PREVIOUS` secrets, or None."""

    def _previous_for(self, runner: Runner) -> Connector | None:
        key = id(runner)
        if key not in self._previous:
            env = retiring_env(os.environ)
            try:
                previous = None if env is None else load_connector(runner.mapping, env)
            except ConnectorError as exc:
                log.error("the previous secrets do not build a connector: %s", exc)
                previous = None
            self._previous[key] = previous
        return self._previous[key]

    def rebuild_connectors(self) -> None:
        """Build every runner's connector again from the environment (secrets rotated); raises
        `ConnectorError`, changing nothing, if one cannot be built."""
        built = [load_connector(runner.mapping) for runner in self.runners]
        for runner, connector in zip(self.runners, built, strict=True):
            runner.connector = connector
        self._previous = {}

    def knows(self, path: str) -> bool:
        return path == "/healthz" or path.rstrip("/") in self.routes

    def answer(self, request: WebhookRequest) -> HttpAnswer:
        if request.path == "/healthz":
            return self.health()
        runner = self.routes.get(request.path.rstrip("/"))
        if runner is None:
            return json_answer(404, error=f"no webhook at {request.path}")
        if self.store_lost is not None:
            return json_answer(503, error="the store is unavailable; retry later")
        answer = handle_rotating(
            runner.connector,
            request,
            partial(self._record, runner),
            partial(self._previous_for, runner),
        )
        if answer.recorded and self.worker is not None:
            self.worker.wake.set()
        return answer

    def _record(self, runner: Runner, events: Sequence[Event]) -> int:
        self._check_file(runner)
        new = runner.record(events)
        # Checked again after the write: replaced meanwhile, the events went to the old file.
        self._check_file(runner)
        return new

    def _check_file(self, runner: Runner) -> None:
        if self._lost(runner):
            raise StoreError(self.store_lost)

    def _lost(self, runner: Runner) -> bool:
        if self.store_lost is None and _replaced(runner.store):
            path = runner.store.path  # type: ignore[attr-defined]
            self.store_lost = f"the store file {path} was removed or replaced"
            log.error("%s: answering 503 until a store file is back", self.store_lost)
        return self.store_lost is not None

    def check_store(self) -> bool:
        """Whether the store is usable; notices a replaced file even while no request comes."""
        return not any([self._lost(runner) for runner in self.runners])

    def reopen_store(self) -> bool:
        """With the store lost: close this process's connections (its worker must be stopped
        first), and once a file is at every store path again, open it. True when reopened;
        webhooks are still refused until `resume`."""
        if not self._closed:
            for runner in self.runners:
                with contextlib.suppress(Exception):
                    runner.store.close()
            self._closed = True
        paths = [runner.store.path for runner in self.runners]  # type: ignore[attr-defined]
        if self.rebuild is None or not all(os.path.exists(p) for p in paths):
            return False
        try:
            runners = self.rebuild()
        except (ConnectorError, StoreError) as exc:
            log.error("the store file is back but cannot be opened: %s", exc)
            return False
        self._set_runners(runners)
        self._closed = False
        return True

    def resume(self) -> None:
        """Record webhooks again (after `reopen_store`, once the worker runs on the file)."""
        self.store_lost = None
        log.warning("the store file is back; webhooks are recorded again")

    def health(self) -> HttpAnswer:
        worker = self.worker
        alive = None if worker is None else worker.alive()
        backlog: int | None = None
        store = self.store_lost or "ok"
        if self.store_lost is None:
            try:
                backlog = self.backlog()
            except StoreError as exc:
                store = str(exc)
        payload: dict[str, Any] = {
            "worker": None if worker is None else {"alive": alive},
            "inbox_backlog": backlog,
            "store": store,
        }
        if isinstance(worker, WorkerProcess):
            payload["worker"]["respawns"] = worker.respawns
        healthy = alive is not False and store == "ok"
        payload = {"status": "ok" if healthy else "unavailable", **payload}
        return HttpAnswer(200 if healthy else 503, json.dumps(payload).encode())

    def backlog(self) -> int:
        stores = {r.store.path: r.store for r in self.runners if isinstance(r.store, SQLiteStore)}
        return sum(store.inbox_backlog() for store in stores.values())


def routes_for(runners: list[Runner]) -> dict[str, Runner]:
    return {
        path.rstrip("/"): runner for runner in runners for path in runner.connector.webhook_paths
    }


# ---- the ASGI application and its server -----------------------------------------------------


class WebhookApp:
    """The intake as an ASGI application. Verifying and recording run in a bounded thread pool
    (SQLite and HMAC are blocking), so the event loop keeps accepting and timing connections.
    Its access log names method, path, status, size and time: never the query string (a
    Salesforce outbound token may be there) nor a header (signatures)."""

    def __init__(self, intake: Intake, limits: ServerLimits | None = None) -> None:
        self.intake = intake
        limits = limits or ServerLimits()
        self.pool = (
            ThreadPoolExecutor(limits.handler_threads, thread_name_prefix="intake")
            if limits.handler_threads
            else None
        )

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        answer, close = await self._answer(scope, receive)
        if answer is None:
            return  # the client hung up before its request was whole
        headers = [
            (b"content-type", answer.content_type.encode("latin-1")),
            (b"content-length", str(len(answer.body)).encode()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})
        client = scope.get("client") or ("-", 0)
        elapsed_ms = (time.perf_counter() - started) * 1000
        access_log.info(
            '%s "%s %s" %d %d %.1fms',
            client[0],
            scope["method"],
            scope["path"],
            answer.status,
            len(answer.body),
            elapsed_ms,
        )

    async def _answer(self, scope: dict, receive: Callable) -> tuple[HttpAnswer | None, bool]:
        path = scope["path"]
        if not self.intake.knows(path):
            return json_answer(404, error=f"no webhook at {path}"), False
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            declared = int(headers.get("content-length") or 0)
        except ValueError:
            return json_answer(400, error="bad Content-Length"), True
        if declared > MAX_BODY_BYTES or declared < 0:
            return json_answer(413, error=f"body larger than {MAX_BODY_BYTES} bytes"), True
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, True
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                return json_answer(413, error=f"body larger than {MAX_BODY_BYTES} bytes"), True
            if not message.get("more_body"):
                break
        request = WebhookRequest(
            method=scope["method"],
            path=path,
            query=scope["query_string"].decode("latin-1"),
            headers=headers,
            body=bytes(body),
            received_at=datetime.now(UTC),
        )
        if self.pool is None:
            return self.intake.answer(request), False
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.intake.answer, request), False

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for a whole request. uvicorn times out only
    an idle keep-alive connection: one that sends half its headers, or a byte now and then,
    would stay open for good and count against the connection limit."""

    request_seconds = 10.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_seconds, self._expired)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()  # type: ignore[union-attr]
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            return  # the request is whole: the answer is being made
        if not self.transport.is_closing():
            self.transport.close()


class WebhookServer:
    """The intake under uvicorn on a socket bound at construction (so its port is known at
    once, even when 0 was asked). `serve_forever` runs in any thread; `shutdown` stops it
    from another, finishing the requests in progress."""

    def __init__(
        self,
        intake: Intake,
        host: str = "127.0.0.1",
        port: int = 8080,
        limits: ServerLimits | None = None,
    ) -> None:
        limits = limits or ServerLimits()
        self.intake = intake
        self.socket = socket.create_server((host, port), backlog=limits.max_connections)
        self.server_address = self.socket.getsockname()[:2]
        self.app = WebhookApp(intake, limits)
        protocol = type(
            "Protocol", (DeadlineH11Protocol,), {"request_seconds": limits.request_seconds}
        )
        config = uvicorn.Config(
            self.app,
            http=protocol,
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_keep_alive=limits.keep_alive_seconds,
            limit_concurrency=limits.max_connections,
            timeout_graceful_shutdown=limits.shutdown_seconds,
        )
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self.socket]))
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float | None = None) -> None:
        self._server.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()
        self.app.close()


def build_server(
    runners: list[Runner], host: str = "127.0.0.1", port: int = 8080, worker: bool = True
) -> tuple[WebhookServer, InboxWorker | None]:
    """A server with (unstarted) thread worker, for tests and benchmarks in one process."""
    inbox_worker = InboxWorker(runners) if worker else None
    return WebhookServer(Intake(runners, inbox_worker), host, port), inbox_worker


def serve_forever(
    runners: list[Runner],
    host: str,
    port: int,
    worker_factory: RunnerFactory | None = None,
    idle_seconds: float = 5.0,
    ready: Callable[[WebhookServer], None] | None = None,
    limits: ServerLimits | None = None,
    respawn: RespawnDelay | None = None,
    secrets: SecretsFile | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT. With `worker_factory` the worker runs in its own process,
    supervised, and a replaced store file is reopened. `ready` is called once the server
    listens (its port may have been 0). `secrets` (already loaded) is read again when it
    changes or on SIGHUP: changed values rebuild the connectors and restart the worker. Raises
    `DataDirInUse` if another serve holds the data dir (`DataDirUnavailable` if it cannot be
    locked at all)."""
    locks = lock_data_dirs(runners)
    worker: InboxWorker | WorkerProcess
    rebuild = None
    if worker_factory is None:
        worker = InboxWorker(runners)
    else:
        worker = WorkerProcess(worker_factory, idle_seconds, [lock.fd for lock in locks], respawn)
        _leave_checkpoints_to_the_worker(runners)
        rebuild = partial(_intake_runners, worker_factory)
    intake = Intake(runners, worker, rebuild=rebuild)
    stopping = threading.Event()
    reread = threading.Event()
    handlers: dict[int, Any] = {}
    try:
        server = WebhookServer(intake, host, port, limits)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                handlers[signum] = signal.signal(signum, lambda s, f: stopping.set())
            handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda s, f: reread.set())
        worker.start()
        http = threading.Thread(target=server.serve_forever, name="http", daemon=True)
        http.start()
        try:
            if ready is not None:
                ready(server)
            while not stopping.wait(SUPERVISE_SECONDS) and http.is_alive():
                if reread.is_set() or (secrets is not None and secrets.changed()):
                    reread.clear()
                    _reread_secrets(intake, worker, secrets)
                _supervise(intake, worker)
        finally:
            server.shutdown()
            http.join()
            server.server_close()
    finally:
        worker.stop()
        for number, handler in handlers.items():
            signal.signal(number, handler)
        for lock in locks:
            lock.release()


def _leave_checkpoints_to_the_worker(runners: list[Runner]) -> list[Runner]:
    for runner in runners:
        if isinstance(runner.store, SQLiteStore):
            runner.store.checkpoint_after(INTAKE_CHECKPOINT_PAGES)
    return runners


def _intake_runners(factory: RunnerFactory) -> list[Runner]:
    return _leave_checkpoints_to_the_worker(factory())


def _reread_secrets(
    intake: Intake, worker: InboxWorker | WorkerProcess, secrets: SecretsFile | None
) -> None:
    if secrets is None:
        log.warning(
            "SIGHUP: nothing to read again (start serve with --secrets-file to rotate "
            "secrets without a restart)"
        )
        return
    try:
        changed = secrets.load()
    except (OSError, ValueError) as exc:
        log.error("the secrets file could not be read again (%s); the secrets in use stay", exc)
        return
    if not changed:
        log.info("the secrets file was read again: nothing changed")
        return
    try:
        intake.rebuild_connectors()
    except ConnectorError as exc:
        log.error(
            "the secrets changed (%s) but a connector cannot be built with them: %s; "
            "the connectors in use stay",
            ", ".join(changed),
            exc,
        )
        return
    log.warning(
        "secrets changed (%s): connectors rebuilt, the worker restarts with them",
        ", ".join(changed),
    )
    if isinstance(worker, WorkerProcess) and intake.store_lost is None:
        worker.stop()  # after its batch in progress; it reads the environment as it starts
        worker.start()


def _supervise(intake: Intake, worker: InboxWorker | WorkerProcess) -> None:
    if not isinstance(worker, WorkerProcess):
        return
    if intake.check_store():
        worker.supervise()
        return
    # The store is gone: the worker's connections must close before any opens what comes
    # back at the path (SQLite finds the WAL by name), so it is stopped, not left to notice.
    worker.stop()
    if intake.reopen_store():
        worker.start()
        intake.resume()
