"""Load: the local webhook server (`connectors.server.serve_forever`, HubSpot route, SQLite
store, inbox worker in its own process writing back to a fake HubSpot on loopback) under a
sustained, bounded load of v3-signed webhooks from a second process, on 127.0.0.1 only.

Printed: requests sent and accepted, throughput, intake latency p50/p95/p99/max (client-side,
connect to last byte), and the server's RSS over the run (after warm-up, first vs last
quarter: flat memory means no growth). Exits 1 if p99 >= 25 ms or RSS grew by more than 10%.

`--servers stdlib,uvicorn,waitress,gunicorn --rounds 2` runs the same load on each HTTP server
in turn (interleaved rounds) and prints them side by side, with ratios to the first: the
measurement `serve`'s choice of uvicorn rests on (waitress and gunicorn: `pip install
'.[bench]'`).

    python bench/load.py [--requests 20000] [--seconds 120] [--concurrency 4] [--per-request 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECRET = "load-client-secret-1d7c"  # noqa: S105 - a loopback fake's, not a credential
PATH = "/webhooks/hubspot"
HOST = "127.0.0.1"  # loopback only, by design
CONTACTS, FIRST_ID = 2_000, 20_000


# ---- the server process --------------------------------------------------------------------


def serve_fake() -> None:
    """The fake HubSpot in a process of its own: the server under test shares no CPU with it
    beyond the machine's, as with the real HubSpot."""
    import logging

    from tests.fakes.hubspot_server import FakeHubSpot

    logging.disable(logging.WARNING)
    fake = FakeHubSpot()
    url = fake.start(HOST)
    for i in range(CONTACTS):
        fake.add_contact({}, contact_id=FIRST_ID + i)
    threading.Thread(target=_trim_fake_log, args=(fake,), daemon=True).start()
    print(url, flush=True)
    threading.Event().wait()


def bench_runners(workdir: str, crm_url: str, cache_mb: int | None) -> list:
    """The server's runner: HubSpot connector on the fake CRM, SQLite in `workdir`. Module
    level so the worker process can build its own."""
    from crm_elasticity.connectors.hubspot import HubSpotConnector
    from crm_elasticity.connectors.hubspot.config import HubSpotSettings, load_options
    from crm_elasticity.connectors.runner import Runner
    from crm_elasticity.core.mapping import load_mapping
    from crm_elasticity.core.sqlite_store import SQLiteStore
    from tests.fakes.hubspot_server import TOKEN

    mapping = load_mapping(ROOT / "mappings" / "hubspot.yaml")
    settings = HubSpotSettings(
        access_token=TOKEN, client_secret=SECRET, base_url=crm_url, requests_per_10s=10_000
    )
    connector = HubSpotConnector(mapping, settings, load_options(mapping))
    store = SQLiteStore(
        Path(workdir) / "load.sqlite3", **({"cache_mb": cache_mb} if cache_mb else {})
    )
    return [Runner(connector, store)]


SERVERS = ("stdlib", "uvicorn", "waitress", "gunicorn")
"""stdlib: the standard library's threading `http.server` (what `serve` ran on before);
uvicorn: `serve_forever`, exactly as `elasticity serve` runs; waitress: the same intake as a
WSGI application under waitress; gunicorn: the ASGI application under gunicorn's arbiter with
one uvicorn worker. All four on the same `Intake`, store and worker process."""


