"""Benchmark: one scheduled HubSpot sync against the fake HubSpot, rate limits enforced.

    python bench/hubspot_sync.py                  # 100,000 contacts, 30% due (a few minutes)
    python bench/hubspot_sync.py --contacts 20000 # quicker

The fake runs in its own process (its CPU must not slow the client's) with HubSpot's limits
(100 requests / rolling 10 s, search 5 / s, no rate headers on search) and a per-request
latency. Reported from one run: API calls used vs the minimum (search pages + ceil(changed /
100) updates), wall time vs the rate-limit floor, 429s received, and a naive per-contact loop
(list, then one read and one update per contact) run on a sample and extrapolated.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import random
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crm_elasticity.connectors.hubspot import HubSpotConnector  # noqa: E402
from crm_elasticity.connectors.hubspot.client import HubSpotClient  # noqa: E402
from crm_elasticity.connectors.hubspot.config import HubSpotSettings  # noqa: E402
from crm_elasticity.connectors.hubspot.values import read_properties, record_from_properties  # noqa: E402
from crm_elasticity.connectors.runner import Runner  # noqa: E402
from crm_elasticity.core.cursors import Cursors  # noqa: E402
from crm_elasticity.core.engine import advance  # noqa: E402
from crm_elasticity.core.mapping import load_mapping  # noqa: E402
from crm_elasticity.core.reconcile import state_from_crm  # noqa: E402
from crm_elasticity.core.sqlite_store import SQLiteStore  # noqa: E402
from crm_elasticity.core.store import Batch  # noqa: E402
from tests.fakes.hubspot_server import TOKEN, FakeHubSpot  # noqa: E402

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CREATED = datetime(2025, 1, 1, tzinfo=UTC)
MAPPING = ROOT / "mappings" / "hubspot.yaml"


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def seed_population(fake: FakeHubSpot, contacts: int, due_share: float, seed: int) -> dict:
    """Due: silent 100 days (-> Dormant), cooling over (-> step 1), step wait over (-> step 2).
    Not due: engaged 5 days ago, dormant and still cooling, suppressed."""
    rng = random.Random(seed)
    days = lambda n: _iso(NOW - timedelta(days=n))  # noqa: E731
    due = 0
    for _ in range(contacts):
        props: dict[str, Any] = {
            "elastic_reactivation_cycle": "0",
            "elastic_unanswered_sends": "0",
            "elastic_reactivation_step": "0",
            "elastic_engagement_score": "0",
        }
        roll = rng.random()
        if roll < due_share:
            due += 1
            kind = rng.random()
            if kind < 0.5:
                props.update(
                    elastic_campaign_status="active",
                    elastic_last_engagement_date=days(100),
                    elastic_status_changed_at=days(100),
                )
            elif kind < 0.8:
                props.update(elastic_campaign_status="dormant", elastic_status_changed_at=days(35))
            else:
                props.update(
                    elastic_campaign_status="dormant",
                    elastic_reactivation_step="1",
                    elastic_reactivation_cycle="1",
                    elastic_status_changed_at=days(38),
                )
        else:
            kind = rng.random()
            if kind < 0.6:
                props.update(
                    elastic_campaign_status="active",
                    elastic_engagement_score="5",
                    elastic_last_engagement_date=days(5),
                    elastic_status_changed_at=days(5),
                )
            elif kind < 0.8:
                props.update(elastic_campaign_status="dormant", elastic_status_changed_at=days(10))
            else:
                props.update(
                    elastic_campaign_status="suppressed",
                    elastic_suppression_reason="unsubscribe",
                    elastic_status_changed_at=days(60),
                )
        fake.add_contact(props)
    # A full collection over a million fake records stalls the fake's threads for a moment,
    # skewing when it stamps arrivals (real HubSpot has no such pauses): take them out of it.
    gc.collect()
    gc.freeze()
    return {"contacts": contacts, "due": due}


def serve_fake(pipe: Any, rate: int, search_rate: int, latency: float) -> None:
    fake = FakeHubSpot(
        requests_per_10s=rate, search_per_second=search_rate, latency=latency, now=lambda: CREATED
    )
    fake.seeder = seed_population
    pipe.send(fake.start())
    pipe.recv()  # block until the parent is done
    fake.stop()


def admin(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - the fake on loopback
        base + path,
        data=data,
        method="POST" if data else "GET",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310
        return json.loads(response.read() or b"{}")


def settings(base: str, rate: int, search_rate: int) -> HubSpotSettings:
    return HubSpotSettings(
        access_token=TOKEN,
        base_url=base,
        requests_per_10s=rate,
        search_per_second=search_rate,
        write_concurrency=4,
    )


def run_sync(base: str, args: argparse.Namespace) -> dict[str, Any]:
    mapping = load_mapping(MAPPING)
    connector = HubSpotConnector(
        mapping, settings(base, args.rate, args.search_rate), prefetch_pages=8
    )
    connector.provision()
    population = admin(
        base,
        "/_fake/seed",
        {"contacts": args.contacts, "due_share": args.due_share, "seed": args.seed},
    )
    store = SQLiteStore(":memory:")
    # A steady-state sync: the previous one ran a day ago, no engagement since.
    store.commit(Batch(cursors={Cursors.poll_since: (NOW - timedelta(days=1)).isoformat()}))
    admin(base, "/_fake/reset", {})
    runner = Runner(connector, store, clock=lambda: NOW)
    calls_before = connector.calls.snapshot()
    started = time.perf_counter()
    summary = runner.sync(NOW)
    wall = time.perf_counter() - started
    fake = admin(base, "/_fake/stats")
    return {
        "population": population,
        "summary": summary,
        "wall": wall,
        "fake": fake,
        "api_calls": (connector.calls - calls_before).api_calls,
        "mapping": mapping,
    }


def run_naive(base: str, args: argparse.Namespace, mapping: Any) -> dict[str, Any]:
    """What a hand-written script does: list contacts, then per contact one read and one
    update, paced by the same client-side limiter so it is not a storm of 429s."""
    admin(base, "/_fake/reset", {})
    client = HubSpotClient(settings(base, args.rate, args.search_rate))
    props = read_properties(mapping)
    listing = client.call(
        "contacts.basic", "get_page", limit=100, properties=["hs_object_id"], what="list", scope="-"
    ).data
    ids = [r["id"] for r in listing["results"]][: args.naive_sample]
    started = time.perf_counter()
    for cid in ids:
        data = client.call(
            "contacts.basic", "get_by_id", cid, properties=props, what="read", scope="-"
        ).data
        record = record_from_properties(mapping, cid, data["properties"])
        state = state_from_crm(cid, record.values, None, mapping.policy, NOW, record.created_at)
        values = advance(state, NOW, mapping.policy).state.canonical_values() if state else {}
        body = {"properties": {mapping.fields[k].property: _plain(v) for k, v in values.items()}}
        client.call("contacts.basic", "update", cid, body, what="update", scope="-")
    elapsed = time.perf_counter() - started
    return {
        "sample": len(ids),
        "seconds": elapsed,
        "calls_per_contact": 2,
        "429s": admin(base, "/_fake/stats")["stats"].get("429", 0),
    }


def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _iso(value) or ""
    return str(getattr(value, "value", value)).lower()


def floor_seconds(count: int, per_window: float, window: float) -> float:
    """The least time `count` requests take under `per_window` per rolling `window`, the first
    window's burst included."""
    return max(0.0, (math.ceil(count / per_window) - 1) * window)


