"""The `Store` on one DynamoDB table (the serverless deployment's store).

Single-table layout, partition key `pk` and sort key `sk` (both strings):

| item            | pk                   | sk          | notes                                   |
|-----------------|----------------------|-------------|-----------------------------------------|
| event claim     | `event#<key>`        | `claim`     | `expires_at` is the table's TTL         |
| contact state   | `contact#<shard>`    | contact id  | `state` JSON; `due_pk`/`next_due` feed  |
|                 |                      |             | the sparse `due` GSI; `version` moves   |
|                 |                      |             | with every write                        |
| ledger line     | `ledger#<contact>`   | `<seq>`     | `decision` JSON; put-if-absent only     |
| cursor          | `cursor#<name>`      | `cursor`    | `version` checked on every update       |
| inbox event     | `inbox`              | event id    | `seq` orders it (LSI `order`); `part`   |
|                 |                      |             | names the partition (absent: "")        |
| owed CRM write  | `outbox`             | key         | `seq` orders it (LSI `order`) and is    |
|                 |                      |             | its version; `holder`/`leased_until`    |
|                 |                      |             | the flusher's lease, kept on a rewrite; |
|                 |                      |             | `contact` whose (`core.owed`)           |
| quarantined     | `quarantine`         | event id    | `seq` orders it; `body`, `reason`, `at`;|
|                 |                      |             | `part` the inbox partition it left      |
| event history   | `history#<contact>`  | `history`   | `body`: recent decided events (JSON)    |
| quality mark    | `quality#<measure>`  | event id    | one per marked event (counted by query) |
| roll-up counter | `rollup#<rshard>`    | `<day>#<h>` | `dims`: the `core.rollup` key (JSON),   |
|                 |                      |             | `n`: decisions; `h` hashes `dims`       |
| contact level   | `levels#<rshard>`    | JSON        | `n`: contacts in (status, reason) now   |
| policy note     | `notes`              | cursor name | `value`: a `policy:`/`changelog:` cursor|

Contacts are spread over `SHARDS` partitions by a hash of their id, so listing them in id order
is a merge of `SHARDS` sorted queries, and no single partition takes every write. The inbox
and outbox are read with strongly consistent queries on a local secondary index: a global one
could hand the flusher a write it had already done.

Atomicity: a batch of at most `TRANSACTION_LIMIT` items is one `TransactWriteItems`, all or
nothing. A bigger batch (a sync page) is split so that every contact's items - its state, its
ledger lines, its owed writes and the claims of the events that changed it - travel in the
same transaction, in this order:

1. claims of events that changed nothing (claiming them loses nothing);
2. one group per contact, packed into transactions;
3. the rest: other owed writes, inbox/outbox removals, cursors (so a cursor moves last).

A crash between transactions leaves whole contacts done and others untouched; the retry finds
the done contacts' events claimed and applies the rest, so nothing is lost or counted twice.
Only a single contact with more than `TRANSACTION_LIMIT` items is split inside itself, and then
its claims and state go first (a retry cannot double count; the worst case is a missing ledger
line for that contact).

Reports read counters, never the ledger: every transaction that writes ledger lines also adds
them to the day's roll-up counters (`ADD n`), and one that moves a contact's status or
suppression reason moves the contact-level counters, so `report` reads only counter items and
`explain` one contact's ledger partition. Counters are spread over `ROLLUP_SHARDS` partitions
(a writer keeps to one it picked at random, and picks again after a transaction conflict) so
concurrent writers rarely touch the same counter item (two transactions on one item at once:
one is cancelled, and its batch is decided again), while a counter lives in only as many items
as writers ran at once.
DynamoDB lets a transaction name an item once, so each transaction carries one update per
counter item it moves, and those updates count toward its `TRANSACTION_LIMIT` items.

A contact listed in a batch's `expected_versions` is written (or, unchanged, checked) on the
condition that its version is still the one read, inside its group's transaction. Owed writes a
flusher has done are removed after the batch's transactions, each on the condition that its
`seq` is still the one flushed: a newer write owed under the key meanwhile stays.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from crm_elasticity.core.cursors import Cursors
from crm_elasticity.core.ledger_reader import LedgerReader, RollupRow, WindowError
from crm_elasticity.core.models import CONTACT_STATE, DECISION, EVENT, ContactState, Decision, Event
from crm_elasticity.core.order import (
    REVISION_WINDOW,
    ContactHistory,
    history_from_json,
    history_json,
)
from crm_elasticity.core.owed import OwedKind, OwedWrite
from crm_elasticity.core.rollup import rollup_keys
from crm_elasticity.core.sqlite_rows import decision_row
from crm_elasticity.core.store import (
    OUTBOX_LEASE,
    QUALITY_MEASURES,
    QUARANTINE_REASON_CHARS,
    Batch,
    ClaimedWrite,
    ConflictError,
    Quarantined,
    Store,
    StoreError,
    read_inbox_bodies,
)

_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")
SHARDS = 16
"""Fixed for the life of a table: a contact's partition is derived from it."""
ROLLUP_SHARDS = 8
"""Partitions of the roll-up and level counters; readers sum them all. May grow, not shrink."""
TRANSACTION_LIMIT = 100
TRANSACTION_BYTES = 3_500_000  # DynamoDB allows 4 MB per transaction; keep a margin
BATCH_GET_LIMIT = 100
VERSION_CACHE = 100_000
DUE_INDEX, ORDER_INDEX = "due", "order"
PACKED_PK = "rollpack"
"""The partition of the packed roll-up months (`compact_rollup`)."""
CLOSED_AFTER = REVISION_WINDOW + timedelta(days=1)
"""A day is folded once this long has passed since its end: late events are decided in their
place up to `REVISION_WINDOW` back, so the day's counters have normally stopped moving."""
PACK_BYTES = 300_000
"""Room a packed item may fill (DynamoDB's limit is 400 KB an item, keys included)."""
PACK_ENTRY_BYTES = 32
"""What an entry of a packed item takes besides its dims (the number, the map's overhead)."""
MAX_PACK_PARTS = 1000
FOLD_ITEMS = 60
"""Counters folded per transaction: with the packed item's update, within 100 items, and the
update expression within DynamoDB's 4 KB."""
FOLD_READ_ATTEMPTS = 5
OUTBOX_ATTEMPTS = 5
"""Rounds of taking or finishing owed writes while other flushers race for the same items."""

Item = dict[str, dict[str, Any]]
Op = dict[str, Any]