def serve(
    workdir: str,
    crm_url: str,
    mode: str,
    cache_mb: int | None,
    switch_ms: float | None,
    server: str = "uvicorn",
    handler_threads: int | None = None,
) -> None:
    """mode: `process` (as `elasticity serve` runs), `thread` (worker in the server's
    process) or `none` (intake only)."""
    import logging
    from functools import partial

    from crm_elasticity.connectors.server import (
        InboxWorker,
        ServerLimits,
        WorkerProcess,
        serve_forever,
    )

    if switch_ms is not None:
        sys.setswitchinterval(switch_ms / 1000)
    logging.disable(logging.WARNING)
    runners = bench_runners(workdir, crm_url, cache_mb)
    runners[0].connector.provision()
    factory = partial(bench_runners, workdir, crm_url, cache_mb)
    limits = ServerLimits(
        **({} if handler_threads is None else {"handler_threads": handler_threads})
    )
    if server == "uvicorn" and mode == "process":  # exactly as `elasticity serve` runs
        serve_forever(
            runners,
            HOST,
            0,
            factory,
            0.5,
            limits=limits,
            ready=lambda server: print(server.server_address[1], flush=True),
        )
        return
    worker: InboxWorker | WorkerProcess | None = None
    if mode == "process":
        worker = WorkerProcess(factory, 0.5)
    elif mode == "thread":
        worker = InboxWorker(runners, 0.5)
    if worker is not None:
        worker.start()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve_with(server, runners, factory, worker)
    except KeyboardInterrupt:
        pass
    finally:
        if worker is not None:
            worker.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_with(server: str, runners: list, factory, worker) -> None:
    from crm_elasticity.connectors.server import Intake

    if server == "gunicorn":
        del runners  # each gunicorn worker builds its own, after the fork
        serve_gunicorn(factory, worker)
        return
    intake = Intake(runners, worker)
    if server == "uvicorn":
        from crm_elasticity.connectors.server import WebhookServer

        web = WebhookServer(intake, HOST, 0)
        print(web.server_address[1], flush=True)
        web.serve_forever()
    elif server == "stdlib":
        from http.server import ThreadingHTTPServer

        httpd = ThreadingHTTPServer((HOST, 0), stdlib_handler(intake))
        httpd.daemon_threads = True
        print(httpd.server_address[1], flush=True)
        httpd.serve_forever()
    elif server == "waitress":
        import waitress

        wsgi = waitress.create_server(
            wsgi_app(intake), host=HOST, port=0, threads=8, channel_timeout=10, connection_limit=256
        )
        print(wsgi.effective_port, flush=True)
        wsgi.run()


def stdlib_handler(intake):
    """The standard library's `http.server` front end `serve` had, on the same intake."""
    from datetime import UTC, datetime
    from http.server import BaseHTTPRequestHandler
    from urllib.parse import urlsplit

    from crm_elasticity.connectors.base import WebhookRequest

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            answer = intake.answer(
                WebhookRequest(
                    method=self.command,
                    path=url.path,
                    query=url.query,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length),
                    received_at=datetime.now(UTC),
                )
            )
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


def wsgi_app(intake):
    """The same intake as a WSGI application (waitress)."""
    from datetime import UTC, datetime
    from http import HTTPStatus

    from crm_elasticity.connectors.base import WebhookRequest

    def app(environ, start_response):
        headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").lower()] = environ[key]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        answer = intake.answer(
            WebhookRequest(
                method=environ["REQUEST_METHOD"],
                path=environ["PATH_INFO"],
                query=environ.get("QUERY_STRING", ""),
                headers=headers,
                body=environ["wsgi.input"].read(length),
                received_at=datetime.now(UTC),
            )
        )
        start_response(
            f"{answer.status} {HTTPStatus(answer.status).phrase}",
            [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body)))],
        )
        return [answer.body]

    return app


def serve_gunicorn(factory, worker) -> None:
    """The ASGI application under gunicorn (one uvicorn worker, forked by the arbiter)."""
    import socket

    from gunicorn.app.base import BaseApplication

    from crm_elasticity.connectors.server import Intake, WebhookApp

    listener = socket.create_server((HOST, 0))
    listener.set_inheritable(True)

    class Bench(BaseApplication):
        def load_config(self) -> None:
            for key, value in {
                "bind": [f"fd://{listener.fileno()}"],
                "workers": 1,
                "worker_class": "uvicorn.workers.UvicornWorker",
                "keepalive": 5,
                "graceful_timeout": 30,
                "loglevel": "warning",
                "accesslog": None,
            }.items():
                self.cfg.set(key, value)

        def load(self):
            return WebhookApp(Intake(factory(), worker))

    print(listener.getsockname()[1], flush=True)
    Bench().run()


