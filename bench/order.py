"""Late webhooks, decided in order or at the contact's current time, against `replay` of the
sorted events.

A seeded stream (`tests/order_stream.py`: sends, opens, clicks, repeat visits, compliance exits
and resubscribes, bursts hours apart and long silences) is delivered the way webhooks arrive -
each event up to `--shuffle-hours` late, 5% twice - in requests of 1-5 events, each decided by
the shared runner (`Runner.process`, the path of `serve`'s worker and the Lambda worker) on a
SQLite store before the next arrives. Then the time rules run up to the last event, as a sync
would, and every contact is compared with `replay` of the sorted events.

Two runs, interleaved: with the per-contact history (late events re-decided in their place)
and without it (late events applied at the contact's current time, the old behaviour).
Printed per run: contacts compared, contacts whose state differs from replay, revisions, late
events decided at the current time, reactivation steps and hand-off tasks owed, and the CPU
seconds of deciding (ratio new/old).

    python bench/order.py [--contacts 2000] [--seed 18] [--shuffle-hours 6]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crm_elasticity.connectors.runner import Runner  # noqa: E402
from crm_elasticity.core.order import REVISION_WINDOW  # noqa: E402
from crm_elasticity.core.pipeline import Pipeline  # noqa: E402
from crm_elasticity.core.sqlite_store import SQLiteStore  # noqa: E402
from tests import order_stream  # noqa: E402
from tests.fakes.memory_crm import MemoryConnector, MemoryCrm, memory_mapping  # noqa: E402


def run(workdir: Path, requests: list, window: timedelta | None, horizon) -> dict:
    mapping = memory_mapping()
    crm = MemoryCrm()
    store = SQLiteStore(workdir / "elasticity.sqlite3")
    runner = Runner(MemoryConnector(mapping, crm), store)
    runner.pipeline = Pipeline(store, mapping.policy, revision_window=window)
    started = time.process_time()
    for request in requests:
        runner.process(request)
    Pipeline(store, mapping.policy).tick(horizon)
    seconds = time.process_time() - started
    got = {s.contact_id: s for page in store.iter_contacts() for s in page}

    def count(sql: str) -> int:
        return store.execute(sql)[0][0]

    out = {
        "got": got,
        "cpu_s": seconds,
        "tasks": len(crm.tasks),
        "revised": count("SELECT COUNT(*) FROM ledger WHERE reason = 'revised'"),
        "decided_late": count("SELECT COUNT(*) FROM ledger WHERE reason = 'decided_late'"),
        "steps": count("SELECT COUNT(*) FROM ledger WHERE reason LIKE 'reactivation_step_%'"),
        "comebacks": count("SELECT COUNT(*) FROM ledger WHERE reason = 'reactivated_from_dormant'"),
    }
    store.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--shuffle-hours", type=float, default=6.0)
    args = parser.parse_args()
    order_stream.SHUFFLE = timedelta(hours=args.shuffle_hours)
    events = order_stream.generate(args.contacts, args.seed)
    delivered = order_stream.deliveries(events, args.seed + 1)
    requests = list(order_stream.requests(delivered, args.seed + 2))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reference, horizon = order_stream.replayed(memory_mapping(), events, work)
        print(
            f"{len(events)} events, {len(delivered)} deliveries in {len(requests)} requests, "
            f"{args.contacts} contacts, up to {args.shuffle_hours:g} h late"
        )
        results = {}
        for name, window in (("in order", REVISION_WINDOW), ("at current time", None)):
            (work / name).mkdir()
            results[name] = run(work / name, requests, window, horizon)
        failed = False
        for name, r in results.items():
            diff = order_stream.differences(reference, r["got"])
            failed |= name == "in order" and bool(diff)
            print(
                f"{name:>16}: {len(reference)} contacts compared, {len(diff)} differ from "
                f"replay; {r['revised']} revisions, {r['decided_late']} decided late; "
                f"{r['steps']} reactivation steps, {r['comebacks']} comebacks, {r['tasks']} "
                f"hand-off tasks; {r['cpu_s']:.1f} CPU s"
            )
        ratio = results["in order"]["cpu_s"] / results["at current time"]["cpu_s"]
        print(f"CPU ratio in order / at current time: {ratio:.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
