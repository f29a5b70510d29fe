"""Engine and embedded-store throughput, measured in one run.

    python bench/engine.py                 # 1M events / 100K contacts, simulate 100K x 180 days
    python bench/engine.py --quick         # 100K events / 10K contacts, simulate 10K x 60 days

Prints events/s of the engine alone and of `elasticity replay` with the SQLite ledger, the
replay's peak RSS, and the wall time of `elasticity simulate`, each against its target.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.engine import apply_event, apply_owned  # noqa: E402
from core.gcpause import cyclic_gc_paused  # noqa: E402
from core.mapping import load_mapping  # noqa: E402
from core.models import EVENT  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)
KINDS = ["send"] * 50 + ["open"] * 28 + ["click"] * 12 + ["high_intent_visit"] * 6 + [
    "enroll"] * 3 + ["unsubscribe"]  # fmt: skip


def event_dicts(events: int, contacts: int, seed: int):
    """A time-ordered synthetic stream: every contact enrolls, then a mix of activity."""
    rng = random.Random(seed)
    span = 180 * 86400
    step = span / events
    for i in range(events):
        if i < contacts:
            contact, kind, at = i, "enroll", START + timedelta(seconds=i * 0.01)
        else:
            contact, kind = rng.randrange(contacts), rng.choice(KINDS)
            at = START + timedelta(seconds=i * step)
        yield {"event_id": f"ev{i}", "contact_id": f"c{contact:06d}", "type": kind,
               "occurred_at": at.isoformat()}  # fmt: skip


def bench_engine(events: int, contacts: int, policy, pure: bool = False) -> float:
    """Events/s through the engine alone, states kept in a dict; event parsing not timed.

    By default the path the pipeline takes: `apply_owned` (states changed in place) over
    batches with the cyclic collector paused. `pure=True` times `apply_event`, which copies
    the state for every event."""
    states: dict = {}
    chunk = 100_000
    elapsed = 0.0
    stream = event_dicts(events, contacts, seed=1)
    done = 0
    while done < events:
        batch = [EVENT.validate_python(next(stream)) for _ in range(min(chunk, events - done))]
        get = states.get
        started = time.perf_counter()
        if pure:
            for event in batch:
                states[event.contact_id] = apply_event(get(event.contact_id), event, policy)[0]
        else:
            with cyclic_gc_paused():
                decisions: list = []
                for event in batch:
                    cid = event.contact_id
                    states[cid] = apply_owned(get(cid), event, policy, decisions)
                del decisions
        elapsed += time.perf_counter() - started
        done += len(batch)
    return events / elapsed


def run_child(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child process."""
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--sim-contacts", type=int, default=100_000)
    parser.add_argument("--sim-days", type=int, default=180)
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    args = parser.parse_args()
    if args.quick:
        args.events, args.contacts, args.sim_contacts, args.sim_days = 100_000, 10_000, 10_000, 60
    mapping = load_mapping(ROOT / "mappings" / "hubspot.yaml")
    exe = [sys.executable, "-m", "connectors.cli"]

    rate = bench_engine(args.events, args.contacts, mapping.policy)
    print(f"engine alone:        {rate:>12,.0f} events/s  (target >= 300,000: "
          f"{rate / 300_000:.2f}x; in place, as the pipeline runs it)")  # fmt: skip
    rate = bench_engine(args.events // 2, args.contacts // 2, mapping.policy, pure=True)
    print(f"engine, pure calls:  {rate:>12,.0f} events/s  (apply_event: a copy per event)")

    with tempfile.TemporaryDirectory() as tmp:
        events_file = Path(tmp) / "events.jsonl"
        with events_file.open("w") as handle:
            for item in event_dicts(args.events, args.contacts, seed=2):
                handle.write(json.dumps(item) + "\n")
        env_dir = ["--data-dir", tmp]
        seconds, rss = run_child(exe + ["replay", "mappings/hubspot.yaml", str(events_file),
                                        "--out", os.devnull, *env_dir])  # fmt: skip
        rate = args.events / seconds
        print(f"replay with ledger:  {rate:>12,.0f} events/s  (target >= 100,000: "
              f"{rate / 100_000:.2f}x; {args.events:,} events, {args.contacts:,} contacts, "
              f"{seconds:.1f} s incl. start-up)")  # fmt: skip
        print(f"replay peak RSS:     {rss:>12,.0f} MB        (target < 500 MB: "
              f"{rss / 500:.2f}x of the budget)")  # fmt: skip
        seconds, rss = run_child(exe + ["simulate", "--contacts", str(args.sim_contacts),
                                        "--days", str(args.sim_days), "--report",
                                        str(Path(tmp) / "report"), *env_dir])  # fmt: skip
        print(f"simulate {args.sim_contacts:,} x {args.sim_days} d: {seconds:>8.1f} s  "
              f"(target < 60 s: {seconds / 60:.2f}x of the budget; peak RSS {rss:,.0f} MB)")


if __name__ == "__main__":
    main()
