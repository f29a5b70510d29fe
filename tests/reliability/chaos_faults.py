"""What breaks in a chaos run, decided by one seeded generator so a run can be repeated.

- `ChaosHubSpot`: the fake HubSpot answering a share of requests with 429 + Retry-After, 5xx,
  or a timeout (the request is applied, the answer comes too late), and failing a share of
  the records in batch updates (207, a retriable category).
- `ChaosStore`: the store, killing the worker just before or just after a commit and dropping
  its connection once.
- `ChaosHubSpotConnector`: the connector, killing the worker before a read and after a write
  or task creation reached the CRM (the acknowledgement is lost with the process).
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crm_elasticity.connectors.base import CrmRecord, HandoffTask, WriteRequest, WriteResult
from crm_elasticity.connectors.hubspot import HubSpotConnector
from crm_elasticity.core.ledger_reader import RollupRow
from crm_elasticity.core.models import ContactState, Decision, Event
from crm_elasticity.core.owed import OwedKind, OwedWrite
from crm_elasticity.core.store import OUTBOX_LEASE, Batch, ClaimedWrite, Quarantined, Store
from tests.fakes.hubspot_server import ApiError, FakeHubSpot, RecordFailure

CONTACT_UPDATE = re.compile(r"/crm/v3/objects/contacts/batch/update$")


class Killed(BaseException):  # noqa: N818 - it is the process dying, not an error to handle
    """The worker process died here. BaseException: no `except Exception` may survive it."""


@dataclass
class FaultPlan:
    """Rates of each fault class; `counts` says how many of each actually happened."""

    seed: int = 7
    rate_429: float = 0.10
    rate_5xx: float = 0.05
    rate_timeout: float = 0.02
    rate_partial: float = 0.05
    kill_rate: float = 0.02
    """Per commit / CRM call: the chance the worker dies right there."""
    kill_idle_rate: float = 0.01
    """Per delivery: the chance the worker alone is killed while idle (the intake goes on)."""
    replace_store_rate: float = 0.002
    """Per delivery: the chance the store file is replaced by a consistent copy of itself."""
    poison_rate: float = 0.01
    """Per delivery: the chance a signed notification whose time is no real instant (year
    9999) comes too, alone (refused, 400) or inside the genuine batch (left out, the rest
    recorded)."""
    drop_connection_at: int | None = 40
    """The store's connection is closed at this commit (once)."""
    client_timeout: float = 0.5
    timeout_delay: float = 0.6
    """An injected timeout answers this late, past the client's timeout."""
    rival_flush_rate: float = 0.1
    """Per CRM write or task call: the chance another flusher on the same store (a `sync`
    beside the worker) flushes while this call is in flight."""
    rival: Callable[[], None] | None = None
    """That other flusher, set by the harness."""
    enabled: bool = True
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.lock = threading.Lock()
        self.operator_rng = random.Random(self.seed * 7919 + 3)
        """Draws for the faults done to `serve` from outside (a worker killed alone, the store
        replaced): their own stream, so adding them leaves the CRM faults' sequence as it was."""

    def roll_operator(self, rate: float) -> bool:
        if not self.enabled or rate <= 0:
            return False
        with self.lock:
            return self.operator_rng.random() < rate

    def roll(self, rate: float) -> bool:
        if not self.enabled or rate <= 0:
            return False
        with self.lock:
            return self.rng.random() < rate

    def http_fault(self) -> str | None:
        if not self.enabled:
            return None
        with self.lock:
            x = self.rng.random()
        for name, rate in (
            ("429", self.rate_429),
            ("5xx", self.rate_5xx),
            ("timeout", self.rate_timeout),
        ):
            if x < rate:
                return name
            x -= rate
        return None

    def sample(self, items: Sequence[str], rate: float) -> set[str]:
        with self.lock:
            return {i for i in items if self.rng.random() < rate}

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def rival_flush(self) -> None:
        # The first CRM call always meets a rival: a short run makes few calls, and with
        # draws shared across threads, a rate alone left some runs with none to check.
        first = not self.counts["rival_flushes"]
        if self.rival is not None and (first or self.roll(self.rival_flush_rate)):
            self.count("rival_flushes")
            self.rival()

    def kill(self, where: str) -> None:
        if self.roll(self.kill_rate):
            self.count("kills")
            self.count(f"kill:{where}")
            raise Killed(where)


