"""`serve` as real processes under the faults an operator or a sender causes: the worker killed
alone, many webhooks and stalled connections, the store file removed or replaced, SIGTERM
with a request in flight, a second `serve` on the same data dir. Every wait is bounded."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crm_elasticity.core.sqlite_store import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 30.0
PATH = "/webhooks/memory"

SERVE = """
import multiprocessing, sys
from functools import partial
from crm_elasticity.connectors.server import RespawnDelay, ServerLimits, serve_forever
from tests.fakes.memory_crm import memory_runners

data_dir, first_delay, request_seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
max_connections = int(sys.argv[4])
runners = memory_runners(data_dir)

def ready(server):
    workers = [p.pid for p in multiprocessing.active_children() if p.name == "inbox-worker"]
    print(server.server_address[1], *workers, flush=True)

limits = ServerLimits(request_seconds=request_seconds, max_connections=max_connections)
serve_forever(runners, "127.0.0.1", 0, partial(memory_runners, data_dir), 0.05, ready=ready,
              limits=limits, respawn=RespawnDelay(first=first_delay))
"""


class Serve:
    def __init__(
        self,
        data_dir: Path,
        respawn_after: float = 0.05,
        request_seconds: float = 10.0,
        max_connections: int = 512,
    ) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(  # noqa: S603
            [
                sys.executable,
                "-c",
                SERVE,
                str(data_dir),
                str(respawn_after),
                str(request_seconds),
                str(max_connections),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise AssertionError(self.proc.stderr.read())  # type: ignore[union-attr]
        self.port, *workers = map(int, line.split())
        self.worker_pid = workers[0]

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=DEADLINE)
        try:
            conn.request(method, path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            body = response.read()
            is_json = response.getheader("content-type", "").startswith("application/json")
            return response.status, json.loads(body) if is_json else {}
        finally:
            conn.close()

    def post(self, *events: dict) -> int:
        return self.request("POST", PATH, json.dumps(list(events)).encode())[0]

    def health(self) -> tuple[int, dict]:
        return self.request("GET", "/healthz")

    def threads(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise AssertionError("no thread count")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=DEADLINE)
        finally:
            self.proc.kill()
            self.proc.stdout.close()  # type: ignore[union-attr]
            self.proc.stderr.close()  # type: ignore[union-attr]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(**kwargs: float) -> Serve:
        started.append(Serve(tmp_path, **kwargs))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


def until(condition: Callable[[], object], what: str) -> object:
    """Polls `condition` until it holds; fails after DEADLINE seconds."""
    give_up = time.monotonic() + DEADLINE
    while time.monotonic() < give_up:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def event(n: int, contact: str | None = None) -> dict:
    return {
        "event_id": f"e{n}",
        "contact_id": contact or f"c{n}",
        "type": "open",
        "occurred_at": "2026-01-01T00:00:00Z",
    }


def store_at(data_dir: Path) -> SQLiteStore:
    return SQLiteStore.in_data_dir(data_dir)


def drained(data_dir: Path, contacts: list[str]) -> bool:
    store = store_at(data_dir)
    try:
        return not store.inbox_take(1) and all(store.ledger_for(c) for c in contacts)
    finally:
        store.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


# ---- the worker killed alone ------------------------------------------------------------------


def test_a_killed_worker_is_respawned_and_drains_what_came_meanwhile(serve) -> None:
    server = serve(respawn_after=0.05)
    os.kill(server.worker_pid, signal.SIGKILL)
    until(lambda: not _alive(server.worker_pid), "the worker died")
    contacts = [f"k{n}" for n in range(200)]
    statuses = [server.post(event(n, contact)) for n, contact in enumerate(contacts)]
    assert set(statuses) == {202}
    until(lambda: drained(server.data_dir, contacts), "the backlog drained after the respawn")
    status, health = server.health()
    assert status == 200
    assert health["worker"]["alive"] is True and health["worker"]["respawns"] >= 1
    assert health["inbox_backlog"] == 0
    # no request handler waited on the dead worker (200 webhooks once held 201 threads)
    assert server.threads() < 30
    assert server.stop() == 0


def test_healthz_answers_the_worker_and_the_backlog_and_503_while_the_worker_is_down(
    serve,
) -> None:
    server = serve(respawn_after=3600)
    status, health = server.health()
    assert status == 200
    assert health["status"] == "ok" and health["worker"]["alive"] is True
    assert health["inbox_backlog"] == 0
    os.kill(server.worker_pid, signal.SIGKILL)
    until(lambda: server.health()[0] == 503, "healthz says the worker is down")
    assert server.post(event(1)) == 202  # still recorded: the vendor need not retry
    status, health = server.health()
    assert health["worker"]["alive"] is False and health["inbox_backlog"] == 1
    assert server.stop() == 0  # shutdown works with the worker dead


# ---- connections -----------------------------------------------------------------------------


def test_stalled_connections_are_closed_and_hold_no_thread_each(serve) -> None:
    server = serve(request_seconds=0.5)
    stalled = []
    for _ in range(150):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
        sock.sendall(b"POST /webhooks/memory HTTP/1.1\r\nHost: x\r\nContent-Le")  # and no more
        stalled.append(sock)
    half_body = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
    half_body.sendall(b"POST /webhooks/memory HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[")
    stalled.append(half_body)
    try:
        assert server.threads() < 30  # 300 stalled connections once held 301 threads
        assert server.post(event(1)) == 202  # the server still answers others
        for sock in stalled:  # each one is hung up on by the server
            assert sock.recv(1024) == b""
    finally:
        for sock in stalled:
            sock.close()
    assert server.stop() == 0


def test_connections_beyond_the_limit_are_answered_503_until_the_stalled_ones_are_gone(
    serve,
) -> None:
    server = serve(request_seconds=1.0, max_connections=20)
    stalled = [
        socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) for _ in range(20)
    ]
    try:
        for sock in stalled:
            sock.sendall(b"POST /webhooks/memory HTTP/1.1\r\nHost: x\r\n")  # and no more
        until(lambda: server.post(event(1)) == 503, "a request beyond the limit is refused")
        until(lambda: server.post(event(1)) == 202, "the stalled ones timed out")
    finally:
        for sock in stalled:
            sock.close()
    assert server.stop() == 0


def test_sigterm_finishes_the_request_in_flight_then_exits(serve) -> None:
    server = serve()
    body = json.dumps([event(7)]).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
    try:
        # `Expect: 100-continue`: the interim answer proves the request is in the server's hands
        sock.sendall(
            b"POST /webhooks/memory HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/json\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 100")
        sock.sendall(body[:10])
        server.proc.send_signal(signal.SIGTERM)

        def refuses_new_connections() -> bool:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        until(refuses_new_connections, "the server stopped listening")
        sock.sendall(body[10:])
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 202")
    assert server.proc.wait(timeout=DEADLINE) == 0
    store = store_at(server.data_dir)
    try:
        recorded = [e.event_id for e in store.inbox_take(10)] + (
            ["e7"] if store.ledger_for("c7") else []
        )
    finally:
        store.close()
    assert "e7" in recorded


# ---- the store file --------------------------------------------------------------------------


def _backup(data_dir: Path) -> Path:
    """A consistent copy of the store, as `sqlite3 .backup` makes one."""
    target = data_dir / "backup.sqlite3"
    source = sqlite3.connect(data_dir / "elasticity.sqlite3")
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()
    return target


def test_a_removed_store_is_answered_503_until_a_file_is_back(serve) -> None:
    server = serve()
    assert server.post(event(1)) == 202
    until(lambda: drained(server.data_dir, ["c1"]), "the first event drained")
    backup = _backup(server.data_dir)
    (server.data_dir / "elasticity.sqlite3").unlink()
    statuses = [server.post(event(n)) for n in range(2, 22)]
    assert set(statuses) == {503}  # 20 of 20 were once acknowledged into the deleted file
    assert server.health()[0] == 503
    os.replace(backup, server.data_dir / "elasticity.sqlite3")  # restored
    until(lambda: server.post(event(2)) == 202, "webhooks are recorded again")
    assert server.health()[0] == 200
    until(lambda: drained(server.data_dir, ["c1", "c2"]), "the restored store drains")
    assert server.stop() == 0


def test_a_store_replaced_under_serve_takes_the_writes_that_follow(serve) -> None:
    server = serve()
    assert server.post(event(1)) == 202
    path = server.data_dir / "elasticity.sqlite3"
    os.replace(_backup(server.data_dir), path)  # same content, another file
    first = server.post(event(2))
    assert first in (202, 503)  # 503 only for a write that went to the old file
    until(lambda: server.post(event(2)) == 202, "the replacement is written to")
    until(lambda: drained(server.data_dir, ["c1", "c2"]), "both events reach the new file")
    assert server.stop() == 0


# ---- one serve per data dir -----------------------------------------------------------------

CLI = """
import sys
from crm_elasticity.connectors.cli import app
sys.argv = ["elasticity", *sys.argv[1:]]
app()
"""


CLI_ENV = {
    "HUBSPOT_ACCESS_TOKEN": "pat-test",
    "HUBSPOT_CLIENT_SECRET": "s",
    "HUBSPOT_BASE_URL": "http://127.0.0.1:9",
    "COLUMNS": "200",
}


def _cli_serve(data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-c",
            CLI,
            "serve",
            "mappings/hubspot.yaml",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
        ],
        cwd=ROOT,
        env={**os.environ, **CLI_ENV},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def test_elasticity_serve_listens_where_told_answers_healthz_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-c",
            CLI,
            "serve",
            "mappings/hubspot.yaml",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={**os.environ, **CLI_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("listening on http://127.0.0.1:"), line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["worker"]["alive"] is True
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE) == 0
        assert '"GET /healthz" 200' in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        proc.kill()
        proc.wait(timeout=DEADLINE)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_a_second_serve_on_the_same_data_dir_is_refused_until_the_first_is_gone(
    serve,
    tmp_path: Path,
) -> None:
    first = serve()
    second = _cli_serve(tmp_path)
    assert second.returncode != 0
    assert "another `elasticity serve`" in second.stderr
    assert str(first.proc.pid) in second.stderr
    assert "Traceback" not in second.stderr
    # killed outright, the first releases the data dir once its worker has followed it
    first.proc.kill()
    first.proc.wait(timeout=DEADLINE)
    until(lambda: not _alive(first.worker_pid), "the orphaned worker exited")
    again = serve()
    assert again.health()[0] == 200


# ---- in one process: the respawn delay and the access log -------------------------------------


def test_a_worker_that_keeps_dying_is_respawned_ever_later_and_soon_again_after_a_long_run() -> (
    None
):
    from crm_elasticity.connectors.server import RespawnDelay

    delay = RespawnDelay(first=0.5, most=4.0, stable=60.0)
    assert [delay.after(1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert delay.after(61.0) == 0.5


def test_the_access_log_names_no_query_string_and_no_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging
    import threading

    from crm_elasticity.connectors.runner import Runner
    from crm_elasticity.connectors.server import build_server
    from tests.fakes.memory_crm import MemoryConnector, MemoryCrm, memory_mapping

    runner = Runner(
        MemoryConnector(memory_mapping(), MemoryCrm(), secret="hook-SECRET-5e1"),
        SQLiteStore(":memory:"),
    )
    httpd, _ = build_server([runner], port=0, worker=False)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    caplog.set_level(logging.DEBUG)
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=DEADLINE)
        conn.request(
            "POST",
            f"{PATH}?token=outbound-TOKEN-93a",
            json.dumps([event(1)]),
            {"x-memory-secret": "hook-SECRET-5e1", "X-HubSpot-Signature-v3": "SIGNATURE-c4d"},
        )
        assert conn.getresponse().status == 202
        conn.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "crm_elasticity.connectors.server.access"
    ]
    assert len(lines) == 1 and f'"POST {PATH}" 202' in lines[0]
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("outbound-TOKEN-93a", "hook-SECRET-5e1", "SIGNATURE-c4d"):
        assert secret not in text


def test_a_store_closed_after_its_file_was_removed_leaves_no_pages_for_the_file_put_back(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime

    from crm_elasticity.core.models import Event

    def put(store: SQLiteStore, n: int) -> None:
        when = datetime(2026, 1, 1, tzinfo=UTC)
        store.inbox_put(
            [Event(event_id=f"e{n}", contact_id=f"c{n}", type="open", occurred_at=when)]
        )

    path = tmp_path / "elasticity.sqlite3"
    old = SQLiteStore(path)
    put(old, 1)
    backup = _backup(tmp_path)  # what the operator will restore: e1 only
    path.unlink()  # the WAL beside it stays, and the old connection goes on writing to it
    assert old.file_replaced()
    put(old, 2)
    old.close()
    os.replace(backup, path)
    restored = SQLiteStore(path)
    try:
        assert [e.event_id for e in restored.inbox_take(10)] == ["e1"]
        assert restored.execute("PRAGMA integrity_check") == [("ok",)]
    finally:
        restored.close()