def report(args: argparse.Namespace, sync: dict[str, Any], naive: dict[str, Any]) -> None:
    summary, fake = sync["summary"], sync["fake"]
    calls = fake["calls"]
    due = sync["population"]["due"]
    changed = summary.written
    search_calls = sum(v for k, v in calls.items() if k.endswith("/search"))
    update_calls = calls.get("POST /crm/v3/objects/contacts/batch/update", 0)
    minimum = math.ceil(due / 200) + math.ceil(changed / 100)
    floor = (
        max(
            floor_seconds(math.ceil(due / 200), args.search_rate, 1.0),
            floor_seconds(math.ceil(changed / 100), args.rate, 10.0),
        )
        + args.latency
    )
    n = args.contacts
    naive_calls = math.ceil(n / 100) + 2 * n
    naive_wall = naive["seconds"] / max(1, naive["sample"]) * n
    used = sync["api_calls"]
    rows = [
        ("contacts / due / written", f"{n:,} / {due:,} / {changed:,}"),
        (
            "decisions / transitions",
            f"{summary.decisions:,} / {dict(summary.transitions)} "
            "(reactivation steps keep the status)",
        ),
        (
            "API calls used",
            f"{used:,} (search {search_calls}, batch update {update_calls}, "
            f"other {used - search_calls - update_calls})",
        ),
        (
            "minimum calls",
            f"{minimum:,} = ceil({due:,}/200) search pages + ceil({changed:,}/100) updates",
        ),
        ("calls / minimum", f"{used / minimum:.3f}   (target <= 1.05)"),
        ("wall time", f"{sync['wall']:.1f} s"),
        (
            "rate-limit floor",
            f"{floor:.1f} s = max(search at {args.search_rate}/s, updates at "
            f"{args.rate}/10 s, first burst free) + one request's latency",
        ),
        ("wall / floor", f"{sync['wall'] / floor:.3f}   (target <= 1.15)"),
        (
            "429s received",
            f"{fake['stats'].get('429', 0)}   (target 0; search "
            f"{fake['stats'].get('429_search', 0)})",
        ),
        ("retries", summary.retries),
        (
            "naive loop calls",
            f"{naive_calls:,} = ceil(n/100) list pages + a read and an update per contact",
        ),
        ("naive / ours (calls)", f"{naive_calls / used:,.0f}x fewer calls   (target >= 100x)"),
        (
            "naive loop wall",
            f"{naive_wall / 3600:.1f} h EXTRAPOLATED from a {naive['sample']}-"
            f"contact sample that took {naive['seconds']:.1f} s "
            f"({naive['429s']} 429s)",
        ),
        ("naive / ours (wall)", f"{naive_wall / sync['wall']:,.0f}x"),
    ]
    print(
        f"\nHubSpot sync benchmark: fake HubSpot, {args.rate} req/10 s, search "
        f"{args.search_rate}/s, {args.latency * 1000:.0f} ms per request"
    )
    for name, value in rows:
        print(f"  {name:<26} {value}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--due-share", type=float, default=0.30)
    parser.add_argument("--rate", type=int, default=100, help="requests per rolling 10 s")
    parser.add_argument("--search-rate", type=int, default=5, help="searches per second")
    parser.add_argument("--latency", type=float, default=0.12, help="seconds per request")
    parser.add_argument("--naive-sample", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(
        target=serve_fake, daemon=True, args=(child, args.rate, args.search_rate, args.latency)
    )
    process.start()
    base = parent.recv()
    try:
        sync = run_sync(base, args)
        naive = run_naive(base, args, sync["mapping"])
        report(args, sync, naive)
    finally:
        parent.send("stop")
        process.join(timeout=10)


if __name__ == "__main__":
    main()