class ChaosHubSpot(FakeHubSpot):
    def __init__(self, plan: FaultPlan, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        url = super().start(host, port)
        # A timed-out client has hung up: the late answer's broken pipe is expected noise.
        self.server.handle_error = lambda request, address: None  # type: ignore[union-attr]
        return url

    def handle(
        self, method: str, path: str, query: dict, headers: dict, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        plan = self.plan
        fault = plan.http_fault()
        if fault == "429":
            plan.count("http_429")
            error = ApiError(
                429,
                "You have reached your ten_secondly_rolling limit.",
                "RATE_LIMITS",
                policyName="TEN_SECONDLY_ROLLING",
            )
            return 429, error.body(), {"Retry-After": "1"}
        if fault == "5xx":
            plan.count("http_5xx")
            status = plan.rng.choice((500, 502, 503, 504))
            return status, ApiError(status, "injected server error", "INTERNAL_ERROR").body(), {}
        if method == "POST" and CONTACT_UPDATE.search(path) and isinstance(body, dict):
            ids = [str(i.get("id")) for i in body.get("inputs") or []]
            failing = plan.sample(ids, plan.rate_partial) if plan.enabled else set()
            if failing:
                plan.count("records_207", len(failing))
                with self.lock:
                    self.record_failures.append(RecordFailure(failing, "INTERNAL_ERROR"))
        answer = super().handle(method, path, query, headers, body)
        if fault == "timeout":
            # Applied, but the answer arrives after the client gave up: the worst kind.
            plan.count("http_timeout")
            time.sleep(plan.timeout_delay)
        return answer


class ChaosHubSpotConnector(HubSpotConnector):
    plan: FaultPlan

    def read_records(self, contact_ids: Sequence[str]) -> dict[str, CrmRecord]:
        self.plan.kill("before_read")
        return super().read_records(contact_ids)

    def write_records(self, requests: Sequence[WriteRequest]) -> WriteResult:
        self.plan.rival_flush()
        result = super().write_records(requests)
        self.plan.kill("after_crm_write")
        return result

    def create_tasks(self, tasks: Sequence[HandoffTask]) -> WriteResult:
        self.plan.rival_flush()
        result = super().create_tasks(tasks)
        self.plan.kill("after_task_create")
        return result


class ChaosStore(Store):
    """Delegates to a real store; dies around commits and drops the connection once."""

    def __init__(self, inner: Any, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan

    def commit(self, batch: Batch) -> None:
        plan = self.plan
        plan.count("commits")
        drop_at = plan.drop_connection_at
        if plan.enabled and drop_at is not None and plan.counts["commits"] >= drop_at:
            plan.drop_connection_at = None
            plan.count("connection_drops")
            self.inner._db.close()  # the next call on it fails with StoreError
        plan.kill("before_commit")
        self.inner.commit(batch)
        plan.kill("after_commit")

    def unseen(self, event_keys: Sequence[str]) -> set[str]:
        return self.inner.unseen(event_keys)

    def get_contacts(self, contact_ids: Iterable[str]) -> dict[str, ContactState]:
        return self.inner.get_contacts(contact_ids)

    def get_versioned(
        self, contact_ids: Iterable[str]
    ) -> tuple[dict[str, ContactState], dict[str, int]]:
        return self.inner.get_versioned(contact_ids)

    def iter_contacts(self, page_size: int = 5000) -> Iterator[list[ContactState]]:
        return self.inner.iter_contacts(page_size)

    def due_contacts(self, now: datetime, after: str = "", limit: int = 5000) -> list[str]:
        return self.inner.due_contacts(now, after, limit)

    def count_contacts(self) -> int:
        return self.inner.count_contacts()

    def get_cursors(self, names: Iterable[str]) -> dict[str, str]:
        return self.inner.get_cursors(names)

    def ledger_for(self, contact_id: str) -> list[Decision]:
        return self.inner.ledger_for(contact_id)

    def marked_counts(self) -> dict[str, int]:
        return self.inner.marked_counts()

    def inbox_put(self, events: Sequence[Event], partition: str = "") -> int:
        return self.inner.inbox_put(events, partition)

    def inbox_take(self, limit: int, partition: str | None = None) -> list[Event]:
        return self.inner.inbox_take(limit, partition)

    def outbox_take(self, limit: int, kind: OwedKind | None = None) -> list[OwedWrite]:
        return self.inner.outbox_take(limit, kind)

    def outbox_claim(
        self, limit: int, kind: OwedKind | None = None, lease: timedelta = OUTBOX_LEASE
    ) -> list[ClaimedWrite]:
        return self.inner.outbox_claim(limit, kind, lease)

    def outbox_release(self, owed: Sequence[ClaimedWrite]) -> None:
        self.inner.outbox_release(owed)

    def outbox_owed(self, keys: Iterable[str]) -> set[str]:
        return self.inner.outbox_owed(keys)

    def inbox_quarantine(self, entries: Sequence[Quarantined]) -> None:
        self.inner.inbox_quarantine(entries)

    def quarantined(self, limit: int = 1000) -> list[Quarantined]:
        return self.inner.quarantined(limit)

    def quarantine_count(self) -> int:
        return self.inner.quarantine_count()

    def quarantine_release(self, keys: Sequence[str] | None = None) -> int:
        return self.inner.quarantine_release(keys)

    # the ledger reader: reports and `explain` over a chaos run read the inner store
    def contact_decisions(self, contact_id: str) -> list[Decision]:
        return self.inner.contact_decisions(contact_id)

    def contact_now(self, contact_id: str) -> ContactState | None:
        return self.inner.contact_now(contact_id)

    def rollup(self, since: datetime | None = None) -> list[RollupRow]:
        return self.inner.rollup(since)

    def contact_levels(self) -> dict[tuple[str, str | None], int]:
        return self.inner.contact_levels()

    def policy_notes(self) -> dict[str, str]:
        return self.inner.policy_notes()

    def quality_counts(self) -> dict[str, int]:
        return self.inner.quality_counts()

    def close(self) -> None:
        # Closing a dropped connection again is harmless.
        with contextlib.suppress(Exception):
            self.inner.close()
