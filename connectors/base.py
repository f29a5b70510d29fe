"""The interface every CRM connector implements. A third vendor is one new folder
`connectors/<vendor>/` whose `__init__` exposes `CONNECTOR`, a `Connector` subclass; the
contract suite in tests/contract/ checks the promises below against it and its fake.

Connectors speak canonical field names at this boundary; turning them into vendor property
names, types and API calls is theirs alone.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel

from crm_elasticity.core.mapping import Mapping
from crm_elasticity.core.models import Event


@dataclass(frozen=True)
class WriteRequest:
    """What to write to one contact (`Connector.write_records`)."""

    contact_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    """Canonical field -> value: the connector maps each to its CRM property and encodes it
    (read-only and unknown fields are not written)."""
    raw_properties: dict[str, Any] = field(default_factory=dict)
    """CRM property -> value, written as it is: the experiment variants and the holdout flag
    (`core.writeback.ContactWrite.properties`). Strings, booleans or None."""


class ConnectorError(Exception):
    """A CRM call failed. Messages never contain secrets."""

    def __init__(self, message: str, *, status: int | None = None, retriable: bool = False):
        super().__init__(message)
        self.status = status
        self.retriable = retriable


class AuthError(ConnectorError):
    """The credentials were refused (invalid, expired, or missing a scope)."""


class QuotaExhausted(ConnectorError):
    """The vendor's daily allowance (or our reserve of it) is spent: stop now, resume later."""


class HistoryUnsupported(ConnectorError):
    """This vendor's connector cannot export past engagement (use a CSV export instead)."""


