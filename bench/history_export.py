"""Benchmark: `elasticity history` from HubSpot's email events API, against the fake HubSpot
with its rate limit enforced (100 requests / rolling 10 s).

    python bench/history_export.py                       # 100,000 events, 10,000 contacts
    python bench/history_export.py --events 20000 --contacts 2000

Reported from one run: API calls vs the minimum (ceil(events / 1,000) event pages plus
ceil(recipients / 100) batch reads by email), wall time vs the rate-limit floor (the calls past
the first window's 100, at 10 a second), 429s received, and events written a second. The fake
runs in this process (a thread), so its CPU is in the wall time too.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crm_elasticity.connectors.history import export_history  # noqa: E402
from crm_elasticity.connectors.hubspot import HubSpotConnector  # noqa: E402
from crm_elasticity.connectors.hubspot.config import HubSpotSettings  # noqa: E402
from crm_elasticity.core.mapping import load_mapping  # noqa: E402
from tests.fakes.hubspot_server import TOKEN, FakeHubSpot  # noqa: E402

SINCE = datetime(2025, 6, 1, tzinfo=UTC)
UNTIL = datetime(2026, 6, 1, tzinfo=UTC)
TYPES = ["DELIVERED"] * 5 + ["SENT"] * 5 + ["OPEN"] * 3 + ["CLICK", "BOUNCE", "STATUSCHANGE"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    fake = FakeHubSpot(requests_per_10s=100)
    url = fake.start()
    emails = [f"reader{n}@example.com" for n in range(args.contacts)]
    for email in emails:
        fake.add_contact({"email": email})
    span = (UNTIL - SINCE).total_seconds()
    for _ in range(args.events):
        kind = rng.choice(TYPES)
        extra = {"category": "UNKNOWN_USER"} if kind == "BOUNCE" else {}
        if kind == "STATUSCHANGE":
            extra = {"portalSubscriptionStatus": "UNSUBSCRIBED", "subscriptions": []}
        at = SINCE + timedelta(seconds=rng.random() * span)
        fake.add_email_event(kind, rng.choice(emails), at, **extra)
    recipients = len({e["recipient"] for e in fake.email_events})
    settings = HubSpotSettings(access_token=TOKEN, base_url=url, requests_per_10s=100)
    connector = HubSpotConnector(load_mapping(ROOT / "mappings" / "hubspot.yaml"), settings)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = export_history(connector, Path(folder) / "events.jsonl", SINCE, UNTIL, UNTIL)
        wall = time.perf_counter() - started
    fake.stop()
    calls = connector.calls.api_calls
    minimum = math.ceil(args.events / 1000) + math.ceil(recipients / 100)
    floor = max(0, calls - 100) / 10
    print(f"{args.events:,} events, {recipients:,} recipients: {result.written:,} written")
    print(
        f"calls {calls} = {calls / minimum:.3f} x minimum ({minimum}); "
        f"429s {fake.stats['429']}; wall {wall:.1f} s = {wall / floor if floor else 0:.3f} x "
        f"rate-limit floor ({floor:.1f} s); {result.written / wall:,.0f} events written/s"
    )


if __name__ == "__main__":
    main()