def _trim_fake_log(fake) -> None:
    # The fake CRM keeps every request it saw for tests to inspect: not the server's memory.
    while True:
        time.sleep(1.0)
        with fake.lock:
            fake.log.clear()


# ---- the load generator (this process) -----------------------------------------------------


def body_for(n: int, per_request: int) -> bytes:
    now_ms = round(time.time() * 1000)
    notes = [
        {
            "eventId": n * per_request + i,
            "subscriptionId": 1,
            "portalId": 1,
            "occurredAt": now_ms - 1000,
            "subscriptionType": "contact.propertyChange",
            "objectId": FIRST_ID + (n * per_request + i) % CONTACTS,
            "propertyName": "hs_email_last_open_date",
            "propertyValue": str(now_ms - 1000 - (n * per_request + i)),
        }
        for i in range(per_request)
    ]
    return json.dumps(notes).encode()


def send(port: int, body: bytes) -> tuple[int, float]:
    from crm_elasticity.connectors.hubspot.signature import v3_signature

    host = f"{HOST}:{port}"
    stamp = str(round(time.time() * 1000))
    signature = v3_signature(SECRET, "POST", f"https://{host}{PATH}", body, stamp)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request(
            "POST",
            PATH,
            body,
            {
                "Content-Type": "application/json",
                "X-HubSpot-Signature-v3": signature,
                "X-HubSpot-Request-Timestamp": stamp,
            },
        )
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        conn.close()


def rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def intake_rss_mb(pid: int) -> float:
    """The RSS of the processes that answer requests: the server and what it forked (gunicorn's
    worker), not the inbox worker it spawned (nor multiprocessing's resource tracker)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            cmdline = Path(f"/proc/{current}/cmdline").read_bytes()
        except OSError:
            continue
        if current != pid and b"multiprocessing" in cmdline:
            continue
        total += rss_mb(current)
        todo.extend(children.get(current, []))
    return total


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=120.0, help="stop after this long")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--per-request", type=int, default=10, help="notifications a request")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--worker",
        choices=["process", "thread", "none"],
        default="process",
        help="process: as `elasticity serve` runs it; thread: in the server's "
        "process; none: intake only (isolates intake latency)",
    )
    parser.add_argument(
        "--servers",
        default="uvicorn",
        help=f"comma-separated, run in turn and compared: {', '.join(SERVERS)}",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="with several servers: interleaved rounds of each"
    )
    parser.add_argument(
        "--handler-threads",
        type=int,
        default=None,
        help="uvicorn: requests handled at once (0: in the event loop)",
    )
    parser.add_argument(
        "--switch-ms",
        type=float,
        default=None,
        help="the server's GIL switch interval (Python's default is 5 ms)",
    )
    parser.add_argument(
        "--sqlite-cache-mb",
        type=int,
        default=None,
        help="override the store's page cache (default: the store's own)",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--server", default="uvicorn", help=argparse.SUPPRESS)
    parser.add_argument("--crm", help=argparse.SUPPRESS)
    parser.add_argument("--fake", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake:
        serve_fake()
        return 0
    if args.serve:
        serve(
            args.serve,
            args.crm,
            args.worker,
            args.sqlite_cache_mb,
            args.switch_ms,
            args.server,
            args.handler_threads,
        )
        return 0
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    import importlib.util

    optional = ("waitress", "gunicorn")
    missing = [n for n in servers if n in optional and not importlib.util.find_spec(n)]
    if missing:
        parser.error(f"not installed: {', '.join(missing)} (pip install -e '.[bench]')")
    runs: list[tuple[str, dict]] = []
    for _ in range(args.rounds):
        for name in servers:
            runs.append((name, one_run(args, name)))
    ok = True
    for name, summary in runs:
        if len(runs) > 1:
            print(f"== {name}")
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            for key, value in summary.items():
                print(f"{key:24} {value}")
        if name == "uvicorn":  # what `elasticity serve` runs: the targets apply to it
            ok = (
                ok
                and summary["p99_ms"] < 25
                and summary["rss_growth_pct"] <= 10
                and set(summary["statuses"]) == {"200"}
            )
    if len(runs) > 1:
        print_comparison(runs)
    return 0 if ok else 1


def one_run(args: argparse.Namespace, server_name: str) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="load-") as workdir:
        crm = subprocess.Popen(
            [sys.executable, __file__, "--fake"],  # noqa: S603
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        procs = [crm]
        try:
            crm_url = crm.stdout.readline().strip()  # type: ignore[union-attr]
            flags = ["--worker", args.worker, "--server", server_name]
            if args.switch_ms is not None:
                flags += ["--switch-ms", str(args.switch_ms)]
            if args.handler_threads is not None:
                flags += ["--handler-threads", str(args.handler_threads)]
            if args.sqlite_cache_mb is not None:
                flags += ["--sqlite-cache-mb", str(args.sqlite_cache_mb)]
            server = subprocess.Popen(
                [sys.executable, __file__, "--serve", workdir, "--crm", crm_url, *flags],  # noqa: S603
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            procs.append(server)
            port = int(server.stdout.readline())  # type: ignore[union-attr]
            return run_load(args, port, server.pid)
        finally:
            for proc in reversed(procs):  # the server first: its worker still calls the CRM
                proc.terminate()
                proc.wait(timeout=40)


def print_comparison(runs: list[tuple[str, dict]]) -> None:
    base = next((s for n, s in runs if n == "stdlib"), runs[0][1])
    keys = ("throughput_rps", "p50_ms", "p99_ms", "max_ms", "rss_mb_peak", "rss_growth_pct")
    print("\nserver      " + " ".join(f"{k:>16}" for k in keys))
    for name, summary in runs:
        cells = []
        for key in keys:
            value = summary[key]
            ratio = f" ({value / base[key]:.2f}x)" if base[key] and key != "rss_growth_pct" else ""
            cells.append(f"{value}{ratio}".rjust(16))
        print(f"{name:11} " + " ".join(cells))


def run_load(args: argparse.Namespace, port: int, pid: int) -> dict:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    rss: list[tuple[float, float]] = []
    lock = threading.Lock()
    next_n = iter(range(args.requests))
    deadline = time.monotonic() + args.seconds
    started = time.perf_counter()

    def worker() -> None:
        for n in next_n:
            if time.monotonic() > deadline:
                return
            status, seconds = send(port, body_for(n, args.per_request))
            with lock:
                latencies.append(seconds)
                statuses[str(status)] = statuses.get(str(status), 0) + 1

    def sample() -> None:
        while any(t.is_alive() for t in threads):
            rss.append((time.perf_counter() - started, intake_rss_mb(pid)))
            time.sleep(0.25)

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    sampler = threading.Thread(target=sample)
    sampler.start()
    for t in threads:
        t.join()
    sampler.join()
    elapsed = time.perf_counter() - started
    warm = [r for _, r in rss[len(rss) // 10 :]] or [0.0]
    quarter = max(1, len(warm) // 4)
    first, last = statistics.mean(warm[:quarter]), statistics.mean(warm[-quarter:])
    ms = [x * 1000 for x in latencies]
    summary = {
        "requests": len(latencies),
        "notifications": len(latencies) * args.per_request,
        "statuses": statuses,
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 1),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "throughput_events_per_s": round(len(latencies) * args.per_request / elapsed, 1),
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        "rss_mb_first_quarter": round(first, 1),
        "rss_mb_last_quarter": round(last, 1),
        "rss_mb_peak": round(max(r for _, r in rss), 1),
        "rss_growth_pct": round(100 * (last - first) / first, 1) if first else 0.0,
    }
    return summary


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
