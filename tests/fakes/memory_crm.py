"""An in-memory CRM behind the `Connector` interface, for tests of the shared pipeline and the
deployed path. It keeps canonical values in dicts, counts every API call, and injects the
faults a real CRM has: a poisoned record, throttling, an outage, per-record write failures.

The CRM's data lives in a `MemoryCrm` found by name, so a connector built by the Lambda
handlers through `load_connector` (vendor `memory`) sees what the test set up.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterator, Sequence
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError

from crm_elasticity.connectors.base import (
    Connector,
    ConnectorError,
    CrmRecord,
    HandoffTask,
    ProvisionReport,
    WebhookIntake,
    WebhookRejected,
    WebhookRequest,
    WebhookResponse,
    WriteRequest,
    WriteResult,
)
from crm_elasticity.connectors.registry import register_connector
from crm_elasticity.core.mapping import Mapping, load_mapping
from crm_elasticity.core.models import EVENT

MAPPING_PATH = Path(__file__).with_name("memory.yaml")
SECRET_HEADER = "x-memory-secret"


def memory_mapping() -> Mapping:
    return load_mapping(MAPPING_PATH)


@dataclass
class MemoryCrm:
    """The vendor's side: records, tasks, call counts and the faults to inject."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    signals: dict[str, dict[str, str | None]] = field(default_factory=dict)
    changed_at: dict[str, datetime] = field(default_factory=dict)
    properties: dict[str, dict[str, Any]] = field(default_factory=dict)
    """contact id -> other contact properties (consent, country), as the CRM holds them."""
    tasks: dict[str, HandoffTask] = field(default_factory=dict)
    task_attempts: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    write_log: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    # faults
    poisoned: set[str] = field(default_factory=set)
    """Contact ids whose read raises a permanent error (a record the CRM cannot serve)."""
    throttle_next: int = 0
    """The next N calls raise a retriable 429."""
    down: bool = False
    """Every call raises a retriable 503 while set."""
    unavailable: set[str] = field(default_factory=set)
    """Call names (read, write, tasks, find_due, ...) that raise a retriable 503 while listed."""
    fail_at: set[tuple[str, int]] = field(default_factory=set)
    """(call name, n): the n-th call of that name (counting from 1) raises a retriable 503."""
    reject_at: set[tuple[str, int]] = field(default_factory=set)
    """(call name, n): the n-th call of that name raises a permanent (non-retriable) 400."""
    write_failures: dict[str, str] = field(default_factory=dict)
    write_deferrals: dict[str, str] = field(default_factory=dict)
    """Contacts whose write the connector reports as still failing for a passing reason."""
    """contact id -> the vendor's message for a permanent per-record write failure."""

    _named: ClassVar[dict[str, MemoryCrm]] = {}

    @classmethod
    def named(cls, name: str = "default") -> MemoryCrm:
        return cls._named.setdefault(name, cls())

    @classmethod
    def reset(cls) -> None:
        cls._named.clear()

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def add_contact(self, contact_id: str, at: datetime, **signals: str | None) -> None:
        self.values.setdefault(contact_id, {})
        self.signals[contact_id] = dict(signals)
        self.changed_at[contact_id] = at

    def set_signal(self, contact_id: str, prop: str, value: str, at: datetime) -> None:
        self.signals.setdefault(contact_id, {})[prop] = value
        self.values.setdefault(contact_id, {})
        self.changed_at[contact_id] = at


