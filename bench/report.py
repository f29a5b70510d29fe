"""Time `report` over a large ledger: `python bench/report.py [--decisions 10000000]`.

Builds a synthetic ledger through the real store commit path (so the roll-up is the one
production writes), about ten decisions a contact over a year: enrollment, weekly sends, opens
and clicks, dormancy, reactivation steps (withheld for the holdout), reactivations and
suppressions. Then renders the report in every format and prints time and peak RSS. The
target is < 30 s and < 1 GB for 10M decisions.

`--dynamodb` (default 1M decisions) then loads that store's roll-up into a DynamoDB table under
moto as the worker keeps it (counter items spread over the counter shards, contact levels,
policy notes), renders the report from DynamoDB, checks its JSON is the SQLite report's byte
for byte, and prints the time against the SQLite report's and the items it read; then folds the
closed days into packed month items (`DynamoDBStore.compact_rollup`, what the scheduled report
does) and renders it again: before/after items read and times, as ratios (target: < 5 s on
moto, reads independent of the number of decisions).
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crm_elasticity.core.mapping import load_mapping  # noqa: E402
from crm_elasticity.core.models import Action, ContactState, Decision, Status  # noqa: E402
from crm_elasticity.core.sqlite_store import SQLiteStore  # noqa: E402
from crm_elasticity.core.store import Batch  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)
A, E, D, R, S = (
    Status.ACTIVE,
    Status.ENGAGED,
    Status.DORMANT,
    Status.REACTIVATED,
    Status.SUPPRESSED,
)


def contact_decisions(
    cid: str, rng: random.Random, version: str, experiments: dict
) -> tuple[list[Decision], ContactState]:
    at = START + timedelta(days=rng.uniform(0, 60))
    out = [
        Decision(
            contact_id=cid,
            at=at,
            rule="enroll",
            reason="enrolled",
            cause=f"{cid}:e",
            from_status=None,
            to_status=A,
            changes={"campaign_status": (None, A), "experiments": (None, experiments)},
            policy_version=version,
            actions=[],
            event_type="enroll",
        )
    ]
    status, cycle, unanswered = A, 0, 0
    held = experiments.get("holdout") == "holdout"
    while len(out) < 10 and at < START + timedelta(days=365):
        at += timedelta(days=rng.choice((1, 3, 7)), hours=rng.random() * 12)
        roll = rng.random()
        if status in (A, R) and roll < 0.55:
            unanswered += 1
            to = D if unanswered >= 3 else status
            reason = "unanswered_sends" if to is D else "sent"
            out.append(
                Decision(
                    contact_id=cid,
                    at=at,
                    rule="send",
                    reason=reason,
                    cause=f"{cid}:s{len(out)}",
                    from_status=status,
                    to_status=to,
                    changes={"unanswered_sends": (unanswered - 1, unanswered)},
                    policy_version=version,
                    actions=[],
                    event_type="send",
                )
            )
            status = to
        elif status in (A, R) and roll < 0.85:
            kind = "open" if roll < 0.75 else "click"
            unanswered = 0
            score = {"engagement_score": (0.0, 5.0)}
            out.append(
                Decision(
                    contact_id=cid,
                    at=at,
                    rule="engagement",
                    reason=kind,
                    cause=f"{cid}:o{len(out)}",
                    from_status=status,
                    to_status=status,
                    changes=score,
                    policy_version=version,
                    actions=[],
                    event_type=kind,
                )
            )
        elif status is D:
            cycle += 1
            kind = "reactivation_step_withheld" if held else "reactivation_step_due"
            step = Action(kind, {"step": 1, "cycle": cycle, "format": "HTML"})
            out.append(
                Decision(
                    contact_id=cid,
                    at=at,
                    rule="time:cooling_done",
                    reason="reactivation_step_1",
                    cause=f"time:{cid}:{len(out)}",
                    from_status=D,
                    to_status=D,
                    changes={"reactivation_cycle": (cycle - 1, cycle), "reactivation_step": (0, 1)},
                    policy_version=version,
                    actions=[step],
                )
            )
            back = rng.random() < (0.04 if held else 0.09)
            at += timedelta(days=rng.uniform(1, 6))
            if back:
                out.append(
                    Decision(
                        contact_id=cid,
                        at=at,
                        rule="engagement",
                        reason="reactivated_from_dormant",
                        cause=f"{cid}:r{len(out)}",
                        from_status=D,
                        to_status=R,
                        changes={"reactivation_step": (1, 0)},
                        policy_version=version,
                        actions=[],
                        event_type="open",
                    )
                )
                status, unanswered = R, 0
            else:
                out.append(
                    Decision(
                        contact_id=cid,
                        at=at,
                        rule="time:no_response",
                        reason="no_response",
                        cause=f"time:{cid}:{len(out)}",
                        from_status=D,
                        to_status=S,
                        changes={"reactivation_step": (1, 0)},
                        policy_version=version,
                        actions=[Action("alternate_channel_add")],
                    )
                )
                status = S
        elif status is S:
            break
        else:
            score = {"engagement_score": (5.0, 2.5)}
            out.append(
                Decision(
                    contact_id=cid,
                    at=at,
                    rule="time:decay",
                    reason="score_decayed",
                    cause=f"time:{cid}:{len(out)}",
                    from_status=status,
                    to_status=status,
                    changes=score,
                    policy_version=version,
                )
            )
    state = ContactState(
        cid, status, out[0].at, at, at, out[0].at, reactivation_cycle=cycle, experiments=experiments
    )
    return out, state


def build(path: Path, decisions: int, mapping_path: Path) -> None:
    mapping = load_mapping(mapping_path)
    rules = mapping.policy.program
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = SQLiteStore(path)
    rng = random.Random(7)
    made, n = 0, 0
    started = time.perf_counter()
    batch = Batch()
    while made < decisions:
        cid = f"c{n:08d}"
        n += 1
        found, state = contact_decisions(cid, rng, mapping.policy.version, rules.assign(cid))
        found = found[: decisions - made]
        batch.decisions += found
        batch.contacts.append(state)
        batch.next_due.append(None)
        made += len(found)
        if len(batch.decisions) >= 100_000 or made >= decisions:
            store.commit(batch)
            batch = Batch()
            rate = made / (time.perf_counter() - started)
            print(f"\r  built {made:,} decisions ({rate:,.0f}/s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    store.close()


class OneByOne:
    """A DynamoDB client that applies a transaction's items one at a time. moto copies the
    whole table for every item of a `TransactWriteItems`, so folding a year of counters (a few
    hundred transactions over tens of thousands of items) in transactions would take hours
    there; with no other writer running, the items one by one leave the same table."""

    def __init__(self, client: object) -> None:
        self._client = client

    def transact_write_items(self, TransactItems: list[dict]) -> dict:  # noqa: N803
        calls = {
            "Put": "put_item",
            "Update": "update_item",
            "Delete": "delete_item",
            "ConditionCheck": None,
        }
        from botocore.exceptions import ClientError

        for i, item in enumerate(TransactItems):
            ((kind, op),) = item.items()
            if calls[kind] is None:
                continue
            try:
                getattr(self._client, calls[kind])(**op)
            except ClientError as exc:
                if i or exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise  # only the first item may refuse: then nothing was written
                reasons = [{"Code": "ConditionalCheckFailed"}] + [{"Code": "None"}] * (
                    len(TransactItems) - 1
                )
                raise ClientError(
                    {
                        "Error": {"Code": "TransactionCanceledException", "Message": "cancelled"},
                        "CancellationReasons": reasons,
                    },
                    "TransactWriteItems",
                ) from exc
        return {}

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)


def dynamodb_run(store_path: Path, mapping_path: Path) -> None:
    import json
    import os

    for name, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        os.environ.setdefault(name, value)
    import boto3
    from moto import mock_aws

    from crm_elasticity.core.dynamodb_store import ROLLUP_SHARDS, DynamoDBStore, counter_key
    from crm_elasticity.core.report import build, render

    mapping = load_mapping(mapping_path)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    local = SQLiteStore(store_path)
    t = time.perf_counter()
    expected = render(build(local, None, mapping, label="bench", now=now), "json")
    sqlite_took = time.perf_counter() - t
    rows, levels, notes = local.rollup(), local.contact_levels(), local.policy_notes()
    decisions = sum(r[-1] for r in rows)
    local.close()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="eu-west-1")
        DynamoDBStore("bench", client=client).create_table()
        items = []
        for i, row in enumerate(rows):
            # Each counter split over two shards, as concurrent workers leave it.
            dims = json.dumps(list(row[:9]), separators=(",", ":"))
            half = row[9] // 2
            for shard, n in ((i % ROLLUP_SHARDS, half), ((i + 1) % ROLLUP_SHARDS, row[9] - half)):
                items.append(
                    {
                        **counter_key("rollup", dims, f"{shard:02d}"),
                        "dims": {"S": dims},
                        "n": {"N": str(n)},
                    }
                )
        for (status, reason), n in levels.items():
            dims = json.dumps([status, reason], separators=(",", ":"))
            items.append(
                {**counter_key("levels", dims, "00"), "dims": {"S": dims}, "n": {"N": str(n)}}
            )
        for name, value in notes.items():
            items.append({"pk": {"S": "notes"}, "sk": {"S": name}, "value": {"S": value}})
        for start in range(0, len(items), 25):
            client.batch_write_item(
                RequestItems={
                    "bench": [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
                }
            )
        read = {"items": 0}
        query = client.query

        def counted(**kwargs):  # noqa: ANN003, ANN202
            page = query(**kwargs)
            read["items"] += len(page.get("Items", [])) or page.get("Count", 0)
            return page

        client.query = counted
        store = DynamoDBStore("bench", client=client)
        folding = DynamoDBStore("bench", client=OneByOne(client))

        def timed_report() -> tuple[str, float, int]:
            read["items"] = 0
            t = time.perf_counter()
            text = render(build(store, None, mapping, label="bench", now=now), "json")
            return text, time.perf_counter() - t, read["items"]

        got, dynamo_took, day_reads = timed_report()
        t = time.perf_counter()
        folded = folding.compact_rollup(now)
        fold_took = time.perf_counter() - t
        packed_got, packed_took, packed_reads = timed_report()
    same = "identical to" if got == expected else "DIFFERENT from"
    packed_same = "identical to" if packed_got == expected else "DIFFERENT from"
    print(
        f"dynamodb (moto): {decisions:,} decisions in {len(rows):,} roll-up rows "
        f"({len(items):,} counter items)"
    )
    print(
        f"  day counters:   report read {day_reads:,} items "
        f"({day_reads / max(decisions, 1):.5f} per decision) in {dynamo_took:.2f}s, "
        f"{dynamo_took / sqlite_took:.1f}x the SQLite report's {sqlite_took:.2f}s; "
        f"JSON {same} the SQLite report"
    )
    print(
        f"  compaction:     {folded:,} counter items folded into packed months in "
        f"{fold_took:.2f}s (once, a year at a time; the scheduled report folds each day as it "
        f"closes; each fold transaction applied item by item here, see `OneByOne`)"
    )
    print(
        f"  packed months:  report read {packed_reads:,} items in {packed_took:.2f}s, "
        f"{packed_took / sqlite_took:.1f}x the SQLite report's; "
        f"{day_reads / max(packed_reads, 1):.0f}x fewer items and "
        f"{dynamo_took / packed_took:.1f}x faster than from day counters; "
        f"JSON {packed_same} the SQLite report"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--decisions", type=int, default=None, help="default 10,000,000 (1,000,000 with --dynamodb)"
    )
    parser.add_argument(
        "--dynamodb",
        action="store_true",
        help="also report from a DynamoDB table (moto) holding the roll-up",
    )
    parser.add_argument("--store", type=Path, default=Path("bench/out/report-bench.sqlite3"))
    parser.add_argument("--mapping", type=Path, default=Path("mappings/hubspot.yaml"))
    parser.add_argument("--reuse", action="store_true", help="keep an existing store")
    parser.add_argument("--since", default=None, help="ISO time for a --since run too")
    args = parser.parse_args()
    if args.decisions is None:
        args.decisions = 1_000_000 if args.dynamodb else 10_000_000
    args.store.parent.mkdir(parents=True, exist_ok=True)
    if not (args.reuse and args.store.exists()):
        t = time.perf_counter()
        build(args.store, args.decisions, args.mapping)
        print(f"built ledger in {time.perf_counter() - t:.1f}s: {args.store}")

    from crm_elasticity.core.report import render_report

    mapping = load_mapping(args.mapping)
    runs = [("md", None), ("html", None), ("json", None)]
    if args.since:
        runs.append(("md", datetime.fromisoformat(args.since)))
    for fmt, since in runs:
        t = time.perf_counter()
        text = render_report(args.store, fmt, since, mapping)
        took = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        label = f"{fmt}" + (f" --since {args.since}" if since else "")
        print(f"report {label:<40} {took:6.2f}s  {len(text):>9,} chars  peak RSS {peak:,.0f} MB")
    if args.dynamodb:
        dynamodb_run(args.store, args.mapping)


if __name__ == "__main__":
    main()
