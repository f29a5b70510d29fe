"""The `Store` on one DynamoDB table (the serverless deployment's store).

Single-table layout, partition key `pk` and sort key `sk` (both strings):

| item            | pk                   | sk          | notes                                   |
|-----------------|----------------------|-------------|-----------------------------------------|
| event claim     | `event#<key>`        | `claim`     | `expires_at` is the table's TTL         |
| contact state   | `contact#<shard>`    | contact id  | `state` JSON; `due_pk`/`next_due` feed  |
|                 |                      |             | the sparse `due` GSI                    |
| ledger line     | `ledger#<contact>`   | `<seq>`     | `decision` JSON; put-if-absent only     |
| cursor          | `cursor#<name>`      | `cursor`    | `version` checked on every update       |
| inbox event     | `inbox`              | event id    | `seq` orders it (LSI `order`)           |
| owed CRM write  | `outbox`             | key         | `seq` orders it (LSI `order`)           |
| quarantined     | `quarantine`         | event id    | `seq` orders it; `body`, `reason`, `at` |

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
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from core.models import CONTACT_STATE, DECISION, EVENT, ContactState, Decision, Event
from core.store import (
    QUARANTINE_REASON_CHARS,
    Batch,
    ConflictError,
    Quarantined,
    Store,
    StoreError,
    read_inbox_bodies,
)

SHARDS = 16
"""Fixed for the life of a table: a contact's partition is derived from it."""
TRANSACTION_LIMIT = 100
TRANSACTION_BYTES = 3_500_000  # DynamoDB allows 4 MB per transaction; keep a margin
BATCH_GET_LIMIT = 100
VERSION_CACHE = 100_000
DUE_INDEX, ORDER_INDEX = "due", "order"

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
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                      {"AttributeName": "sk", "KeyType": "RANGE"}],
        "GlobalSecondaryIndexes": [{
            "IndexName": DUE_INDEX,
            "KeySchema": [{"AttributeName": "due_pk", "KeyType": "HASH"},
                          {"AttributeName": "next_due", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
        }],
        "LocalSecondaryIndexes": [{
            "IndexName": ORDER_INDEX,
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                          {"AttributeName": "seq", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"},
        }],
    }  # fmt: skip


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
        default=_encode, sort_keys=True, separators=(",", ":"),
    )  # fmt: skip


def contact_item(state: ContactState, due: datetime | None) -> Item:
    pk = shard_of(state.contact_id)
    item: Item = {"pk": _s(pk), "sk": _s(state.contact_id), "state": _s(_to_json(state))}
    if due is not None:
        # Only contacts with a pending time rule appear in the sparse `due` index.
        item["due_pk"], item["next_due"] = _s(pk), _s(sortable(due))
    return item


def contact_from(item: Item) -> ContactState:
    return CONTACT_STATE.validate_python(json.loads(item["state"]["S"]))


def ledger_item(decision: Decision, seq: str) -> Item:
    return {
        "pk": _s(f"ledger#{decision.contact_id}"), "sk": _s(seq),
        "decision": _s(_to_json(decision)),
    }  # fmt: skip


def decision_from(item: Item) -> Decision:
    return DECISION.validate_python(json.loads(item["decision"]["S"]))


def _claim_key(key: str) -> Item:
    return {"pk": _s(f"event#{key}"), "sk": _s("claim")}


def _cursor_key(name: str) -> Item:
    return {"pk": _s(f"cursor#{name}"), "sk": _s("cursor")}


def _contact_in(key: str, contact_ids: set[str]) -> str | None:
    """The contact an owed-write key names: the runner keys them `<kind>:<contact id>[:...]`."""
    _, _, rest = key.partition(":")
    if rest in contact_ids:
        return rest
    head = rest
    while ":" in head:
        head = head.rpartition(":")[0]
        if head in contact_ids:
            return head
    return None


class _Group:
    """Operations that must land in the same transaction, and why they might fail."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.size = 0

    def add(self, op: Op) -> None:
        self.ops.append(op)
        self.size += len(json.dumps(op))


class DynamoDBStore(Store):
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
        keys = [{"pk": _s(shard_of(c)), "sk": _s(c)} for c in dict.fromkeys(contact_ids)]
        return {item["sk"]["S"]: contact_from(item) for item in self._get_many(keys)}

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
                    },  # fmt: skip
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

    def ledger_for(self, contact_id: str) -> list[Decision]:
        return [decision_from(item) for item in self._query_items(f"ledger#{contact_id}")]

    def inbox_take(self, limit: int) -> list[Event]:
        items = self._ordered("inbox", limit)
        events, unreadable = read_inbox_bodies((i["sk"]["S"], i["body"]["S"]) for i in items)
        if unreadable:
            self.inbox_quarantine(unreadable)
        return events

    def quarantined(self, limit: int = 1000) -> list[Quarantined]:
        return [
            Quarantined(i["sk"]["S"], i["body"]["S"], i["reason"]["S"],
                        datetime.fromisoformat(i["at"]["S"]))
            for i in self._ordered("quarantine", limit)
        ]  # fmt: skip

    def quarantine_count(self) -> int:
        return sum(
            page["Count"]
            for page in self._pages(
                KeyConditionExpression="pk = :p",
                ExpressionAttributeValues={":p": _s("quarantine")},
                Select="COUNT",
            )
        )

    def outbox_take(self, limit: int, prefix: str = "") -> list[tuple[str, str]]:
        items = self._ordered("outbox", limit, prefix)
        return [(item["sk"]["S"], item["payload"]["S"]) for item in items]

    # ---- writes ----------------------------------------------------------------------------

    def inbox_put(self, events: Sequence[Event]) -> int:
        new = self.unseen([e.event_id for e in events])
        recorded = 0
        for event in {e.event_id: e for e in events if e.event_id in new}.values():
            ops = [
                {"ConditionCheck": {"TableName": self.table, "Key": _claim_key(event.event_id),
                                    **self._claim_condition()}},
                {"Put": {"TableName": self.table, "Item": {
                    "pk": _s("inbox"), "sk": _s(event.event_id), "seq": _s(self._seq.next()),
                    "body": _s(EVENT.dump_json(event).decode())},
                    "ConditionExpression": "attribute_not_exists(pk)"}},
            ]  # fmt: skip
            try:
                self._transact(ops)
                recorded += 1
            except ConflictError:
                continue  # already queued or processed meanwhile
        return recorded

    def inbox_quarantine(self, entries: Sequence[Quarantined]) -> None:
        for entry in entries:
            self._transact([
                {"Delete": {"TableName": self.table,
                            "Key": {"pk": _s("inbox"), "sk": _s(entry.key)}}},
                {"Put": {"TableName": self.table, "Item": {
                    "pk": _s("quarantine"), "sk": _s(entry.key), "seq": _s(self._seq.next()),
                    "body": _s(entry.body), "reason": _s(entry.reason[:QUARANTINE_REASON_CHARS]),
                    "at": _s(_iso(entry.at))}}},
            ])  # fmt: skip

    def quarantine_release(self, keys: Sequence[str] | None = None) -> int:
        wanted = None if keys is None else set(keys)
        moved = 0
        for item in list(self._query_items("quarantine")):
            key = item["sk"]["S"]
            if wanted is not None and key not in wanted:
                continue
            self._transact([
                {"Put": {"TableName": self.table, "Item": {
                    "pk": _s("inbox"), "sk": _s(key), "seq": _s(self._seq.next()),
                    "body": item["body"]}}},
                {"Delete": {"TableName": self.table,
                            "Key": {"pk": _s("quarantine"), "sk": _s(key)}}},
            ])  # fmt: skip
            moved += 1
        return moved

    def commit(self, batch: Batch) -> None:
        if batch.is_empty():
            return
        groups = self._groups(batch)
        if (
            sum(len(g.ops) for g in groups) <= TRANSACTION_LIMIT
            and sum(g.size for g in groups) <= TRANSACTION_BYTES
        ):
            self._transact([op for g in groups for op in g.ops])
        else:
            # Answer a lost race before writing anything, as the one-transaction path does.
            claimed = set(batch.event_keys) - self.unseen(batch.event_keys)
            if claimed:
                raise ConflictError(f"{len(claimed)} event(s) of this batch were already claimed")
            for ops in self._packed(groups):
                self._transact(ops)
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
        cause_of = {d.cause: d.contact_id for d in batch.decisions}
        per_contact: dict[str, _Group] = {c: _Group() for c in [*contacts, *decided]}
        orphans, tail = _Group(), _Group()
        for key in keys:
            op = {"Put": {"TableName": self.table, "Item": {**_claim_key(key),
                  "expires_at": _n(int((now + self.claim_ttl).timestamp()))},
                  **self._claim_condition()}}  # fmt: skip
            (per_contact[cause_of[key]] if key in cause_of else orphans).add(op)
        for cid, (state, due) in contacts.items():
            per_contact[cid].add(
                {"Put": {"TableName": self.table, "Item": contact_item(state, due)}}
            )
        for cid, decisions in decided.items():
            for decision in decisions:
                per_contact[cid].add({"Put": {
                    "TableName": self.table, "Item": ledger_item(decision, self._seq.next()),
                    "ConditionExpression": "attribute_not_exists(pk)"}})  # fmt: skip
        names = set(per_contact)
        for key, payload in batch.outbox.items():
            owner = _contact_in(key, names)
            (per_contact[owner] if owner else tail).add({"Put": {"TableName": self.table, "Item": {
                "pk": _s("outbox"), "sk": _s(key), "seq": _s(self._seq.next()),
                "payload": _s(payload)}}})  # fmt: skip
        for key in dict.fromkeys(batch.outbox_done):
            if key not in batch.outbox:  # a newer owed write replaces it in the same batch
                tail.add({"Delete": {"TableName": self.table,
                                     "Key": {"pk": _s("outbox"), "sk": _s(key)}}})  # fmt: skip
        for key in dict.fromkeys(batch.inbox_done):
            tail.add(
                {"Delete": {"TableName": self.table, "Key": {"pk": _s("inbox"), "sk": _s(key)}}}
            )
        for name, value in batch.cursors.items():
            tail.add(self._cursor_update(name, value))
        return [g for g in (orphans, *per_contact.values(), tail) if g.ops]

    @staticmethod
    def _packed(groups: list[_Group]) -> Iterator[list[Op]]:
        chunk: list[Op] = []
        size = 0
        for group in groups:
            if chunk and (len(chunk) + len(group.ops) > TRANSACTION_LIMIT
                          or size + group.size > TRANSACTION_BYTES):  # fmt: skip
                yield chunk
                chunk, size = [], 0
            if len(group.ops) > TRANSACTION_LIMIT:
                # Claims and state were added first, so they land in the first part.
                for start in range(0, len(group.ops), TRANSACTION_LIMIT):
                    yield group.ops[start : start + TRANSACTION_LIMIT]
                continue
            chunk += group.ops
            size += group.size
        if chunk:
            yield chunk

    def _claim_condition(self) -> dict[str, Any]:
        """A key can be claimed if nobody holds it, or its holder's TTL ran out (DynamoDB
        deletes expired items only within a day or two, so expiry is checked here too)."""
        return {
            "ConditionExpression": "attribute_not_exists(pk) OR expires_at < :now",
            "ExpressionAttributeValues": {":now": _n(int(self.clock().timestamp()))},
        }

    def _cursor_update(self, name: str, value: str) -> Op:
        update: dict[str, Any] = {
            "TableName": self.table, "Key": _cursor_key(name),
            "UpdateExpression": "SET #v = :v, version = if_not_exists(version, :zero) + :one",
            "ExpressionAttributeNames": {"#v": "value"},
            "ExpressionAttributeValues": {":v": _s(value), ":zero": _n(0), ":one": _n(1)},
        }  # fmt: skip
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
                    reasons = [c for c in ("ConditionalCheckFailed", "TransactionConflict")
                               if c in message]  # fmt: skip
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
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"DynamoDB {self.table} {method}: {exc}") from exc

    def _get_many(self, keys: list[Item], projection: str | None = None) -> Iterator[Item]:
        for start in range(0, len(keys), BATCH_GET_LIMIT):
            request: dict[str, Any] = {"Keys": keys[start : start + BATCH_GET_LIMIT],
                                       "ConsistentRead": True}  # fmt: skip
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

    def _ordered(self, pk: str, limit: int, prefix: str = "") -> list[Item]:
        query: dict[str, Any] = {
            "IndexName": ORDER_INDEX, "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": _s(pk)}, "Limit": max(limit, 1),
        }  # fmt: skip
        if prefix:
            # Limit counts items before the filter, so keep paging until enough pass it.
            query["FilterExpression"] = "begins_with(sk, :prefix)"
            query["ExpressionAttributeValues"][":prefix"] = _s(prefix)
        found: list[Item] = []
        for item in self._paged_query(**query):
            found.append(item)
            if len(found) >= limit:
                break
        return found
