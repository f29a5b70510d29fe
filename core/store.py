"""The persistence port: every durable thing the program keeps goes through `Store`.

`Store` is the union of three ports, each a consumer can type against alone:

- `ContactStore`: contact state, read and committed transactionally (the pipeline);
- `EventQueue`: the inbox, quarantine and outbox (webhook intake, the flusher, `inbox`);
- `core.ledger_reader.LedgerReader`: the only way reports, experiment results and `explain`
  read a store.

Implementations: `core.sqlite_store.SQLiteStore` (embedded, local mode and tests) and the
DynamoDB store of the serverless deployment. Both pass `tests/test_store_contract.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple

from pydantic import ValidationError

from crm_elasticity.core.ledger_reader import LedgerReader
from crm_elasticity.core.models import EVENT, ContactState, Decision, Event
from crm_elasticity.core.owed import OwedKind, OwedWrite

if TYPE_CHECKING:
    from crm_elasticity.core.order import ContactHistory


class StoreError(Exception):
    """The store could not do what was asked; nothing of the failed call was written."""


class ConflictError(StoreError):
    """Another writer claimed one of the events, moved a cursor or changed a contact first;
    re-read and decide again."""


OUTBOX_LEASE = timedelta(minutes=5)
"""How long a flusher holds the owed writes it took before another flusher may take them: far
longer than one CRM call with its retries, so only a flusher that died leaves them waiting."""


class ClaimedWrite(NamedTuple):
    """One owed CRM write as a flusher took it."""

    owed: OwedWrite
    version: str
    """Which write under `key` this is: a newer write owed under the same key has another."""
    holder: str
    """The lease it was taken under: no other flusher takes the key until it is released."""

    @property
    def key(self) -> str:
        return self.owed.key

    @property
    def payload(self) -> str:
        return self.owed.payload


@dataclass(frozen=True)
class Quarantined:
    """An inbox event set aside because it could not be read or decided, with the reason, so
    the events behind it keep draining. It stays until released back to the inbox."""

    key: str
    body: str
    """The event as recorded (JSON)."""
    reason: str
    at: datetime


QUARANTINE_REASON_CHARS = 1000

URLS_TRUNCATED = "urls_truncated"
"""Events whose CRM value was longer than a url may be (`core.models.MAX_URL_CHARS`): the event
keeps the first characters as its url, and the report counts them."""
QUALITY_MEASURES = (URLS_TRUNCATED,)


def read_inbox_bodies(rows: Iterable[tuple[str, str]]) -> tuple[list[Event], list[Quarantined]]:
    """Inbox rows (key, body) as events, and the rows no longer readable as one (recorded by
    an older release that accepted them) as quarantine entries: one such row must not stop
    every event behind it."""
    events: list[Event] = []
    unreadable: list[Quarantined] = []
    for key, body in rows:
        try:
            events.append(EVENT.validate_json(body))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'event'}: "
                f"{e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors(include_url=False)
            )
            unreadable.append(Quarantined(key, body, f"unreadable: {problems}", datetime.now(UTC)))
    return events, unreadable


@dataclass
class Batch:
    """Everything one unit of work writes, committed all or nothing.

    `next_due` holds, per contact in `contacts`, when its next time rule falls due (or None),
    so a scheduled sync can find due contacts without evaluating everyone.
    """

    event_keys: list[str] = field(default_factory=list)
    contacts: list[ContactState] = field(default_factory=list)
    next_due: list[datetime | None] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    cursors: dict[str, str] = field(default_factory=dict)
    inbox_done: list[str] = field(default_factory=list)
    outbox: list[OwedWrite] = field(default_factory=list)
    """Writes owed to the CRM (a later one under the same key replaces an earlier one),
    committed with the decisions that owe them so a crash between deciding and writing loses
    nothing and repeats nothing."""
    outbox_done: list[ClaimedWrite] = field(default_factory=list)
    """Owed writes a flusher has done: each is removed only if no newer write was owed under
    its key meanwhile (that one stays owed), and its lease is released either way."""
    expected_versions: dict[str, int | None] = field(default_factory=dict)
    """Contact id -> the version (from `get_versioned`) its decisions were based on, None for
    a contact that did not exist. The commit raises `ConflictError`, writing nothing, if any
    of them moved since. Contacts not listed are written whatever their version (a private
    store's bulk run)."""
    histories: list[ContactHistory] = field(default_factory=list)
    """Contacts' recent decided events (see `core.order`), each replacing the stored one."""
    quality: list[tuple[str, str]] = field(default_factory=list)
    """Data-quality marks (measure, event id): each counts once however often it is marked,
    so a redelivered or re-decided event is not counted twice (`Store.marked_counts`)."""

    def is_empty(self) -> bool:
        return not (
            self.event_keys
            or self.contacts
            or self.decisions
            or self.cursors
            or self.inbox_done
            or self.outbox
            or self.outbox_done
            or self.expected_versions
            or self.histories
            or self.quality
        )


class ContactStore(ABC):
    """The contact-state port: what the engine's pipeline reads and commits, transactionally
    (event claims, contacts and their versions, cursors, histories, the ledger lines a
    `Batch` carries). `core.pipeline` needs only this."""

    @abstractmethod
    def unseen(self, event_keys: Sequence[str]) -> set[str]:
        """The keys among these that no committed batch has claimed yet."""

    @abstractmethod
    def commit(self, batch: Batch) -> None:
        """Write the batch atomically. Raise `ConflictError` (writing nothing) if any of its
        event keys was already claimed."""

    @abstractmethod
    def get_contacts(self, contact_ids: Iterable[str]) -> dict[str, ContactState]: ...

    @abstractmethod
    def get_versioned(
        self, contact_ids: Iterable[str]
    ) -> tuple[dict[str, ContactState], dict[str, int]]:
        """The contacts found, and the version each was read at: every write of a contact
        moves its version, so a batch listing these in `expected_versions` lands only if no
        other writer changed them in between."""

    @abstractmethod
    def iter_contacts(self, page_size: int = 5000) -> Iterator[list[ContactState]]:
        """Every contact, in pages, ordered by contact id."""

    @abstractmethod
    def due_contacts(self, now: datetime, after: str = "", limit: int = 5000) -> list[str]:
        """Ids (> `after`, ascending) of contacts with a time rule due at or before `now`."""

    @abstractmethod
    def count_contacts(self) -> int: ...

    @abstractmethod
    def get_cursors(self, names: Iterable[str]) -> dict[str, str]: ...

    @abstractmethod
    def ledger_for(self, contact_id: str) -> list[Decision]:
        """The contact's decisions, oldest first."""

    def histories(self, contact_ids: Iterable[str]) -> dict[str, ContactHistory]:
        """The stored histories of these contacts (those that have one). A store that keeps
        none answers {}: late events are then decided at the contact's current time."""
        return {}

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """A whole run on a private store (replay, simulate) as one unit: it lands entirely
        or not at all. Stores that can make that cheaper do; the default commits as usual."""
        yield

    def get_cursor(self, name: str) -> str | None:
        return self.get_cursors([name]).get(name)

    def close(self) -> None:  # noqa: B027 - optional for stores without resources
        """Release connections."""


class EventQueue(ABC):
    """The queue port: the inbox of received events (and the quarantine of those that could
    not be decided), the outbox of owed CRM writes with its leases, and the data-quality marks
    counted per event. Intake (`Runner.record`, a webhook's `inbox_put`) needs only this; a
    `Batch` committed through `ContactStore.commit` removes what it decided or flushed."""

    @abstractmethod
    def inbox_put(self, events: Sequence[Event], partition: str = "") -> int:
        """Durably record received events for later processing in the inbox `partition` (the
        runner they are for); return how many were new. An event already in the inbox or
        already processed is not recorded again."""

    @abstractmethod
    def inbox_take(self, limit: int, partition: str | None = None) -> list[Event]:
        """The oldest recorded events of `partition` (None: of every partition) not yet
        processed (they stay until a batch lists them in `inbox_done`)."""

    @abstractmethod
    def outbox_take(self, limit: int, kind: OwedKind | None = None) -> list[OwedWrite]:
        """The oldest owed CRM writes (of `kind`, or of every kind), leased or not: a look,
        taking nothing."""

    @abstractmethod
    def outbox_claim(
        self, limit: int, kind: OwedKind | None = None, lease: timedelta = OUTBOX_LEASE
    ) -> list[ClaimedWrite]:
        """Take the oldest owed writes (of `kind`, or of every kind) that no other
        flusher holds, leasing their keys for `lease`: until a batch lists them in
        `outbox_done` or `outbox_release` gives them back, no other flusher takes these keys,
        not even a newer write owed under one of them meanwhile."""

    @abstractmethod
    def outbox_release(self, owed: Sequence[ClaimedWrite]) -> None:
        """Give back the leases of owed writes that were not done (they stay owed)."""

    @abstractmethod
    def outbox_owed(self, keys: Iterable[str]) -> set[str]:
        """The keys (`OwedWrite.key`) among these with a write owed (taken or not)."""

    @abstractmethod
    def inbox_quarantine(self, entries: Sequence[Quarantined]) -> None:
        """Move these events out of the inbox into the quarantine, atomically per event. An
        event quarantined again replaces its earlier entry."""

    @abstractmethod
    def quarantined(self, limit: int = 1000) -> list[Quarantined]:
        """The quarantined events, oldest first."""

    @abstractmethod
    def quarantine_count(self) -> int: ...

    @abstractmethod
    def marked_counts(self) -> dict[str, int]:
        """Data-quality measure -> how many distinct events were marked with it (`Batch.quality`;
        measures in `QUALITY_MEASURES`)."""

    @abstractmethod
    def quarantine_release(self, keys: Sequence[str] | None = None) -> int:
        """Put quarantined events (these, or all) back into the inbox; return how many moved."""

    def close(self) -> None:  # noqa: B027 - optional for stores without resources
        """Release connections."""


class Store(ContactStore, EventQueue, LedgerReader):
    """The whole persistence port: contact state, the queue and the ledger reader, which each
    store implements (`SQLiteStore`, `DynamoDBStore`); a consumer that needs one of them types
    against that one."""
