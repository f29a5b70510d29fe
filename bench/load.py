"""Load: the local webhook server (`connectors.server.serve_forever`, HubSpot route, SQLite
store, inbox worker in its own process writing back to a fake HubSpot on loopback) under a
sustained, bounded load of v3-signed webhooks from a second process, on 127.0.0.1 only.

Printed: requests sent and accepted, throughput, intake latency p50/p95/p99/max (client-side,
connect to last byte), and the server's RSS over the run (after warm-up, first vs last
quarter: flat memory means no growth). Exits 1 if p99 >= 25 ms or RSS grew by more than 10%.

    python bench/load.py [--requests 20000] [--seconds 120] [--concurrency 4] [--per-request 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
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
    from connectors.hubspot import HubSpotConnector
    from connectors.hubspot.config import HubSpotSettings, load_options
    from connectors.runner import Runner
    from core.mapping import load_mapping
    from core.sqlite_store import SQLiteStore
    from tests.fakes.hubspot_server import TOKEN

    mapping = load_mapping(ROOT / "mappings" / "hubspot.yaml")
    settings = HubSpotSettings(access_token=TOKEN, client_secret=SECRET, base_url=crm_url,
                               requests_per_10s=10_000)  # fmt: skip
    connector = HubSpotConnector(mapping, settings, load_options(mapping))
    store = SQLiteStore(Path(workdir) / "load.sqlite3", **({"cache_mb": cache_mb} if cache_mb
                                                          else {}))  # fmt: skip
    return [Runner(connector, store)]


def serve(workdir: str, crm_url: str, mode: str, cache_mb: int | None,
          switch_ms: float | None) -> None:  # fmt: skip
    """mode: `process` (as `elasticity serve` runs), `thread` (worker in the server's
    process) or `none` (intake only)."""
    import logging
    from functools import partial

    from connectors.server import InboxWorker, make_handler, routes_for, serve_forever

    if switch_ms is not None:
        sys.setswitchinterval(switch_ms / 1000)
    logging.disable(logging.WARNING)
    runners = bench_runners(workdir, crm_url, cache_mb)
    runners[0].connector.provision()
    if mode == "process":  # exactly as `elasticity serve` runs
        serve_forever(runners, HOST, 0, partial(bench_runners, workdir, crm_url, cache_mb), 0.5,
                      ready=lambda server: print(server.server_address[1], flush=True))  # fmt: skip
        return
    worker = InboxWorker(runners, 0.5) if mode == "thread" else None
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer((HOST, 0), make_handler(routes_for(runners), worker))
    server.daemon_threads = True
    if worker is not None:
        worker.start()
    print(server.server_address[1], flush=True)
    server.serve_forever()


def _trim_fake_log(fake) -> None:
    # The fake CRM keeps every request it saw for tests to inspect: not the server's memory.
    while True:
        time.sleep(1.0)
        with fake.lock:
            fake.log.clear()


# ---- the load generator (this process) -----------------------------------------------------


def body_for(n: int, per_request: int) -> bytes:
    now_ms = round(time.time() * 1000)
    notes = [{"eventId": n * per_request + i, "subscriptionId": 1, "portalId": 1,
              "occurredAt": now_ms - 1000, "subscriptionType": "contact.propertyChange",
              "objectId": FIRST_ID + (n * per_request + i) % CONTACTS,
              "propertyName": "hs_email_last_open_date",
              "propertyValue": str(now_ms - 1000 - (n * per_request + i))}
             for i in range(per_request)]  # fmt: skip
    return json.dumps(notes).encode()


def send(port: int, body: bytes) -> tuple[int, float]:
    from connectors.hubspot.signature import v3_signature

    host = f"{HOST}:{port}"
    stamp = str(round(time.time() * 1000))
    signature = v3_signature(SECRET, "POST", f"https://{host}{PATH}", body, stamp)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", PATH, body, {
            "Content-Type": "application/json", "X-HubSpot-Signature-v3": signature,
            "X-HubSpot-Request-Timestamp": stamp,
        })  # fmt: skip
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        conn.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


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
    parser.add_argument("--worker", choices=["process", "thread", "none"], default="process",
                        help="process: as `elasticity serve` runs it; thread: in the server's "
                        "process; none: intake only (isolates intake latency)")
    parser.add_argument("--switch-ms", type=float, default=None,
                        help="the server's GIL switch interval (Python's default is 5 ms)")
    parser.add_argument("--sqlite-cache-mb", type=int, default=None,
                        help="override the store's page cache (default: the store's own)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--crm", help=argparse.SUPPRESS)
    parser.add_argument("--fake", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake:
        serve_fake()
        return 0
    if args.serve:
        serve(args.serve, args.crm, args.worker, args.sqlite_cache_mb, args.switch_ms)
        return 0
    import tempfile

    with tempfile.TemporaryDirectory(prefix="load-") as workdir:
        crm = subprocess.Popen([sys.executable, __file__, "--fake"],  # noqa: S603
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
        procs = [crm]
        try:
            crm_url = crm.stdout.readline().strip()  # type: ignore[union-attr]
            flags = ["--worker", args.worker]
            if args.switch_ms is not None:
                flags += ["--switch-ms", str(args.switch_ms)]
            if args.sqlite_cache_mb is not None:
                flags += ["--sqlite-cache-mb", str(args.sqlite_cache_mb)]
            server = subprocess.Popen(
                [sys.executable, __file__, "--serve", workdir, "--crm", crm_url, *flags],  # noqa: S603
                stdout=subprocess.PIPE, text=True, cwd=ROOT,
            )  # fmt: skip
            procs.append(server)
            port = int(server.stdout.readline())  # type: ignore[union-attr]
            return run_load(args, port, server.pid)
        finally:
            for proc in reversed(procs):  # the server first: its worker still calls the CRM
                proc.terminate()
                proc.wait(timeout=10)


def run_load(args: argparse.Namespace, port: int, pid: int) -> int:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
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
                statuses[status] = statuses.get(status, 0) + 1

    def sample() -> None:
        while any(t.is_alive() for t in threads):
            rss.append((time.perf_counter() - started, rss_mb(pid)))
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
        "requests": len(latencies), "notifications": len(latencies) * args.per_request,
        "statuses": statuses, "concurrency": args.concurrency, "seconds": round(elapsed, 1),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "throughput_events_per_s": round(len(latencies) * args.per_request / elapsed, 1),
        "p50_ms": round(statistics.median(ms), 2), "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2), "max_ms": round(max(ms), 2),
        "rss_mb_first_quarter": round(first, 1), "rss_mb_last_quarter": round(last, 1),
        "rss_mb_peak": round(max(r for _, r in rss), 1),
        "rss_growth_pct": round(100 * (last - first) / first, 1) if first else 0.0,
    }  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:24} {value}")
    ok = summary["p99_ms"] < 25 and summary["rss_growth_pct"] <= 10 and set(statuses) == {200}
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