def table_definition(name: str) -> dict[str, Any]:
    """`create_table` arguments; serverless.yml declares the same table for deployment."""
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": a, "AttributeType": "S"}
            for a in ("pk", "sk", "due_pk", "next_due", "seq")
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": DUE_INDEX,
                "KeySchema": [
                    {"AttributeName": "due_pk", "KeyType": "HASH"},
                    {"AttributeName": "next_due", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
        "LocalSecondaryIndexes": [
            {
                "IndexName": ORDER_INDEX,
                "KeySchema": [
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "seq", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    }


def shard_of(contact_id: str) -> str:
    digest = hashlib.blake2b(contact_id.encode(), digest_size=4).digest()
    return f"contact#{int.from_bytes(digest, 'big') % SHARDS:02d}"


def sortable(value: datetime) -> str:
    """Fixed-width UTC text, so string order is time order in key conditions."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


class _Sequence:
    """Ledger and queue order: wall-clock nanoseconds, strictly increasing in this process,
    with a random tail so two processes never mint the same key."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()
        self._tail = secrets.token_hex(4)

    def next(self) -> str:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return f"{self._last:020d}-{self._tail}"


def _encode(value: object) -> object:
    if isinstance(value, datetime):
        return _iso(value)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    raise TypeError(f"cannot store {type(value).__name__}")


def _to_json(record: object) -> str:
    """Every dataclass field, so a field the core adds later is stored without a change here."""
    return json.dumps(
        {f.name: getattr(record, f.name) for f in fields(record)},  # type: ignore[arg-type]
        default=_encode,
        sort_keys=True,
        separators=(",", ":"),
    )


def _version_of(item: Item) -> int:
    """Items written before contacts had versions count as version 0."""
    return int(item["version"]["N"]) if "version" in item else 0


def _version_condition(
    expected: int | None, names: dict[str, str], values: dict[str, Any]
) -> dict[str, Any]:
    """The condition that a contact is still at the version read (None: still absent); adds
    the names and values it uses to those given."""
    if expected is None:
        return {"ConditionExpression": "attribute_not_exists(pk)"}
    names["#version"] = "version"
    values[":seen"] = _n(expected)
    condition = "#version = :seen"
    if expected == 0:
        condition = "attribute_exists(pk) AND (attribute_not_exists(#version) OR #version = :seen)"
    out: dict[str, Any] = {"ConditionExpression": condition}
    out["ExpressionAttributeNames"], out["ExpressionAttributeValues"] = names, values
    return out


def contact_from(item: Item) -> ContactState:
    return CONTACT_STATE.validate_python(json.loads(item["state"]["S"]))


def ledger_item(decision: Decision, seq: str) -> Item:
    return {
        "pk": _s(f"ledger#{decision.contact_id}"),
        "sk": _s(seq),
        "decision": _s(_to_json(decision)),
    }


def decision_from(item: Item) -> Decision:
    return DECISION.validate_python(json.loads(item["decision"]["S"]))


def counter_key(kind: str, dims: str, shard: str) -> Item:
    """The key of a counter item: `rollup#<shard>` / `<day>#<hash of dims>`, or `levels#<shard>` /
    dims (the JSON [status, reason])."""
    if kind == "rollup":
        digest = hashlib.blake2b(dims.encode(), digest_size=8).hexdigest()
        return {"pk": _s(f"rollup#{shard}"), "sk": _s(f"{json.loads(dims)[0]}#{digest}")}
    return {"pk": _s(f"levels#{shard}"), "sk": _s(dims)}


def _rollup_counter(key: tuple) -> Counter:
    return ("rollup", json.dumps(list(key), separators=(",", ":")))


def _level(status: object, reason: object) -> Counter:
    pair = [getattr(status, "value", status), getattr(reason, "value", reason)]
    return ("levels", json.dumps(pair, separators=(",", ":")))


def _level_moves(
    state: ContactState, decisions: list[Decision], before: Counter | None = None
) -> list[tuple[Counter, int]]:
    """How writing `state` moves the contact-level counters: out of the (status, suppression
    reason) it had before, into the one it has now. `before` is the level read at the version
    the write is conditional on; without it, the level before this batch's decisions (a
    contact whose first decision has no `from_status` is new)."""
    now = _level(state.campaign_status, state.suppression_reason)
    if before is not None:
        return [] if before == now else [(now, 1), (before, -1)]
    if not decisions:
        return []
    moves = [(now, 1)]
    first = decisions[0]
    if first.from_status is not None:
        reason = next(
            (
                d.changes["suppression_reason"][0]
                for d in decisions
                if "suppression_reason" in d.changes
            ),
            state.suppression_reason,
        )
        moves.append((_level(first.from_status, reason), -1))
    return moves


def _claim_key(key: str) -> Item:
    return {"pk": _s(f"event#{key}"), "sk": _s("claim")}


def _history_key(contact_id: str) -> Item:
    return {"pk": _s(f"history#{contact_id}"), "sk": _s("history")}


def _cursor_key(name: str) -> Item:
    return {"pk": _s(f"cursor#{name}"), "sk": _s("cursor")}


def _owed(item: Item) -> OwedWrite:
    """An outbox item as the owed write it holds (`contact` is absent on an item an earlier
    release wrote)."""
    contact = item.get("contact", {}).get("S")
    return OwedWrite.stored(item["sk"]["S"], item["payload"]["S"], contact)


Counter = tuple[str, str]
"""A counter item: ("rollup", dims JSON) or ("levels", [status, reason] JSON)."""
COUNTER_BYTES = 200
"""Room an update of a counter item takes in a transaction besides its dims."""


class _Group:
    """Operations that must land in the same transaction, and why they might fail; with each
    operation, the counters it moves (they travel in the same transaction)."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.moves: list[list[tuple[Counter, int]]] = []
        self.size = 0

    def add(self, op: Op, moves: list[tuple[Counter, int]] | None = None) -> None:
        self.ops.append(op)
        self.moves.append(moves or [])
        self.size += len(json.dumps(op)) + sum(len(c[1]) + COUNTER_BYTES for c, _ in moves or ())

    def counters(self) -> set[Counter]:
        return {c for moves in self.moves for c, _ in moves}


class DynamoDBStore(Store, LedgerReader):
    def __init__(
        self,
        table_name: str,
        client: Any = None,
        claim_ttl: timedelta = timedelta(days=90),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.table = table_name
        self.db = client if client is not None else boto3.client("dynamodb")
        self.claim_ttl = claim_ttl
        self.clock = clock
        self._seq = _Sequence()
        self._levels_read: OrderedDict[tuple[str, int], Counter] = OrderedDict()
        """(contact, version) -> its (status, reason) level as read: a write conditional on
        that version moves the level counters from exactly there."""
        self._counter_shard = secrets.randbelow(ROLLUP_SHARDS)
        """The counter shard this writer adds to, picked anew after a transaction conflict: a
        steady writer keeps to one, so a counter lives in as many items as writers ran at
        once (at most `ROLLUP_SHARDS`), which is what a report reads."""
        # Cursor versions this store last saw; an update is conditional on them (optimistic lock).
        self._versions: OrderedDict[str, int | None] = OrderedDict()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> DynamoDBStore:
        env = dict(os.environ if env is None else env)
        try:
            table = env["STATE_TABLE"]
        except KeyError:
            raise StoreError("STATE_TABLE is not set: name the DynamoDB table to use") from None
        days = float(env.get("EVENT_KEY_TTL_DAYS", "90"))
        return cls(table, claim_ttl=timedelta(days=days))

    @classmethod
    def from_url(cls, url: str) -> DynamoDBStore:
        """A store named `dynamodb://TABLE[?region=REGION]` (the command line's `--store`);
        credentials come from the usual AWS chain. A malformed URL raises `ValueError`."""
        parts = urlsplit(url)
        query = parse_qs(parts.query, keep_blank_values=True)
        table = parts.netloc
        if parts.scheme != "dynamodb" or parts.path not in ("", "/") or parts.fragment:
            raise ValueError(f"expected dynamodb://TABLE[?region=REGION], got {url!r}")
        if not _TABLE_NAME.fullmatch(table):
            raise ValueError(f"{url!r}: a DynamoDB table name is 3-255 of a-z A-Z 0-9 _ - .")
        unknown = sorted(set(query) - {"region"})
        if unknown or any(len(v) != 1 or not v[0] for v in query.values()):
            raise ValueError(f"{url!r}: the only option is region=REGION (once)")
        region = query.get("region", [None])[0]
        try:
            client = boto3.client("dynamodb", region_name=region)
        except NoRegionError:
            raise StoreError(
                f"{url}: no AWS region: add ?region=REGION or set AWS_DEFAULT_REGION"
            ) from None
        return cls(table, client=client)

    def create_table(self) -> None:
        """For tests and local experiments; deployments get the table from serverless.yml."""
        self._call("create_table", **table_definition(self.table))

    # ---- reads -----------------------------------------------------------------------------

    def unseen(self, event_keys: Sequence[str]) -> set[str]:
        wanted = set(event_keys)
        now = int(self.clock().timestamp())
        for item in self._get_many([_claim_key(k) for k in wanted], "pk, expires_at"):
            if int(item.get("expires_at", {"N": str(now + 1)})["N"]) > now:
                wanted.discard(item["pk"]["S"].removeprefix("event#"))
        return wanted

    def get_contacts(self, contact_ids: Iterable[str]) -> dict[str, ContactState]:
        return self.get_versioned(contact_ids)[0]

    def get_versioned(
        self, contact_ids: Iterable[str]
    ) -> tuple[dict[str, ContactState], dict[str, int]]:
        keys = [{"pk": _s(shard_of(c)), "sk": _s(c)} for c in dict.fromkeys(contact_ids)]
        found: dict[str, ContactState] = {}
        versions: dict[str, int] = {}
        for item in self._get_many(keys):
            cid = item["sk"]["S"]
            state = found[cid] = contact_from(item)
            versions[cid] = _version_of(item)
            self._levels_read[(cid, versions[cid])] = _level(
                state.campaign_status, state.suppression_reason
            )
            while len(self._levels_read) > VERSION_CACHE:
                self._levels_read.popitem(last=False)
        return found, versions

    def iter_contacts(self, page_size: int = 5000) -> Iterator[list[ContactState]]:
        shards = [self._query_items(f"contact#{n:02d}") for n in range(SHARDS)]
        merged = heapq.merge(*shards, key=lambda item: item["sk"]["S"])
        while page := list(itertools.islice(merged, page_size)):
            yield [contact_from(item) for item in page]

    def due_contacts(self, now: datetime, after: str = "", limit: int = 5000) -> list[str]:
        # The GSI is eventually consistent: a contact just written may show its old due time.
        # That is harmless: the tick re-reads the state and does nothing if nothing is due.
        ids: list[str] = []
        for n in range(SHARDS):
            ids += [
                item["sk"]["S"]
                for item in self._paged_query(
                    IndexName=DUE_INDEX,
                    KeyConditionExpression="due_pk = :p AND next_due <= :now",
                    ExpressionAttributeValues={
                        ":p": _s(f"contact#{n:02d}"),
                        ":now": _s(sortable(now)),
                    },
                )
            ]
        return sorted(i for i in ids if i > after)[:limit]

    def count_contacts(self) -> int:
        total = 0
        for n in range(SHARDS):
            for page in self._pages(
                KeyConditionExpression="pk = :p",
                ExpressionAttributeValues={":p": _s(f"contact#{n:02d}")},
                Select="COUNT",
            ):
                total += page["Count"]
        return total

    def get_cursors(self, names: Iterable[str]) -> dict[str, str]:
        wanted = list(dict.fromkeys(names))
        found: dict[str, str] = {}
        versions: dict[str, int | None] = dict.fromkeys(wanted)
        for item in self._get_many([_cursor_key(n) for n in wanted]):
            name = item["pk"]["S"].removeprefix("cursor#")
            found[name] = item["value"]["S"]
            versions[name] = int(item["version"]["N"])
        for name, version in versions.items():
            self._remember(name, version)
        return found

    def histories(self, contact_ids: Iterable[str]) -> dict[str, ContactHistory]:
        keys = [_history_key(c) for c in dict.fromkeys(contact_ids)]
        return {
            cid: history_from_json(cid, item["body"]["S"])
            for item in self._get_many(keys)
            for cid in [item["pk"]["S"].removeprefix("history#")]
        }

    def ledger_for(self, contact_id: str) -> list[Decision]:
        return [decision_from(item) for item in self._query_items(f"ledger#{contact_id}")]

    # ---- the ledger reader (core.ledger_reader): counters and one contact's partition -----

    def contact_decisions(self, contact_id: str) -> list[Decision]:
        return self.ledger_for(contact_id)

    def contact_now(self, contact_id: str) -> ContactState | None:
        return self.get_contacts([contact_id]).get(contact_id)

    def rollup(self, since: datetime | None = None) -> list[RollupRow]:
        """The roll-up counters summed over their shards and the packed months, in key order.
        The counters are per UTC day, so `since` must be a midnight UTC (`WindowError`
        otherwise)."""
        day = None
        if since is not None:
            start = since.astimezone(UTC)
            if start != start.replace(hour=0, minute=0, second=0, microsecond=0):
                raise WindowError(
                    f"the DynamoDB store counts decisions by whole UTC days: give a --since at "
                    f"midnight UTC (such as {start.date().isoformat()}T00:00:00Z), not "
                    f"{start.isoformat()}"
                )
            day = start.date().isoformat()
        totals = self._rollup_totals(day)
        rows = [(*json.loads(dims), n) for dims, n in totals.items() if n]
        rows.sort(key=lambda row: row[:9])
        return rows

    def _rollup_totals(self, since_day: str | None) -> dict[str, int]:
        """Day counters and packed months summed by dims, as one consistent cut: a fold moves
        counts from day items into a packed item in one transaction, so the packed items are
        read, then the day counters, then the packed items' stamps again; a fold in between
        (a stamp moved) means reading again."""
        values = {} if since_day is None else {":day": _s(since_day)}
        condition = "pk = :p" + ("" if since_day is None else " AND sk >= :day")
        for _ in range(FOLD_READ_ATTEMPTS):
            totals: dict[str, int] = {}
            stamps = self._add_packed(totals, since_day)
            for item in self._counter_items("rollup", condition, values):
                dims = item["dims"]["S"]
                totals[dims] = totals.get(dims, 0) + int(item["n"]["N"])
            if self._packed_stamps(since_day) == stamps:
                return totals
        raise StoreError(f"DynamoDB {self.table}: the roll-up kept being compacted while read")

    def _packed_query(self, since_day: str | None, projection: str) -> Iterator[Item]:
        condition, values = "pk = :p", {":p": _s(PACKED_PK)}
        if since_day is not None:  # the month holding `since_day` on
            condition += " AND sk >= :month"
            values[":month"] = _s(since_day[:7])
        return self._paged_query(
            KeyConditionExpression=condition,
            ExpressionAttributeValues=values,
            ProjectionExpression=projection,
        )

    def _add_packed(self, totals: dict[str, int], since_day: str | None) -> dict[str, int]:
        """Add the packed months' counts (from `since_day` on) to `totals`; their stamps."""
        stamps: dict[str, int] = {}
        for item in self._packed_query(since_day, "sk, packed, used_bytes"):
            stamps[item["sk"]["S"]] = int(item.get("used_bytes", {"N": "0"})["N"])
            for dims, n in item.get("packed", {}).get("M", {}).items():
                if since_day is not None and dims[2:12] < since_day:
                    continue  # dims JSON starts with the day: `["YYYY-MM-DD",...`
                totals[dims] = totals.get(dims, 0) + int(n["N"])
        return stamps

    def _packed_stamps(self, since_day: str | None) -> dict[str, int]:
        return {
            item["sk"]["S"]: int(item.get("used_bytes", {"N": "0"})["N"])
            for item in self._packed_query(since_day, "sk, used_bytes")
        }

    # ---- roll-up compaction: closed days folded into packed months --------------------------

    def compact_rollup(self, now: datetime | None = None) -> int:
        """Fold the roll-up counters of closed days (before `now` less `CLOSED_AFTER`) into
        one packed item per month (`rollpack` / `<YYYY-MM>#<part>`), so a report reads about a
        dozen items a year plus the recent days' counters. Returns how many counter items were
        folded.

        Exactly once, whatever runs at the same time: each transaction adds a few dozen day
        counters' counts to the packed item and deletes those counters on the condition that
        their count is still the one read, so a writer adding to one meanwhile cancels it (the
        counter stays, to be folded by a later run). A day is not strictly closed: a replay, or
        a time rule decided after an outage, can still date a decision weeks back. Its `ADD`
        then makes the day counter anew, and readers sum packed months and day counters alike,
        so nothing is lost. A packed item holds at most `PACK_BYTES` (DynamoDB's limit is 400 KB
        an item): a fold that would overfill it fails its condition and goes to the next part."""
        now = self.clock() if now is None else now
        cutoff = (now.astimezone(UTC) - CLOSED_AFTER).date().isoformat()
        by_month: dict[str, list[Item]] = {}
        for n in range(ROLLUP_SHARDS):
            for item in self._paged_query(
                KeyConditionExpression="pk = :p AND sk < :cut",
                ExpressionAttributeValues={":p": _s(f"rollup#{n:02d}"), ":cut": _s(cutoff)},
                ProjectionExpression="pk, sk, dims, n",
            ):
                by_month.setdefault(item["sk"]["S"][:7], []).append(item)
        folded = 0
        for month, items in sorted(by_month.items()):
            folded += self._fold_month(month, items)
        return folded

    def _fold_month(self, month: str, items: list[Item]) -> int:
        parts = sorted(
            item["sk"]["S"]
            for item in self._paged_query(
                KeyConditionExpression="pk = :p AND begins_with(sk, :m)",
                ExpressionAttributeValues={":p": _s(PACKED_PK), ":m": _s(f"{month}#")},
                ProjectionExpression="sk",
            )
        )
        part = int(parts[-1].rpartition("#")[2]) if parts else 0
        made = set(parts)
        # In key order across the shards: a counter's items on several shards fold together.
        items.sort(key=lambda item: item["sk"]["S"])
        folded = 0
        for start in range(0, len(items), FOLD_ITEMS):
            chunk = items[start : start + FOLD_ITEMS]
            while True:
                key = {"pk": _s(PACKED_PK), "sk": _s(f"{month}#{part:03d}")}
                outcome = self._fold(key, chunk, made)
                if outcome != "full":
                    break
                part += 1
                if part >= MAX_PACK_PARTS:
                    raise StoreError(
                        f"DynamoDB {self.table}: roll-up month {month} overflows "
                        f"{MAX_PACK_PARTS} packed items"
                    )
            folded += len(chunk) if outcome == "folded" else 0
        return folded

    def _fold(self, key: Item, chunk: list[Item], made: set[str]) -> str:
        """One transaction: the chunk's counts added to the packed item `key`, the chunk's
        counters deleted if unchanged. "folded", "full" (the packed item has no room) or
        "moved" (a counter changed or another fold raced: left for a later run). `made`: the
        packed items known to exist."""
        totals: dict[str, int] = {}
        for item in chunk:
            dims = item["dims"]["S"]
            totals[dims] = totals.get(dims, 0) + int(item["n"]["N"])
        cost = sum(len(dims.encode()) + PACK_ENTRY_BYTES for dims in totals)
        if key["sk"]["S"] not in made:
            # The packed item must exist, with its map, before entries can be set in it.
            empty = {**key, "packed": {"M": {}}, "used_bytes": _n(0)}
            try:
                self.db.put_item(
                    TableName=self.table, Item=empty, ConditionExpression="attribute_not_exists(pk)"
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise StoreError(f"DynamoDB {self.table}: {exc}") from exc
            made.add(key["sk"]["S"])
        names = {"#b": "used_bytes"}
        values: dict[str, Any] = {":z": _n(0), ":cost": _n(cost), ":room": _n(PACK_BYTES - cost)}
        sets = []
        for i, (dims, n) in enumerate(totals.items()):
            names[f"#k{i}"], values[f":v{i}"] = dims, _n(n)
            sets.append(f"packed.#k{i} = if_not_exists(packed.#k{i}, :z) + :v{i}")
        ops: list[Op] = [
            {
                "Update": {
                    "TableName": self.table,
                    "Key": key,
                    "UpdateExpression": "SET " + ", ".join(sets) + " ADD #b :cost",
                    "ConditionExpression": "#b <= :room",
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                }
            }
        ]
        for item in chunk:
            ops.append(
                {
                    "Delete": {
                        "TableName": self.table,
                        "Key": {"pk": item["pk"], "sk": item["sk"]},
                        "ConditionExpression": "n = :seen",
                        "ExpressionAttributeValues": {":seen": item["n"]},
                    }
                }
            )
        try:
            self.db.transact_write_items(TransactItems=ops)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise StoreError(f"DynamoDB {self.table}: {exc}") from exc
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if reasons and reasons[0] == "ConditionalCheckFailed":
                return "full"
            return "moved"
        except BotoCoreError as exc:
            raise StoreError(f"DynamoDB {self.table}: {exc}") from exc
        return "folded"

    def contact_levels(self) -> dict[tuple[str, str | None], int]:
        totals: dict[tuple[str, str | None], int] = {}
        for item in self._counter_items("levels", "pk = :p", {}):
            status, reason = json.loads(item["dims"]["S"])
            totals[(status, reason)] = totals.get((status, reason), 0) + int(item["n"]["N"])
        return {key: n for key, n in totals.items() if n}

    def policy_notes(self) -> dict[str, str]:
        return {item["sk"]["S"]: item["value"]["S"] for item in self._query_items("notes")}

    def quality_counts(self) -> dict[str, int]:
        return {"quarantined_events": self.quarantine_count(), **self.marked_counts()}

    def _counter_items(self, kind: str, condition: str, values: dict[str, Any]) -> Iterator[Item]:
        for n in range(ROLLUP_SHARDS):
            yield from self._paged_query(
                KeyConditionExpression=condition,
                ExpressionAttributeValues={":p": _s(f"{kind}#{n:02d}"), **values},
                ProjectionExpression="dims, n",
            )

    def inbox_take(self, limit: int, partition: str | None = None) -> list[Event]:
        where: tuple[str, Item] | None = None
        if partition == "":
            where = ("attribute_not_exists(part) OR part = :part", {":part": _s("")})
        elif partition is not None:
            where = ("part = :part", {":part": _s(partition)})
        items = self._ordered("inbox", limit, where=where)
        events, unreadable = read_inbox_bodies((i["sk"]["S"], i["body"]["S"]) for i in items)
        if unreadable:
            self.inbox_quarantine(unreadable)
        return events

    def quarantined(self, limit: int = 1000) -> list[Quarantined]:
        return [
            Quarantined(
                i["sk"]["S"], i["body"]["S"], i["reason"]["S"], datetime.fromisoformat(i["at"]["S"])
            )
            for i in self._ordered("quarantine", limit)
        ]

    def quarantine_count(self) -> int:
        return sum(
            page["Count"]
            for page in self._pages(
                KeyConditionExpression="pk = :p",
                ExpressionAttributeValues={":p": _s("quarantine")},
                Select="COUNT",
            )
        )

    def marked_counts(self) -> dict[str, int]:
        return {
            measure: sum(
                page["Count"]
                for page in self._pages(
                    KeyConditionExpression="pk = :p",
                    ExpressionAttributeValues={":p": _s(f"quality#{measure}")},
                    Select="COUNT",
                )
            )
            for measure in QUALITY_MEASURES
        }

    def outbox_take(self, limit: int, kind: OwedKind | None = None) -> list[OwedWrite]:
        items = self._ordered("outbox", limit, kind.prefix if kind else "")
        return [_owed(item) for item in items]

    def outbox_owed(self, keys: Iterable[str]) -> set[str]:
        wanted = [{"pk": _s("outbox"), "sk": _s(k)} for k in dict.fromkeys(keys)]
        return {item["sk"]["S"] for item in self._get_many(wanted, "sk")}

    def outbox_claim(
        self, limit: int, kind: OwedKind | None = None, lease: timedelta = OUTBOX_LEASE
    ) -> list[ClaimedWrite]:
        prefix = kind.prefix if kind else ""
        holder = secrets.token_hex(8)
        for _ in range(OUTBOX_ATTEMPTS):
            now = self.clock()
            free = (
                "attribute_not_exists(leased_until) OR leased_until <= :now",
                {":now": _n(int(now.timestamp()))},
            )
            items = self._ordered("outbox", limit, prefix, where=free)
            if not items:
                return []
            until = _n(int((now + lease).timestamp()))
            taken: list[Item] = []
            for start in range(0, len(items), TRANSACTION_LIMIT):
                chunk = items[start : start + TRANSACTION_LIMIT]
                try:
                    self._transact([self._lease_op(item, holder, until, now) for item in chunk])
                except ConflictError:
                    continue  # another flusher took one of these first
                taken += chunk
            if taken:
                return [ClaimedWrite(_owed(item), item["seq"]["S"], holder) for item in taken]
        return []  # others are flushing these; they stay owed

    def _lease_op(self, item: Item, holder: str, until: dict[str, str], now: datetime) -> Op:
        return {
            "Update": {
                "TableName": self.table,
                "Key": {"pk": item["pk"], "sk": item["sk"]},
                "UpdateExpression": "SET holder = :h, leased_until = :until",
                "ConditionExpression": (
                    "seq = :seq AND (attribute_not_exists(leased_until) OR leased_until <= :now)"
                ),
                "ExpressionAttributeValues": {
                    ":h": _s(holder),
                    ":until": until,
                    ":seq": item["seq"],
                    ":now": _n(int(now.timestamp())),
                },
            }
        }

    def outbox_release(self, owed: Sequence[ClaimedWrite]) -> None:
        for write in {o.key: o for o in owed}.values():
            try:
                self.db.update_item(**self._release_op(write)["Update"])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise StoreError(f"DynamoDB {self.table}: {exc}") from exc
            except BotoCoreError as exc:
                raise StoreError(f"DynamoDB {self.table}: {exc}") from exc

    def _release_op(self, owed: ClaimedWrite) -> Op:
        return {
            "Update": {
                "TableName": self.table,
                "Key": {"pk": _s("outbox"), "sk": _s(owed.key)},
                "UpdateExpression": "REMOVE holder, leased_until",
                "ConditionExpression": "holder = :h",
                "ExpressionAttributeValues": {":h": _s(owed.holder)},
            }
        }

    def _finish_owed(self, done: Sequence[ClaimedWrite]) -> None:
        """Remove the owed writes a flusher did, each only if no newer write replaced it
        (then only its lease is released). A transaction of conditional removals: a newer write
        landing between the look and the removal cancels it, and the next round sees it."""
        pending = {o.key: o for o in done}
        keys = [{"pk": _s("outbox"), "sk": _s(k)} for k in pending]
        for _ in range(OUTBOX_ATTEMPTS):
            ops: list[Op] = []
            for item in self._get_many(keys, "sk, seq, holder"):
                owed = pending[item["sk"]["S"]]
                if item["seq"]["S"] == owed.version:
                    ops.append(
                        {
                            "Delete": {
                                "TableName": self.table,
                                "Key": {"pk": _s("outbox"), "sk": item["sk"]},
                                "ConditionExpression": "seq = :seq",
                                "ExpressionAttributeValues": {":seq": _s(owed.version)},
                            }
                        }
                    )
                elif item.get("holder", {}).get("S") == owed.holder:
                    ops.append(self._release_op(owed))
            try:
                for start in range(0, len(ops), TRANSACTION_LIMIT):
                    self._transact(ops[start : start + TRANSACTION_LIMIT])
            except ConflictError:
                continue
            return
        raise ConflictError("owed writes kept changing while being marked done")

    # ---- writes ----------------------------------------------------------------------------

    def inbox_put(self, events: Sequence[Event], partition: str = "") -> int:
        new = self.unseen([e.event_id for e in events])
        recorded = 0
        for event in {e.event_id: e for e in events if e.event_id in new}.values():
            ops = [
                {
                    "ConditionCheck": {
                        "TableName": self.table,
                        "Key": _claim_key(event.event_id),
                        **self._claim_condition(),
                    }
                },
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": {
                            "pk": _s("inbox"),
                            "sk": _s(event.event_id),
                            "seq": _s(self._seq.next()),
                            "body": _s(EVENT.dump_json(event).decode()),
                            "part": _s(partition),
                        },
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
            ]
            try:
                self._transact(ops)
                recorded += 1
            except ConflictError:
                continue  # already queued or processed meanwhile
        return recorded

    def inbox_quarantine(self, entries: Sequence[Quarantined]) -> None:
        keys = [{"pk": _s("inbox"), "sk": _s(entry.key)} for entry in entries]
        # The entry keeps its inbox partition, so a release gives it back to the same runner.
        parts = {i["sk"]["S"]: i["part"] for i in self._get_many(keys, "sk, part") if "part" in i}
        for entry in entries:
            item: Item = {
                "pk": _s("quarantine"),
                "sk": _s(entry.key),
                "seq": _s(self._seq.next()),
                "body": _s(entry.body),
                "reason": _s(entry.reason[:QUARANTINE_REASON_CHARS]),
                "at": _s(_iso(entry.at)),
            }
            if entry.key in parts:
                item["part"] = parts[entry.key]
            self._transact(
                [
                    {
                        "Delete": {
                            "TableName": self.table,
                            "Key": {"pk": _s("inbox"), "sk": _s(entry.key)},
                        }
                    },
                    {"Put": {"TableName": self.table, "Item": item}},
                ]
            )

    def quarantine_release(self, keys: Sequence[str] | None = None) -> int:
        wanted = None if keys is None else set(keys)
        moved = 0
        for item in list(self._query_items("quarantine")):
            key = item["sk"]["S"]
            if wanted is not None and key not in wanted:
                continue
            inbox: Item = {
                "pk": _s("inbox"),
                "sk": _s(key),
                "seq": _s(self._seq.next()),
                "body": item["body"],
            }
            if "part" in item:
                inbox["part"] = item["part"]
            self._transact(
                [
                    {"Put": {"TableName": self.table, "Item": inbox}},
                    {
                        "Delete": {
                            "TableName": self.table,
                            "Key": {"pk": _s("quarantine"), "sk": _s(key)},
                        }
                    },
                ]
            )
            moved += 1
        return moved

    def commit(self, batch: Batch) -> None:
        if batch.is_empty():
            return
        parts = list(self._packed(self._groups(batch)))
        if len(parts) == 1:
            self._transact(parts[0])
        elif parts:
            # Answer a lost race before writing anything, as the one-transaction path does.
            claimed = set(batch.event_keys) - self.unseen(batch.event_keys)
            if claimed:
                raise ConflictError(f"{len(claimed)} event(s) of this batch were already claimed")
            expected = batch.expected_versions
            _, versions = self.get_versioned(expected)
            if any(versions.get(cid) != version for cid, version in expected.items()):
                raise ConflictError("a contact of this batch changed since it was read")
            for ops in parts:
                self._transact(ops)
        if batch.outbox_done:
            self._finish_owed(batch.outbox_done)
        for name in batch.cursors:
            if name in self._versions and self._versions[name] is not None:
                self._remember(name, self._versions[name] + 1)  # type: ignore[operator]
            elif name in self._versions:
                self._remember(name, 1)

    def _groups(self, batch: Batch) -> list[_Group]:
        """Orphan claims, then one group per contact, then the tail (see the module doc)."""
        now = self.clock()
        keys = list(dict.fromkeys(batch.event_keys))
        contacts = {
            s.contact_id: (s, d) for s, d in zip(batch.contacts, batch.next_due, strict=True)
        }
        decided: dict[str, list[Decision]] = {}
        for decision in batch.decisions:
            decided.setdefault(decision.contact_id, []).append(decision)
        rows = [decision_row(d) for d in batch.decisions]
        counted = iter(rollup_keys(batch.decisions, rows, batch.contacts))
        rollup_of = {id(d): _rollup_counter(next(counted)) for d in batch.decisions}
        cause_of = {d.cause: d.contact_id for d in batch.decisions}
        expected = batch.expected_versions
        histories = {h.contact_id: h for h in batch.histories}
        claimed = set(keys)
        for cid, history in histories.items():
            # An event that decided nothing still joined its contact's history: its claim
            # travels with that history.
            cause_of.update((e.event_id, cid) for e in history.events if e.event_id in claimed)
        per_contact: dict[str, _Group] = {
            c: _Group() for c in [*contacts, *decided, *expected, *histories]
        }
        orphans, tail = _Group(), _Group()
        for key in keys:
            op = {
                "Put": {
                    "TableName": self.table,
                    "Item": {
                        **_claim_key(key),
                        "expires_at": _n(int((now + self.claim_ttl).timestamp())),
                    },
                    **self._claim_condition(),
                }
            }
            (per_contact[cause_of[key]] if key in cause_of else orphans).add(op)
        for cid, (state, due) in contacts.items():
            per_contact[cid].add(
                self._contact_write(state, due, expected),
                self._level_moves(state, decided.get(cid, []), expected),
            )
        for cid in expected.keys() - contacts.keys():
            # Decided on but unchanged: the decision still rests on the version read.
            check = {"TableName": self.table, "Key": {"pk": _s(shard_of(cid)), "sk": _s(cid)}}
            check.update(_version_condition(expected[cid], {}, {}))
            per_contact[cid].add({"ConditionCheck": check})
        for cid, history in histories.items():
            item = {**_history_key(cid), "body": _s(history_json(history))}
            per_contact[cid].add({"Put": {"TableName": self.table, "Item": item}})
        for cid, decisions in decided.items():
            for decision in decisions:
                per_contact[cid].add(
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": ledger_item(decision, self._seq.next()),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    [(rollup_of[id(decision)], 1)],
                )
        for owed in {o.key: o for o in batch.outbox}.values():
            group = per_contact.get(owed.contact_id, tail)
            # An update, not a put: a flusher's lease on the key stays (see `outbox_claim`).
            group.add(
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": {"pk": _s("outbox"), "sk": _s(owed.key)},
                        "UpdateExpression": "SET payload = :p, seq = :seq, contact = :c",
                        "ExpressionAttributeValues": {
                            ":p": _s(owed.payload),
                            ":seq": _s(self._seq.next()),
                            ":c": _s(owed.contact_id),
                        },
                    }
                }
            )
        for key in dict.fromkeys(batch.inbox_done):
            tail.add(
                {"Delete": {"TableName": self.table, "Key": {"pk": _s("inbox"), "sk": _s(key)}}}
            )
        for measure, key in dict.fromkeys(batch.quality):
            item = {"pk": _s(f"quality#{measure}"), "sk": _s(key)}
            tail.add({"Put": {"TableName": self.table, "Item": item}})
        for name, value in batch.cursors.items():
            tail.add(self._cursor_update(name, value))
            if Cursors.is_note(name):  # reports list these without a scan
                note = {"pk": _s("notes"), "sk": _s(name), "value": _s(value)}
                tail.add({"Put": {"TableName": self.table, "Item": note}})
        return [g for g in (orphans, *per_contact.values(), tail) if g.ops]

    def _level_moves(
        self, state: ContactState, decisions: list[Decision], expected: dict[str, int | None]
    ) -> list[tuple[Counter, int]]:
        cid = state.contact_id
        if cid in expected:
            if expected[cid] is None:  # a new contact (the write checks it is still absent)
                return [(_level(state.campaign_status, state.suppression_reason), 1)]
            before = self._levels_read.get((cid, expected[cid]))  # type: ignore[arg-type]
            if before is not None:
                return _level_moves(state, decisions, before)
        return _level_moves(state, decisions)

    def _contact_write(
        self, state: ContactState, due: datetime | None, expected: dict[str, int | None]
    ) -> Op:
        """The contact's item, its version moved on; conditional on the version read if the
        batch lists it. An update keeps any attribute a later release adds."""
        pk = shard_of(state.contact_id)
        names = {"#state": "state", "#version": "version"}
        values = {":state": _s(_to_json(state)), ":zero": _n(0), ":one": _n(1)}
        update = "SET #state = :state, #version = if_not_exists(#version, :zero) + :one"
        if due is not None:
            # Only contacts with a pending time rule appear in the sparse `due` index.
            update += ", due_pk = :due_pk, next_due = :next_due"
            values[":due_pk"], values[":next_due"] = _s(pk), _s(sortable(due))
        else:
            update += " REMOVE due_pk, next_due"
        op: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"pk": _s(pk), "sk": _s(state.contact_id)},
            "UpdateExpression": update,
        }
        if state.contact_id in expected:
            op.update(_version_condition(expected[state.contact_id], names, values))
        op["ExpressionAttributeNames"], op["ExpressionAttributeValues"] = names, values
        return {"Update": op}

    def _packed(self, groups: list[_Group]) -> Iterator[list[Op]]:
        """Groups packed into transactions of at most `TRANSACTION_LIMIT` items (counter
        updates included) and `TRANSACTION_BYTES`; a group too big for one is split inside
        itself, its claims and state first (they were added first)."""
        ops: list[Op] = []
        moves: list[tuple[Counter, int]] = []
        counters: set[Counter] = set()
        size = 0

        def fits(n_ops: int, more: set[Counter], more_size: int) -> bool:
            return (
                len(ops) + n_ops + len(counters | more) <= TRANSACTION_LIMIT
                and size + more_size <= TRANSACTION_BYTES
            )

        for group in groups:
            mine = group.counters()
            if ops and not fits(len(group.ops), mine, group.size):
                yield ops + self._counter_updates(moves)
                ops, moves, counters, size = [], [], set(), 0
            if fits(len(group.ops), mine, group.size):
                ops += group.ops
                moves += [m for op_moves in group.moves for m in op_moves]
                counters |= mine
                size += group.size
                continue
            for op, op_moves in zip(group.ops, group.moves, strict=True):
                more = {c for c, _ in op_moves}
                op_size = len(json.dumps(op)) + sum(len(c[1]) + COUNTER_BYTES for c in more)
                if ops and not fits(1, more, op_size):
                    yield ops + self._counter_updates(moves)
                    ops, moves, counters, size = [], [], set(), 0
                ops.append(op)
                moves += op_moves
                counters |= more
                size += op_size
        if ops:
            yield ops + self._counter_updates(moves)

    def _counter_updates(self, moves: list[tuple[Counter, int]]) -> list[Op]:
        """One `ADD` per counter item these moves touch, on this store's counter shard."""
        totals: dict[Counter, int] = {}
        for counter, delta in moves:
            totals[counter] = totals.get(counter, 0) + delta
        shard = f"{self._counter_shard:02d}"
        updates: list[Op] = []
        for (kind, dims), delta in totals.items():
            if not delta:
                continue
            updates.append(
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": counter_key(kind, dims, shard),
                        "UpdateExpression": "SET dims = :dims ADD n :delta",
                        "ExpressionAttributeValues": {":dims": _s(dims), ":delta": _n(delta)},
                    }
                }
            )
        return updates

    def _claim_condition(self) -> dict[str, Any]:
        """A key can be claimed if nobody holds it, or its holder's TTL ran out (DynamoDB
        deletes expired items only within a day or two, so expiry is checked here too)."""
        return {
            "ConditionExpression": "attribute_not_exists(pk) OR expires_at < :now",
            "ExpressionAttributeValues": {":now": _n(int(self.clock().timestamp()))},
        }

    def _cursor_update(self, name: str, value: str) -> Op:
        update: dict[str, Any] = {
            "TableName": self.table,
            "Key": _cursor_key(name),
            "UpdateExpression": "SET #v = :v, version = if_not_exists(version, :zero) + :one",
            "ExpressionAttributeNames": {"#v": "value"},
            "ExpressionAttributeValues": {":v": _s(value), ":zero": _n(0), ":one": _n(1)},
        }
        if name in self._versions:
            seen = self._versions[name]
            if seen is None:
                update["ConditionExpression"] = "attribute_not_exists(pk)"
            else:
                update["ConditionExpression"] = "version = :seen"
                update["ExpressionAttributeValues"][":seen"] = _n(seen)
        return {"Update": update}

    def _remember(self, name: str, version: int | None) -> None:
        self._versions[name] = version
        self._versions.move_to_end(name)
        while len(self._versions) > VERSION_CACHE:
            # Forgetting a version only drops the check for that cursor, never a write.
            self._versions.popitem(last=False)

    # ---- DynamoDB plumbing -----------------------------------------------------------------

    def _transact(self, ops: list[Op]) -> None:
        try:
            self.db.transact_write_items(TransactItems=ops)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "TransactionCanceledException":
                reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
                if not reasons:  # some clients only put the reasons in the message
                    message = str(exc)
                    reasons = [
                        c for c in ("ConditionalCheckFailed", "TransactionConflict") if c in message
                    ]
                if "TransactionConflict" in reasons:  # maybe on a counter: move to another
                    self._counter_shard = secrets.randbelow(ROLLUP_SHARDS)
                if {"ConditionalCheckFailed", "TransactionConflict"} & set(reasons):
                    raise ConflictError(
                        "another writer claimed an event or moved a cursor first"
                    ) from exc
            raise StoreError(f"DynamoDB {self.table}: {code or exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"DynamoDB {self.table}: {exc}") from exc

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return getattr(self.db, method)(**kwargs)
        except NoCredentialsError as exc:
            raise StoreError(
                f"DynamoDB {self.table}: no AWS credentials found (set AWS_PROFILE, or "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run `aws sso login`)"
            ) from exc
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                region = self.db.meta.region_name
                raise StoreError(f"DynamoDB table {self.table!r} not found in {region}") from exc
            raise StoreError(f"DynamoDB {self.table} {method}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"DynamoDB {self.table} {method}: {exc}") from exc

    def _get_many(self, keys: list[Item], projection: str | None = None) -> Iterator[Item]:
        for start in range(0, len(keys), BATCH_GET_LIMIT):
            request: dict[str, Any] = {
                "Keys": keys[start : start + BATCH_GET_LIMIT],
                "ConsistentRead": True,
            }
            if projection:
                request["ProjectionExpression"] = projection
            pending = {self.table: request}
            for attempt in range(8):
                answer = self._call("batch_get_item", RequestItems=pending)
                yield from answer.get("Responses", {}).get(self.table, [])
                pending = answer.get("UnprocessedKeys") or {}
                if not pending:
                    break
                time.sleep(min(0.05 * 2**attempt, 1.0))  # throttled: back off, then re-ask
            else:
                raise StoreError(f"DynamoDB {self.table}: reads still throttled after retries")

    def _pages(self, **query: Any) -> Iterator[dict[str, Any]]:
        query = {"TableName": self.table, **query}
        if query.get("IndexName") != DUE_INDEX:
            query["ConsistentRead"] = True  # a GSI cannot give consistent reads
        while True:
            page = self._call("query", **query)
            yield page
            if "LastEvaluatedKey" not in page:
                return
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _paged_query(self, **query: Any) -> Iterator[Item]:
        for page in self._pages(**query):
            yield from page.get("Items", [])

    def _query_items(self, pk: str) -> Iterator[Item]:
        return self._paged_query(
            KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": _s(pk)}
        )

    def _ordered(
        self, pk: str, limit: int, prefix: str = "", where: tuple[str, Item] | None = None
    ) -> list[Item]:
        query: dict[str, Any] = {
            "IndexName": ORDER_INDEX,
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": _s(pk)},
            "Limit": max(limit, 1),
        }
        # Limit counts items before a filter, so keep paging until enough pass it.
        filters = []
        if prefix:
            filters.append("begins_with(sk, :prefix)")
            query["ExpressionAttributeValues"][":prefix"] = _s(prefix)
        if where is not None:
            filters.append(f"({where[0]})")
            query["ExpressionAttributeValues"].update(where[1])
        if filters:
            query["FilterExpression"] = " AND ".join(filters)
        found: list[Item] = []
        for item in self._paged_query(**query):
            found.append(item)
            if len(found) >= limit:
                break
        return found