@register_connector
class MemoryConnector(Connector):
    vendor = "memory"
    webhook_paths = ("/webhooks/memory",)

    def __init__(
        self,
        mapping: Mapping,
        crm: MemoryCrm | None = None,
        secret: str | None = None,
        page_size: int = 2,
    ) -> None:
        super().__init__(mapping)
        self.crm = crm if crm is not None else MemoryCrm()
        self.secret = secret
        self.page_size = page_size

    @classmethod
    def from_env(cls, mapping: Mapping, env: MappingABC[str, str]) -> MemoryConnector:
        secret = env.get("MEMORY_SECRET")
        if secret is None:
            raise ConnectorError("MEMORY_SECRET is not set")
        return cls(mapping, MemoryCrm.named(env.get("MEMORY_CRM", "default")), secret)

    # ---- the API surface, each call counted and fault-checked ---------------------------

    def _call(self, name: str) -> None:
        crm = self.crm
        crm.calls[name] = crm.calls.get(name, 0) + 1
        self.calls.api_calls += 1
        if crm.down or name in crm.unavailable or (name, crm.calls[name]) in crm.fail_at:
            raise ConnectorError("memory CRM unavailable", status=503, retriable=True)
        if (name, crm.calls[name]) in crm.reject_at:
            raise ConnectorError("memory CRM rejected the request", status=400)
        if crm.throttle_next > 0:
            crm.throttle_next -= 1
            self.calls.throttled += 1
            raise ConnectorError("memory CRM throttled", status=429, retriable=True)

    def provision(self, dry_run: bool = False) -> ProvisionReport:
        return ProvisionReport([], dry_run)

    def parse_webhook(self, request: WebhookRequest) -> WebhookIntake:
        """The body is a JSON list of canonical events (or `{"events": [...]}`)."""
        given = request.headers.get(SECRET_HEADER, "")
        if self.secret is not None and not hmac.compare_digest(given, self.secret):
            raise WebhookRejected(401, "bad or missing secret")
        try:
            payload = json.loads(request.body)
            items = payload["events"] if isinstance(payload, dict) else payload
            events = [EVENT.validate_python(item) for item in items]
        except ValidationError as exc:
            # As the Salesforce JSON intake answers: the first problem, where, and what.
            problem = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in problem["loc"]) or "event"
            reason = f"not a canonical event: {where}: {problem['msg']}"
            raise WebhookRejected(400, reason) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise WebhookRejected(
                400, f"not a list of canonical events: {type(exc).__name__}"
            ) from None
        return WebhookIntake(events, WebhookResponse(202))

    def read_records(self, contact_ids: Sequence[str]) -> dict[str, CrmRecord]:
        self._call("read")
        crm = self.crm
        poisoned = crm.poisoned.intersection(contact_ids)
        if poisoned:
            raise ConnectorError(f"cannot read record(s) {sorted(poisoned)}", status=400)
        return {cid: self._record(cid) for cid in contact_ids if cid in crm.values}

    def write_records(self, requests: Sequence[WriteRequest]) -> WriteResult:
        self._call("write")
        result = WriteResult()
        written: dict[str, dict[str, Any]] = {}
        for request in requests:
            cid = request.contact_id
            fields = {**request.fields, **request.raw_properties}
            if cid in self.crm.write_failures:
                result.failed[cid] = self.crm.write_failures[cid]
                continue
            if cid in self.crm.write_deferrals:
                result.deferred[cid] = self.crm.write_deferrals[cid]
                continue
            self.crm.values.setdefault(cid, {}).update(fields)
            written[cid] = dict(fields)
            result.written.append(cid)
        self.crm.write_log.append(written)
        return result

    def create_tasks(self, tasks: Sequence[HandoffTask]) -> WriteResult:
        self._call("tasks")
        result = WriteResult()
        for task in tasks:
            self.crm.task_attempts.append(task.key)
            self.crm.tasks.setdefault(task.key, task)  # a key never makes a second task
            result.written.append(task.key)
        return result

    def find_due(self, now: datetime, after: str | None) -> Iterator[list[CrmRecord]]:
        return self._pages(sorted(self.crm.values), after, "find_due")

    def find_engaged_since(
        self, since: datetime | None, after: str | None
    ) -> Iterator[list[CrmRecord]]:
        ids = sorted(
            cid
            for cid, at in self.crm.changed_at.items()
            if since is None or at >= since and cid in self.crm.signals
        )
        return self._pages(ids, after, "find_engaged")

    def iter_all(self, after: str | None) -> Iterator[list[CrmRecord]]:
        return self._pages(sorted(self.crm.values), after, "iter_all")

    # ---- helpers --------------------------------------------------------------------------

    def _record(self, cid: str) -> CrmRecord:
        held = self.crm.properties.get(cid, {})
        governed = self.mapping.policy.program.governance.properties
        return CrmRecord(
            cid,
            dict(self.crm.values[cid]),
            dict(self.crm.signals.get(cid, {})),
            properties={name: held.get(name) for name in governed},
        )

    def _pages(self, ids: list[str], after: str | None, name: str) -> Iterator[list[CrmRecord]]:
        ids = [cid for cid in ids if after is None or cid > after]
        for start in range(0, len(ids), self.page_size):
            self._call(name)
            yield [self._record(cid) for cid in ids[start : start + self.page_size]]


def memory_runners(data_dir: str, poisoned: tuple[str, ...] = ()) -> list:
    """Runners a worker process builds for itself: the fake CRM on the data dir's store, with
    the `poisoned` contacts' records unreadable."""
    from crm_elasticity.connectors.runner import Runner
    from crm_elasticity.core.sqlite_store import SQLiteStore

    connector = MemoryConnector(memory_mapping(), MemoryCrm(poisoned=set(poisoned)))
    return [Runner(connector, SQLiteStore.in_data_dir(Path(data_dir)))]