class WebhookRejected(Exception):
    """A webhook request that must not be recorded. `status` is the HTTP status to answer."""

    def __init__(
        self,
        status: int,
        reason: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.body = body
        self.content_type = content_type


@dataclass(frozen=True)
class WebhookRequest:
    """An HTTP request as received, before anything trusts it. Header names are lower-case."""

    method: str
    path: str
    query: str
    headers: MappingABC[str, str]
    body: bytes
    received_at: datetime


@dataclass
class WebhookResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"


@dataclass
class WebhookIntake:
    """Verified, parsed canonical events and the answer to give once they are durably stored."""

    events: list[Event]
    response: WebhookResponse = field(default_factory=WebhookResponse)
    ignored: int = 0
    """Notifications we do not act on (unknown subscription types, unmapped properties)."""


@dataclass
class CrmRecord:
    """A contact as the CRM holds it: canonical values decoded from the mapped properties,
    the raw values of signal properties, and what hand-off tasks need."""

    contact_id: str
    values: dict[str, Any]
    signals: dict[str, str | None] = field(default_factory=dict)
    owner_id: str | None = None
    created_at: datetime | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    """Raw values of the properties the mapping's eligibility and segments read
    (`core.eligibility.Governance.properties`): every one asked for, None when unset."""


@dataclass
class HandoffTask:
    key: str
    """Stable per Engaged transition; the connector must not create two tasks for one key."""
    contact_id: str
    owner_id: str | None
    subject: str
    body: str
    priority: str
    due_at: datetime


@dataclass
class WriteResult:
    written: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Permanent per-record failures, with the vendor's message."""
    deferred: dict[str, str] = field(default_factory=dict)
    """Records that kept failing for a passing reason (a retriable per-record error) through
    the connector's own retries: not failures, they stay owed for the next flush."""


@dataclass
class PlanItem:
    kind: str  # property, field, list, group, campaign, permission
    name: str
    action: str  # create, update, unchanged, drift
    detail: str = ""


@dataclass
class ProvisionReport:
    items: list[PlanItem]
    dry_run: bool

    @property
    def changes(self) -> list[PlanItem]:
        return [i for i in self.items if i.action in ("create", "update")]

    @property
    def drift(self) -> list[PlanItem]:
        return [i for i in self.items if i.action == "drift"]


_COUNT_LOCK = threading.Lock()


@dataclass
class CallStats:
    """What the connector spent, for sync summaries and benchmarks. A connector counts for its
    whole life (a warm Lambda runs many syncs): subtract a snapshot for one run's share."""

    api_calls: int = 0
    retries: int = 0
    throttled: int = 0

    def count(self, what: str, n: int = 1) -> None:
        """Add to one counter; safe from the threads of a concurrent write."""
        with _COUNT_LOCK:
            setattr(self, what, getattr(self, what) + n)

    def snapshot(self) -> CallStats:
        with _COUNT_LOCK:
            return CallStats(self.api_calls, self.retries, self.throttled)

    def __add__(self, other: CallStats) -> CallStats:
        return CallStats(
            self.api_calls + other.api_calls,
            self.retries + other.retries,
            self.throttled + other.throttled,
        )

    def __sub__(self, other: CallStats) -> CallStats:
        return CallStats(
            self.api_calls - other.api_calls,
            self.retries - other.retries,
            self.throttled - other.throttled,
        )


@dataclass
class HistoryPage:
    """One step of a history export: events read from one source of the CRM, and the cursor to
    resume from once they are written. A page with `available=False` and a `note` saying why
    ("not available: ...", "not read: ...") reports a source with nothing the export can use
    (history tracking off, a scope missing, a source this export does not read)."""

    source: str
    events: list[Event] = field(default_factory=list)
    cursor: dict[str, str] = field(default_factory=dict)
    """The connector's whole resume state after this page (every source), opaque to callers."""
    note: str | None = None
    available: bool = True
    read: int = 0
    """Vendor records read for this page (events kept, mapped or not)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Records read but not exported, by reason."""


class Connector(ABC):
    vendor: ClassVar[str]
    options_model: ClassVar[type[BaseModel] | None] = None
    """The schema of the mapping's `options:` block for this vendor; `validate` checks it."""
    webhook_paths: ClassVar[tuple[str, ...]] = ()
    write_page: ClassVar[int] = 1000
    """Owed writes per `write_records` call. A vendor with a bulk path asks for more, so a big
    scheduled sync reaches it instead of being cut into small synchronous batches."""

    def __init__(self, mapping: Mapping) -> None:
        self.mapping = mapping
        self.calls = CallStats()

    @classmethod
    @abstractmethod
    def from_env(cls, mapping: Mapping, env: MappingABC[str, str]) -> Connector:
        """Build from environment variables; raise `ConnectorError` naming what is missing."""

    @abstractmethod
    def provision(self, dry_run: bool = False) -> ProvisionReport: ...

    @classmethod
    def offline_plan(cls, mapping: Mapping) -> ProvisionReport | None:
        """What `provision` would create in a CRM that has none of it, from the mapping alone
        (no credentials, no call), or None when the vendor cannot tell without its CRM."""
        return None

    @abstractmethod
    def parse_webhook(self, request: WebhookRequest) -> WebhookIntake:
        """Verify and parse; raise `WebhookRejected` for anything that must not be recorded."""

    @abstractmethod
    def read_records(self, contact_ids: Sequence[str]) -> dict[str, CrmRecord]:
        """Current mapped values, in as few calls as the vendor allows. Missing ids are absent."""

    @abstractmethod
    def write_records(self, requests: Sequence[WriteRequest]) -> WriteResult:
        """Write each contact's canonical fields and raw properties, in batches (one request
        per contact)."""

    @abstractmethod
    def create_tasks(self, tasks: Sequence[HandoffTask]) -> WriteResult: ...

    @abstractmethod
    def find_due(self, now: datetime, after: str | None) -> Iterator[list[CrmRecord]]:
        """Pages of contacts whose time rules can be due by `now`, in ascending id order,
        starting after id `after` (a resumable cursor)."""

    @abstractmethod
    def find_engaged_since(
        self, since: datetime | None, after: str | None
    ) -> Iterator[list[CrmRecord]]:
        """Pages of contacts whose signal properties changed since `since` (the poll path for
        engagement that webhooks may not deliver), ascending id order, after id `after`."""

    @abstractmethod
    def iter_all(self, after: str | None) -> Iterator[list[CrmRecord]]:
        """Every contact of the program's object (`sync --full`), ascending id order."""

    def export_history(
        self, since: datetime, until: datetime, cursor: MappingABC[str, str] | None
    ) -> Iterator[HistoryPage]:
        """Past engagement between `since` and `until` (inclusive) as canonical events with ids
        stable across exports, page by page; `cursor` is the last page's, to resume after.
        Calls go through the same client, limiter and daily reserve as `sync`
        (`QuotaExhausted` stops the export; the last cursor resumes it)."""
        raise HistoryUnsupported(
            f"exporting history from {self.vendor} is not supported; export the events as CSV "
            "and import them with --csv FILE --columns ..."
        )
