"""`elasticity serve`: the webhook endpoints on a local HTTP server and a worker that drains
the store's inbox through the shared runner.

`serve` runs the worker in a process of its own on the same SQLite file (WAL lets both write):
deciding and writing back is CPU-bound Python, and in the server's process it would hold the
GIL against the intake threads, whose answers must stay fast. Tests use the thread worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from connectors.base import ConnectorError, WebhookRequest
from connectors.intake import MAX_BODY_BYTES, HttpAnswer, _json, handle_webhook
from connectors.runner import Runner
from core.sqlite_store import SQLiteStore
from core.store import StoreError

log = logging.getLogger(__name__)

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

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()


RunnerFactory = Callable[[], list[Runner]]
"""Builds a process's own runners (connectors and store connections are not shared across
processes). Must be picklable: a module-level function or a partial of one."""


class WorkerProcess:
    """The inbox worker in a child process, woken through a cross-process event."""

    def __init__(self, factory: RunnerFactory, idle_seconds: float = 5.0) -> None:
        context = multiprocessing.get_context("spawn")
        self.wake = context.Event()
        self.stopping = context.Event()
        self.process = context.Process(
            target=_worker_main, args=(factory, self.wake, self.stopping, idle_seconds),
            name="inbox-worker", daemon=True,
        )  # fmt: skip

    def start(self) -> None:
        self.process.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        self.wake.set()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()


def _worker_main(factory: RunnerFactory, wake, stopping, idle_seconds: float) -> None:
    worker = InboxWorker(factory(), idle_seconds)
    worker.stopping = stopping  # stop between batches, not after a backlog
    parent = multiprocessing.parent_process()
    # A server killed outright never calls stop(): its worker must not outlive it.
    while not stopping.is_set() and (parent is None or parent.is_alive()):
        worker.drain_once()  # the first pass: events recorded while no worker ran
        wake.wait(idle_seconds)
        wake.clear()


def make_handler(routes: dict[str, Runner], worker: InboxWorker | WorkerProcess | None):
    class WebhookHandler(BaseHTTPRequestHandler):
        server_version = "elasticity"

        def _answer(self, answer: HttpAnswer) -> None:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def _handle(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/healthz":
                self._answer(_json(200, status="ok"))
                return
            runner = routes.get(url.path.rstrip("/"))
            if runner is None:
                self._answer(_json(404, error=f"no webhook at {url.path}"))
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self._answer(_json(400, error="bad Content-Length"))
                return
            if length > MAX_BODY_BYTES or length < 0:
                self._answer(_json(413, error=f"body larger than {MAX_BODY_BYTES} bytes"))
                self.close_connection = True
                return
            request = WebhookRequest(
                method=self.command,
                path=url.path,
                query=url.query,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=self.rfile.read(length),
                received_at=datetime.now(UTC),
            )
            answer = handle_webhook(runner.connector, request, runner.record)
            self._answer(answer)
            if answer.recorded and worker is not None:
                worker.wake.set()

        do_POST = _handle  # noqa: N815 - http.server's naming
        do_GET = _handle  # noqa: N815
        do_PUT = _handle  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.info("%s %s", self.address_string(), format % args)

    return WebhookHandler


def build_server(
    runners: list[Runner], host: str = "127.0.0.1", port: int = 8080, worker: bool = True
) -> tuple[ThreadingHTTPServer, InboxWorker | None]:
    inbox_worker = InboxWorker(runners) if worker else None
    server = ThreadingHTTPServer((host, port), make_handler(routes_for(runners), inbox_worker))
    return server, inbox_worker


def routes_for(runners: list[Runner]) -> dict[str, Runner]:
    return {
        path.rstrip("/"): runner for runner in runners for path in runner.connector.webhook_paths
    }


def serve_forever(
    runners: list[Runner],
    host: str,
    port: int,
    worker_factory: RunnerFactory | None = None,
    idle_seconds: float = 5.0,
    ready: Callable[[ThreadingHTTPServer], None] | None = None,
) -> None:
    """Serve until interrupted or terminated. With `worker_factory` the worker runs in its own
    process. `ready` is called once the server listens (its port may have been 0)."""
    worker: InboxWorker | WorkerProcess | None
    if worker_factory is None:
        server, worker = build_server(runners, host, port)
    else:
        worker = WorkerProcess(worker_factory, idle_seconds)
        server = ThreadingHTTPServer((host, port), make_handler(routes_for(runners), worker))
        for runner in runners:
            if isinstance(runner.store, SQLiteStore):
                runner.store.checkpoint_after(INTAKE_CHECKPOINT_PAGES)
    on_term = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (docker stop, systemd) would end this process at once and orphan the worker.
        on_term = signal.signal(signal.SIGTERM, _interrupt)
    if worker is not None:
        worker.start()
    try:
        if ready is not None:
            ready(server)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if worker is not None:
            worker.stop()
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
