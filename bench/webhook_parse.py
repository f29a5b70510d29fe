"""Benchmark: verifying and parsing one full webhook delivery, against a 50 ms budget.

    python bench/webhook_parse.py [--runs 20] [--notifications 100]

A HubSpot delivery of 100 property changes (signature v3 checked on the raw bytes) and a
Salesforce outbound message of 100 notifications (token and org id checked), each parsed into
canonical events by the connector, as `serve` and the webhook function do before storing them.
Reported from one run: the best and the median of `--runs` parses (after one warm-up), and the
median as a share of the budget. No network: the connectors are built on dummy credentials and
parsing makes no call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crm_elasticity.connectors.base import WebhookRequest  # noqa: E402
from crm_elasticity.connectors.hubspot import HubSpotConnector  # noqa: E402
from crm_elasticity.connectors.hubspot.config import HubSpotSettings  # noqa: E402
from crm_elasticity.connectors.salesforce import SalesforceConnector  # noqa: E402
from crm_elasticity.connectors.salesforce.config import credentials_from_env  # noqa: E402
from crm_elasticity.core.mapping import load_mapping  # noqa: E402
from tests.fakes.hubspot_server import TOKEN  # noqa: E402
from tests.hubspot.hubspot_helpers import SECRET as HUBSPOT_SECRET  # noqa: E402
from tests.hubspot.webhook_helpers import ms, notification, signed  # noqa: E402
from tests.salesforce.sf_helpers import OUTBOUND_QUERY, OUTBOUND_TOKEN, envelope_of  # noqa: E402

BUDGET_SECONDS = 0.050
OPEN_AT = datetime(2026, 3, 1, 11, 30, tzinfo=UTC)


def hubspot(n: int) -> Callable[[], int]:
    settings = HubSpotSettings(
        access_token=TOKEN, client_secret=HUBSPOT_SECRET, base_url="http://127.0.0.1:9"
    )
    connector = HubSpotConnector(load_mapping(ROOT / "mappings" / "hubspot.yaml"), settings)
    batch = [
        notification(
            propertyName="hs_email_last_open_date",
            propertyValue=str(ms(OPEN_AT) + i),
            object_id=1000 + i,
        )
        for i in range(n)
    ]
    request = signed(batch)
    return lambda: len(connector.parse_webhook(request).events)


def salesforce(n: int) -> Callable[[], int]:
    env = {
        "SALESFORCE_ACCESS_TOKEN": "bench-token",
        "SALESFORCE_INSTANCE_URL": "https://bench.my.salesforce.com",
        "SALESFORCE_ORG_ID": "00D5g000004ABCD",
        "SALESFORCE_OUTBOUND_TOKEN": OUTBOUND_TOKEN,
    }
    mapping = load_mapping(ROOT / "mappings" / "salesforce.yaml")
    connector = SalesforceConnector(mapping, credentials_from_env(env))
    headers = {"content-type": "text/xml; charset=utf-8"}
    received = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
    body = envelope_of(n)
    request = WebhookRequest(
        "POST", "/webhooks/salesforce", OUTBOUND_QUERY, headers, body, received
    )
    return lambda: len(connector.parse_webhook(request).events)


def timed(parse: Callable[[], int], runs: int) -> tuple[list[float], int]:
    events = parse()  # warm-up: imports, compiled patterns
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        parse()
        seconds.append(time.perf_counter() - started)
    return seconds, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--notifications", type=int, default=100)
    args = parser.parse_args()
    print(f"one delivery of {args.notifications} notifications, {args.runs} parses each")
    print(f"{'vendor':<11} {'events':>6} {'best ms':>8} {'median ms':>10} {'median / budget':>16}")
    for name, build in (("hubspot", hubspot), ("salesforce", salesforce)):
        parse = build(args.notifications)
        seconds, events = timed(parse, args.runs)
        median = statistics.median(seconds)
        print(
            f"{name:<11} {events:>6} {min(seconds) * 1000:>8.1f} {median * 1000:>10.1f} "
            f"{median / BUDGET_SECONDS:>15.2f}x"
        )
    print(f"budget: {BUDGET_SECONDS * 1000:.0f} ms a delivery (below 1.00x is within it)")


if __name__ == "__main__":
    main()
