"""The object path against the coded bulk path, measured interleaved in one run.

    python bench/engine.py                 # 1M events / 100K contacts, simulate 100K x 180 days
    python bench/engine.py --quick         # 100K events / 10K contacts, simulate 10K x 60 days
    python bench/engine.py --skip-object   # coded only (the object replay of 1M takes minutes)

Prints events/s of the engine alone on each representation, of `elasticity replay` with the
ledger (object, coded on one worker, coded on N workers; each run `--rounds` times, interleaved,
the fastest counted), each replay's peak RSS, the wall
time of `elasticity simulate` on each path, and `explain`/`report` on each replay's ledger,
with the ratios. On a shared machine the absolute figures move with the load; the ratios of
runs made side by side are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crm_elasticity.core.coded import engine as coded  # noqa: E402
from crm_elasticity.core.coded.codes import Names, coded_policies, to_us  # noqa: E402
from crm_elasticity.core.data_dir import DataDir  # noqa: E402
from crm_elasticity.core.engine import apply_owned  # noqa: E402
from crm_elasticity.core.gcpause import cyclic_gc_paused  # noqa: E402
from crm_elasticity.core.mapping import load_mapping  # noqa: E402
from crm_elasticity.core.models import EVENT  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)
KINDS = (
    ["send"] * 50
    + ["open"] * 28
    + ["click"] * 12
    + ["high_intent_visit"] * 6
    + ["enroll"] * 3
    + ["unsubscribe"]
)


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
        yield {
            "event_id": f"ev{i}",
            "contact_id": f"c{contact:06d}",
            "type": kind,
            "occurred_at": at.isoformat(),
        }


def bench_object_engine(events: list, policy) -> float:
    """Events/s of `apply_owned` (the pipeline's in-place call), states in a dict."""
    states: dict = {}
    get = states.get
    decisions: list = []
    with cyclic_gc_paused():
        started = time.perf_counter()
        for event in events:
            cid = event.contact_id
            states[cid] = apply_owned(get(cid), event, policy, decisions)
        elapsed = time.perf_counter() - started
    return len(events) / elapsed


def bench_coded_engine(events: list, policy) -> float:
    """Events/s of the coded engine on the same events, as (index, type, time, id) tuples."""
    p = coded_policies(policy, Names())[None]
    index: dict[str, int] = {}
    coded_events = []
    for e in events:
        i = index.setdefault(e.contact_id, len(index))
        coded_events.append(
            (i, p.type_codes[e.type], to_us(e.occurred_at), e.event_id, e.contact_id)
        )
    states: list = [None] * len(index)
    rows: list = []
    apply = coded.apply
    with cyclic_gc_paused():
        started = time.perf_counter()
        for i, kind, at, eid, cid in coded_events:
            states[i] = apply(states[i], i, kind, at, eid, p, rows, cid)
        elapsed = time.perf_counter() - started
    return len(events) / elapsed


def run_child(args: list[str]) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MB, the largest of the child and its workers) and CPU seconds
    (user + sys of the child and its workers: what a loaded machine does not change). Both
    are read by `/usr/bin/time` (GNU time), not from this process's rusage: a child forked
    from this large process starts with its pages counted."""
    timer = (
        ["/usr/bin/time", "-f", "peak-rss-kb %M cpu-s %U %S"]
        if Path("/usr/bin/time").exists()
        else []
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [*timer, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    marks = [line.split() for line in proc.stderr.splitlines() if line.startswith("peak-rss-kb ")]
    if not marks:
        return seconds, float("nan"), float("nan")
    return seconds, int(marks[-1][1]) / 1024, float(marks[-1][3]) + float(marks[-1][4])


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--sim-contacts", type=int, default=100_000)
    parser.add_argument("--sim-days", type=int, default=180)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--rounds", type=int, default=2, help="replays of each kind, interleaved; the best counts"
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    parser.add_argument(
        "--skip-object",
        action="store_true",
        help="coded path only (no old-path replay or simulate)",
    )
    args = parser.parse_args()
    if args.quick:
        args.events, args.contacts, args.sim_contacts, args.sim_days = 100_000, 10_000, 10_000, 60
    mapping = load_mapping(ROOT / "mappings" / "hubspot.yaml")
    exe = [sys.executable, "-m", "crm_elasticity.connectors.cli"]
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    sample = min(args.events, 300_000)
    events = [EVENT.validate_python(d) for d in event_dicts(sample, args.contacts // 3, seed=1)]
    rates: dict[str, list[float]] = {"object": [], "coded": []}
    for _ in range(2):  # interleaved, best of two each
        rates["object"].append(bench_object_engine(events, mapping.policy))
        rates["coded"].append(bench_coded_engine(events, mapping.policy))
    old, new = max(rates["object"]), max(rates["coded"])
    print(f"engine alone, object:  {old:>10,.0f} events/s")
    print(
        f"engine alone, coded:   {new:>10,.0f} events/s  ({new / old:.2f}x the object engine; "
        f"target >= 300,000: {new / 300_000:.2f}x)"
    )
    del events

    with tempfile.TemporaryDirectory() as tmp:
        events_file = Path(tmp) / "events.jsonl"
        with events_file.open("w") as handle:
            for item in event_dicts(args.events, args.contacts, seed=2):
                handle.write(json.dumps(item) + "\n")
        replay = [*exe, "replay", "mappings/hubspot.yaml", str(events_file), "--out", os.devnull]
        runs = [
            ("coded, 1 worker", ["--engine", "coded", "--workers", "1"]),
            (
                f"coded, {args.workers} workers",
                ["--engine", "coded", "--workers", str(args.workers)],
            ),
        ]
        if not args.skip_object:
            runs.insert(1, ("object", ["--engine", "object"]))
        seconds: dict[str, float] = {}
        cpu: dict[str, float] = {}
        stores: dict[str, Path] = {}
        rss_of: dict[str, float] = {}
        for _ in range(args.rounds):  # interleaved rounds, best of each
            for name, extra in runs:
                data = Path(tmp) / name.replace(" ", "_").replace(",", "")
                took, rss, used = run_child([*replay, *extra, "--data-dir", str(data)])
                if took < seconds.get(name, float("inf")):
                    seconds[name], rss_of[name], cpu[name] = took, rss, used
                stores[name] = DataDir(data).replay
        for name, _ in runs:
            took, rss = seconds[name], rss_of[name]
            rate = args.events / took
            print(
                f"replay {name + ':':<20} {rate:>10,.0f} events/s  ({took:.1f} s incl. start-up, "
                f"peak RSS {rss:,.0f} MB; target <= 250 MB: {rss / 250:.2f}x; "
                f"CPU {cpu[name]:.1f} s)"
            )
        one = seconds["coded, 1 worker"]
        n = seconds[f"coded, {args.workers} workers"]
        print(
            f"  {args.workers} workers vs 1: {one / n:.2f}x (target >= 1.4x); CPU of all their "
            f"processes {cpu[f'coded, {args.workers} workers'] / cpu['coded, 1 worker']:.2f}x"
        )
        if "object" in seconds:
            print(
                f"  coded 1 worker vs object: {seconds['object'] / one:.2f}x (target >= 4x); "
                f"target >= 100,000 events/s: {args.events / one / 100_000:.2f}x"
            )
            from crm_elasticity.core.explain import explain_contact
            from crm_elasticity.core.report import render_report

            reads: dict[str, tuple[float, float]] = {}
            for _ in range(3):  # interleaved, best of three each
                for name in ("object", "coded, 1 worker"):
                    path = stores[name]
                    took_explain = min(
                        timed(lambda p=path: explain_contact(p, "c000123")) for _ in range(5)
                    )
                    took_report = timed(lambda p=path: render_report(p, "json", mapping=mapping))
                    best = reads.get(name, (took_explain, took_report))
                    reads[name] = (min(best[0], took_explain), min(best[1], took_report))
            for name, (took_explain, took_report) in reads.items():
                print(
                    f"  on the {name} ledger: explain {took_explain * 1000:.1f} ms, "
                    f"report {took_report:.2f} s"
                )
            (old_explain, old_report), (new_explain, new_report) = reads.values()
            print(
                f"  coded ledger vs text ledger: explain {new_explain / old_explain:.2f}x the "
                f"time, report {new_report / old_report:.2f}x (target: no slower, <= 1.00x)"
            )

    with tempfile.TemporaryDirectory() as tmp:
        simulate = [
            *exe,
            "simulate",
            "--contacts",
            str(args.sim_contacts),
            "--days",
            str(args.sim_days),
            "--report",
            str(Path(tmp) / "report"),
            "--data-dir",
            tmp,
        ]
        took, rss, _ = run_child(simulate)
        print(
            f"simulate {args.sim_contacts:,} x {args.sim_days} d, coded: {took:>6.1f} s "
            f"(target <= 20 s; peak RSS {rss:,.0f} MB)"
        )
        if not args.skip_object:
            env_took, _, _ = run_child([*simulate, "--engine", "object"])
            print(
                f"simulate {args.sim_contacts:,} x {args.sim_days} d, object: {env_took:>5.1f} s "
                f"({env_took / took:.2f}x the coded run's time)"
            )
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
