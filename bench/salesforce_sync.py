"""Salesforce write-back benchmark: one scheduled sync of N contacts (default 100,000) of which
30% have a time rule due (Active, silent past `dormant_after_days`), run three ways against
the in-process fake org (tests/fakes/salesforce.py, no network):

  bulk       the connector as shipped: changes above `bulk_threshold` go through one Bulk 2.0 job
  composite  the same sync forced through sObject Collections (200 records a call)
  naive      the same sync writing one PATCH per record (simple-salesforce `SFType.update`)

Printed: API calls (reads and writes), calls against the minimum (reads + create, upload, close
and one status poll), calls against the naive loop, wall time, and the simulated time the Bulk
job waited. Wall time is our own CPU time plus the fake's; it has no network latency in it,
which would make the naive loop far slower still (30,000 round trips).

    python bench/salesforce_sync.py [--records 100000] [--changed 0.3] [--full]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import responses  # noqa: E402

from crm_elasticity.connectors.base import WriteRequest, WriteResult  # noqa: E402
from crm_elasticity.connectors.runner import Runner  # noqa: E402
from crm_elasticity.connectors.salesforce import SalesforceConnector  # noqa: E402
from crm_elasticity.connectors.salesforce.config import credentials_from_env  # noqa: E402
from crm_elasticity.core.mapping import Mapping, load_mapping  # noqa: E402
from crm_elasticity.core.sqlite_store import SQLiteStore  # noqa: E402
from tests.fakes.salesforce import INSTANCE, FakeSalesforce  # noqa: E402

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ENV = {"SALESFORCE_ACCESS_TOKEN": "TOKEN-0", "SALESFORCE_INSTANCE_URL": f"https://{INSTANCE}"}


class NaiveConnector(SalesforceConnector):
    """What a first integration often does: one REST PATCH per changed record."""

    def write_records(self, requests: Sequence[WriteRequest]) -> WriteResult:
        result = WriteResult()
        for request in requests:
            cid, row = request.contact_id, self.codec.fields_for(request)
            self.client.call("update one record", lambda sf, c=cid, r=row: sf.Contact.update(c, r))
            result.written.append(cid)
        return result


@dataclass
class Run:
    mode: str
    calls: int
    reads: int
    writes: int
    jobs: int
    polls: int
    seconds: float
    bulk_wait: float
    written: int


def seed(fake: FakeSalesforce, records: int, changed: float) -> None:
    """Ids in ascending order; every 1/changed-th contact has been silent for 120 days."""
    silent_at = (NOW - timedelta(days=120)).isoformat()
    recent_at = (NOW - timedelta(days=3)).isoformat()
    created = (NOW - timedelta(days=400)).isoformat()
    due_every = 1 / changed if changed else math.inf
    next_due = 0.0
    for i in range(records):
        due = i >= next_due
        if due:
            next_due += due_every
        last = silent_at if due else recent_at
        fake.records["Contact"][f"003{i:012d}AAA"] = {
            "Id": f"003{i:012d}AAA",
            "OwnerId": "0055g00000INTEGAAA",
            "CreatedDate": created,
            "SystemModstamp": last,
            "Campaign_Status__c": "Active",
            "Last_Engagement_Date__c": last,
            "Elastic_Status_Changed_At__c": last,
            "Engagement_Score__c": 0.0,
        }


def run(mode: str, mapping: Mapping, records: int, changed: float, full: bool) -> Run:
    options = dict(mapping.options)
    if mode == "composite":
        options["bulk_threshold"] = 10**9
    mapped = mapping.model_copy(update={"options": options})
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake = FakeSalesforce(daily_total=10**9).install(rsps)
        fake.provision_mapping(mapping)
        seed(fake, records, changed)
        cls = NaiveConnector if mode == "naive" else SalesforceConnector
        connector = cls(mapped, credentials_from_env(ENV), sleep=fake.sleep)
        runner = Runner(connector, SQLiteStore(":memory:"), clock=lambda: NOW)
        started = time.perf_counter()
        summary = runner.sync(NOW, full=full)
        seconds = time.perf_counter() - started
    if summary.stopped:
        raise SystemExit(f"{mode}: sync stopped: {summary.stopped}")
    reads = sum(1 for m, p in fake.api_calls if m == "GET" and "/query" in p)
    polls = sum(1 for m, p in fake.api_calls if m == "GET" and p.split("/")[-2] == "ingest")
    return Run(
        mode,
        len(fake.api_calls),
        reads,
        len(fake.api_calls) - reads,
        len(fake.jobs),
        polls,
        seconds,
        fake.clock,
        summary.written,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.3)
    parser.add_argument("--full", action="store_true", help="sync --full: read every record")
    args = parser.parse_args()
    mapping = load_mapping(ROOT / "mappings" / "salesforce.yaml")
    runs = {
        m: run(m, mapping, args.records, args.changed, args.full)
        for m in ("bulk", "composite", "naive")
    }
    bulk, naive = runs["bulk"], runs["naive"]
    minimum = bulk.reads + 4 * max(bulk.jobs, 1)
    kind = "full sync (reads every record)" if args.full else "scheduled sync (reads due records)"
    print(f"{args.records:,} contacts, {bulk.written:,} changed; {kind}")
    print(f"minimum calls: {minimum} = {bulk.reads} query pages + create, upload, close, 1 poll")
    print(
        f"{'mode':<10}{'calls':>8}{'reads':>7}{'writes':>8}{'calls/min':>11}"
        f"{'naive/calls':>13}{'naive writes/writes':>21}{'wall s':>8}{'bulk wait s':>13}"
    )
    for r in runs.values():
        print(
            f"{r.mode:<10}{r.calls:>8,}{r.reads:>7}{r.writes:>8,}{r.calls / minimum:>10.3f}x"
            f"{naive.calls / r.calls:>12,.0f}x{naive.writes / r.writes:>20,.0f}x"
            f"{r.seconds:>8.1f}{r.bulk_wait:>13.0f}"
        )
    print(
        f"bulk: {bulk.jobs} job, {bulk.polls} status polls (simulated job time: 2 s + 1,500 rows/s)"
    )


if __name__ == "__main__":
    main()
