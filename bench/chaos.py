"""Chaos run: a fixed, seeded stream (default 50K events for 5K contacts over 60 daily windows)
through the full local path — HubSpot v3-signed webhooks -> `serve`'s intake -> store inbox ->
worker (`Runner`) -> a fake HubSpot on loopback, with a scheduled sync closing every window —
twice: fault-free, then under injected faults:

  10% 429 with Retry-After, 5% 5xx, 2% timeouts (applied, answer lost), 5% per-record 207
  failures on batch updates, every webhook delivered twice (the copy up to a window late),
  20% displaced within their window, the worker killed at random points (before/after a
  commit, before a CRM read, after a CRM write or task creation reached the CRM) and
  restarted on the same store file, 1% of deliveries preceded by a kill of the worker alone
  while idle (the intake keeps recording; the worker is respawned before its next pass), 0.2%
  by the store file replaced under the server (a backup taken that instant restored over it:
  the intake answers 503 and the delivery comes again; the worker is stopped and the store
  reopened), 1% by a notification dated year 9999 (alone: refused with 400; inside the
  genuine batch: left out, the rest recorded), 10% of CRM writes and task calls with another
  flusher on the same store (a `sync` beside the worker) flushing while the call is in
  flight, and the worker's store connection dropped once.

Displacement stays within a window: the worker decides each window's events per contact in
`occurred_at` order, so it changes nothing, and only the duplicate copies reach the next
window (absorbed by their ids). A late original would be decided in its place (`core.order`)
but leave a `revised` ledger line the fault-free run has not; late originals are measured
against `replay` by `bench/order.py`.

The CRM's properties, the hand-off tasks, the ledger and the contact snapshots of the two
runs are compared field by field. Printed: events in, deliveries, duplicates absorbed, API
calls and retries, faults injected by class, worker restarts, records sent to the DLQ and
replayed, and differences (must be 0; the exit code is 1 otherwise).

    python bench/chaos.py [--events 50000] [--contacts 5000] [--days 60] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability.chaos_faults import FaultPlan  # noqa: E402
from tests.reliability.chaos_harness import run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--contacts", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--kill-rate", type=float, default=0.02)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # owed writes and retries log by design
    plan = FaultPlan(seed=args.seed, kill_rate=args.kill_rate, drop_connection_at=max(5, args.days))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chaos-") as workdir:
        result = run_chaos(Path(workdir), args.events, args.contacts, args.days, args.seed, plan)
    seconds = round(time.perf_counter() - started, 1)
    clean, chaos = result.clean, result.chaos
    faults = dict(sorted(chaos.faults.items()))
    summary = {
        "events_in": chaos.events_in,
        "contacts": args.contacts,
        "windows": args.days,
        "deliveries": chaos.deliveries,
        "deliveries_fault_free": clean.deliveries,
        "refused_and_redelivered": chaos.refused,
        "duplicates_absorbed": chaos.duplicates_absorbed,
        "api_calls": chaos.api_calls,
        "api_calls_fault_free": clean.api_calls,
        "retries": chaos.retries,
        "virtual_backoff_s": chaos.virtual_wait_s,
        "faults": faults,
        "worker_restarts": chaos.restarts,
        "worker_batch_failures": chaos.worker_failures,
        "dlq_records": chaos.dead_lettered,
        "dlq_replayed": chaos.replayed,
        "ledger_entries": result.ledger_entries,
        "crm_records": result.crm_records,
        "handoff_tasks": result.tasks,
        "differences": len(result.differences),
        "seconds": seconds,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:26} {value}")
    for line in result.differences[:20]:
        print("DIFF", line, file=sys.stderr)
    return 1 if result.differences else 0


if __name__ == "__main__":
    sys.exit(main())
