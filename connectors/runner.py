"""The connected pipeline every vendor shares: read the CRM, decide, commit, write back.

Decisions and the CRM writes they owe are committed together (the store's outbox) before any
write is attempted, so a crash or an unreachable CRM delays writes but never loses or repeats a
decision. The same functions serve the local server, the Lambda worker, the scheduled syncs and
the command line.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_elasticity.connectors.base import (
    AuthError,
    Connector,
    ConnectorError,
    CrmRecord,
    HandoffTask,
    QuotaExhausted,
    WriteRequest,
)
from crm_elasticity.connectors.redact import redact_emails
from crm_elasticity.connectors.signals import events_from_changes
from crm_elasticity.core.cursors import Cursors
from crm_elasticity.core.models import EVENT, ContactState, Decision, Event, Rule, Status
from crm_elasticity.core.occurrences import decode_seen, encode_seen
from crm_elasticity.core.owed import OwedKind, OwedWrite, fields_key
from crm_elasticity.core.pipeline import Applied, Pipeline, RunStats, decide_and_commit
from crm_elasticity.core.reconcile import differing_fields, state_from_crm
from crm_elasticity.core.store import (
    QUARANTINE_REASON_CHARS,
    Batch,
    ClaimedWrite,
    Quarantined,
    Store,
    StoreError,
)
from crm_elasticity.core.writeback import WriteBack

log = logging.getLogger(__name__)

RAW_PROPERTY = "property:"
"""In an owed fields payload (JSON, this module's format), the names of raw CRM properties
carry this prefix; the others are canonical fields (`_payload`, `_request`)."""
POLL_OVERLAP = timedelta(minutes=10)
"""The poll window reaches back this far: CRM search indexes lag, and event ids absorb overlap."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def event_at_fault(exc: Exception) -> bool:
    """Whether a failure while deciding events may be one event's doing (so isolating and
    quarantining it helps), rather than the CRM's or the store's (so every event would fail
    alike and should wait)."""
    if isinstance(exc, StoreError):
        return False
    if isinstance(exc, ConnectorError):
        refused_us = isinstance(exc, AuthError | QuotaExhausted) or exc.status in (401, 403)
        return not (exc.retriable or refused_us)
    return True  # the engine or a parser failing on what this event holds


def describe_failure(exc: Exception) -> str:
    """The failure as the quarantine records it: its kind and message, without traceback."""
    where = "crm" if isinstance(exc, ConnectorError) else "engine"
    return f"{where}: {type(exc).__name__}: {redact_emails(str(exc))}"[:QUARANTINE_REASON_CHARS]


@dataclass
class SyncSummary:
    examined: int = 0
    events_polled: int = 0
    transitions: Counter = field(default_factory=Counter)
    decisions: int = 0
    writes_owed: int = 0
    written: int = 0
    write_failures: int = 0
    tasks_created: int = 0
    api_calls: int = 0
    retries: int = 0
    throttled: int = 0
    seconds: float = 0.0
    stopped: str | None = None
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "transitions"}
        out["transitions"] = dict(self.transitions)
        return out


class Runner:
    def __init__(
        self,
        connector: Connector,
        store: Store,
        clock: Callable[[], datetime] = utc_now,
        write_page: int | None = None,
    ) -> None:
        self.connector = connector
        self.store = store
        self.mapping = connector.mapping
        self.policy = self.mapping.policy
        self.pipeline = Pipeline(store, self.policy, writeback=WriteBack.of(self.mapping))
        self.clock = clock
        self.inbox_partition = connector.vendor
        """The part of the inbox holding this runner's events: a `serve` with one mapping per
        vendor shares one store, and each vendor's events must reach only its own runner."""
        self.write_page = write_page or connector.write_page
        self._dates = {n for n, f in self.mapping.fields.items() if f.type in ("datetime", "date")}

    # ---- intake and event processing -------------------------------------------------------

    def record(self, events: Sequence[Event]) -> int:
        """Durably record webhook events; the caller may acknowledge once this returns."""
        return self.store.inbox_put(events, partition=self.inbox_partition)

    def drain_inbox(
        self,
        batch_size: int = 500,
        stop: Callable[[], bool] | None = None,
        unpartitioned: bool = False,
    ) -> RunStats:
        """Process this runner's inbox a batch (one transaction) at a time until it is empty or
        `stop`. With `unpartitioned`, then also the events recorded for no runner in particular
        (by a release before the inbox had partitions): only a sole runner may take those.

        A batch that fails because of one of its events is retried event by event, and an
        event that fails alone is quarantined with its reason (`elasticity inbox`), so it
        cannot hold up the events behind it. A failure that is not an event's (the CRM
        unavailable or refusing our credentials, the store failing) leaves the inbox as it is
        and is raised."""
        total = RunStats()
        parts = [self.inbox_partition, ""] if unpartitioned else [self.inbox_partition]
        for part in parts:
            while not (stop and stop()) and (events := self.store.inbox_take(batch_size, part)):
                # Writes are flushed outside the isolation: their failure is no event's doing.
                self.flush()
                try:
                    total.add(self.process(events, inbox=True, flush=False))
                except Exception as exc:
                    if not event_at_fault(exc):
                        raise
                    log.warning(
                        "a batch of %d inbox events failed (%s); trying them one by one",
                        len(events),
                        describe_failure(exc),
                    )
                    total.add(self._process_alone(events))
                self.flush()
        return total

    def _process_alone(self, events: Sequence[Event]) -> RunStats:
        stats = RunStats()
        for event in events:
            try:
                stats.add(self.process([event], inbox=True, flush=False))
            except Exception as exc:
                if not event_at_fault(exc):
                    raise
                reason = describe_failure(exc)
                log.error("inbox event %s quarantined: %s", event.event_id, reason)
                body = EVENT.dump_json(event).decode()
                self.store.inbox_quarantine(
                    [Quarantined(event.event_id, body, reason, self.clock())]
                )
                stats.rejected += 1
                stats.rejections.append(f"{event.event_id}: quarantined: {reason}")
        return stats

    def process(
        self,
        events: Sequence[Event],
        inbox: bool = False,
        cursors: dict[str, str] | None = None,
        flush: bool = True,
    ) -> RunStats:
        """Decide a batch of events against the CRM's current values and owe the writes."""
        # Owed writes go first, so the CRM reads show them.
        self.flush()

        def decide() -> Applied:
            now = self.clock()
            ids = sorted({e.contact_id for e in events})
            states, records, _, versions = self._read_states(ids, now)
            applied = self.pipeline.prepare_events(
                events, inbox=inbox, states=states, properties=self._properties(records)
            )
            self._owe(applied, records)
            applied.batch.cursors.update(cursors or {})
            # Every contact an event is claimed for: an event that changed nothing on a stale
            # state might have changed the current one.
            claimed = set(applied.batch.event_keys)
            decided_on = {e.contact_id for e in events if e.event_id in claimed}
            applied.batch.expected_versions = {cid: versions.get(cid) for cid in decided_on}
            return applied

        applied = decide_and_commit(self.store, decide)
        if flush:
            self.flush()
        return applied.stats

    # ---- scheduled sync --------------------------------------------------------------------

    def sync(
        self,
        now: datetime | None = None,
        full: bool = False,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> SyncSummary:
        """Poll engagement the webhooks may have missed, then fire due time rules; resumable."""
        started = time.perf_counter()
        now = now or self.clock()
        summary = SyncSummary(dry_run=dry_run)
        # The connector counts for its whole life (a warm Lambda runs many syncs): report this
        # sync's share.
        before = self.connector.calls.snapshot()
        try:
            if not dry_run:
                self.flush()
            self._poll(now, summary, dry_run, progress)
            self._due(now, full, summary, dry_run, progress)
            if not dry_run:
                self.flush(summary)
        except QuotaExhausted as exc:
            summary.stopped = f"stopped, resumable: {exc}"
        spent = self.connector.calls - before
        summary.api_calls, summary.retries = spent.api_calls, spent.retries
        summary.throttled = spent.throttled
        summary.seconds = round(time.perf_counter() - started, 3)
        return summary

    def _poll(self, now: datetime, summary: SyncSummary, dry_run: bool, progress) -> None:
        if not self.mapping.signals:
            return
        cursors = self.store.get_cursors([Cursors.poll_since, Cursors.poll_after])
        stored_since = cursors.get(Cursors.poll_since)
        since = datetime.fromisoformat(stored_since) if stored_since else None
        after = cursors.get(Cursors.poll_after) or None
        for page in self.connector.find_engaged_since(since, after):
            signals = self.mapping.signals
            keys = [Cursors.seen(r.contact_id, s.property) for r in page for s in signals]
            last_seen = {k: decode_seen(v) for k, v in self.store.get_cursors(keys).items()}
            events: list[Event] = []
            remember: dict[str, str] = {}
            for record in page:
                keyed = {s.property: Cursors.seen(record.contact_id, s.property) for s in signals}
                prior = {p: last_seen[k].value for p, k in keyed.items() if k in last_seen}
                found, quiet = events_from_changes(
                    self.mapping,
                    record.contact_id,
                    record.signals,
                    prior,
                    now,
                    "poll",
                    complete=True,
                )
                events += found
                # Values that mean no event are remembered here (a later return to a value
                # that does is a change); the pipeline remembers the ones it counts.
                remember.update(
                    {
                        Cursors.seen(record.contact_id, p): encode_seen(v, None)
                        for p, v in quiet.items()
                    }
                )
            summary.examined += len(page)
            summary.events_polled += len(events)
            if progress:
                progress(len(page))
            if dry_run:
                continue
            remember[Cursors.poll_after] = page[-1].contact_id
            stats = self.process(events, cursors=remember, flush=False) if events else None
            if stats is None:
                self.store.commit(Batch(cursors=remember))
            else:
                summary.decisions += stats.decisions
                summary.transitions.update(stats.transitions)
            self.flush(summary)
        if not dry_run:
            since_next = (now - POLL_OVERLAP).isoformat()
            done = {Cursors.poll_since: since_next, Cursors.poll_after: ""}
            self.store.commit(Batch(cursors=done))

    def _due(self, now: datetime, full: bool, summary, dry_run: bool, progress) -> None:
        name = Cursors.full_after if full else Cursors.due_after
        after = self.store.get_cursor(name) or None
        pages = self.connector.iter_all(after) if full else self.connector.find_due(now, after)
        owed = 0
        for page in pages:
            decide = self._page_decider(page, now, full, name)
            applied = decide() if dry_run else decide_and_commit(self.store, decide)
            summary.examined += len(page)
            summary.decisions += applied.stats.decisions
            summary.transitions.update(applied.stats.transitions)
            if progress:
                progress(len(page))
            if dry_run:
                summary.writes_owed += sum(o.kind is OwedKind.FIELDS for o in applied.batch.outbox)
                continue
            # Pages are disjoint, so writes may wait (durably owed) until a write page is full:
            # one large flush lets the connector use its bulk path. sync() flushes the rest.
            owed += sum(o.kind is OwedKind.FIELDS for o in applied.batch.outbox)
            if owed >= self.write_page:
                self.flush(summary)
                owed = 0
        if not dry_run:
            self.store.commit(Batch(cursors={name: ""}))

    def _page_decider(
        self, page: list[CrmRecord], now: datetime, full: bool, cursor: str
    ) -> Callable[[], Applied]:
        """Decides a sync page's time rules; each further call reads the page again (another
        writer changed some of its contacts since)."""
        ids = [r.contact_id for r in page]
        rounds = 0

        def decide() -> Applied:
            nonlocal rounds
            rounds += 1
            listed = {r.contact_id: r for r in page}
            if rounds > 1:
                listed = self.connector.read_records(ids)
            states, records, snapshots, versions = self._read_states(ids, now, listed)
            applied = self.pipeline.prepare_tick(
                ids, now, states=states, properties=self._properties(records)
            )
            if full:
                self._save_reconciled(applied, states, snapshots)
            self._owe(applied, records)
            applied.batch.cursors[cursor] = page[-1].contact_id
            applied.batch.expected_versions = {
                s.contact_id: versions.get(s.contact_id) for s in applied.batch.contacts
            }
            return applied

        return decide

    def _save_reconciled(self, applied: Applied, states: dict, snapshots: dict) -> None:
        """`--full` also stores what it learnt from the CRM about contacts with no decision."""
        for cid, state in states.items():
            if cid not in applied.changed and state is not snapshots.get(cid):
                applied.batch.contacts.append(state)
                applied.batch.next_due.append(self.pipeline.due_at(state))

    # ---- reading and reconciling -----------------------------------------------------------

    def _read_states(
        self, ids: Sequence[str], now: datetime, listed: dict[str, CrmRecord] | None = None
    ) -> tuple[
        dict[str, ContactState], dict[str, CrmRecord], dict[str, ContactState], dict[str, int]
    ]:
        """The states to decide on, the CRM records, the stored snapshots and the versions
        they were read at.

        The snapshot is read before the CRM: a CRM value that differs from it is then either
        a hand edit or a newer write by another runner, which the commit's version check
        catches. `listed` records (a sync page) were read before the snapshots, so those that
        differ from theirs are read again. A contact with a write still owed to the CRM is
        decided on its snapshot: the CRM is behind it, not edited (the owed write overwrites
        it anyway)."""
        snapshots, versions = self.store.get_versioned(ids)
        owed = self.store.outbox_owed(fields_key(c) for c in snapshots)
        behind = {c for c in snapshots if fields_key(c) in owed}
        if listed is None:
            records = self.connector.read_records(ids) if ids else {}
        else:
            records = dict(listed)
            stale = [
                cid
                for cid, snapshot in snapshots.items()
                if cid in records
                and cid not in behind
                and differing_fields(snapshot, records[cid].values)
            ]
            if stale:
                records.update(self.connector.read_records(stale))
        states: dict[str, ContactState] = {}
        pipeline = self.pipeline
        for cid in ids:
            record, snapshot = records.get(cid), snapshots.get(cid)
            if snapshot is not None and cid in behind:
                states[cid] = snapshot
                continue
            values = record.values if record else {}
            created = record.created_at if record else None
            # A contact the CRM had before the program joins it in the segment its properties
            # match; after that its segment stays what it joined in.
            segment = (
                snapshot.segment
                if snapshot is not None
                else (pipeline.segment_of(record.properties) if record else None)
            )
            policy = pipeline.policy.for_contact(segment)
            state = state_from_crm(cid, values, snapshot, policy, now, created)
            if state is not None:
                if snapshot is None:
                    state.segment = segment
                states[cid] = state
        return states, records, snapshots, versions

    @staticmethod
    def _properties(records: dict[str, CrmRecord]) -> dict[str, dict[str, Any]]:
        return {cid: record.properties for cid, record in records.items()}

    # ---- owing and flushing writes ---------------------------------------------------------

    def _owe(self, applied: Applied, records: dict[str, CrmRecord]) -> None:
        """Persist what the pipeline says the CRM is owed, in the batch's outbox."""
        outbox = applied.batch.outbox
        for cid, write in applied.writes.items():
            outbox.append(OwedWrite.fields(cid, self._payload(write.fields, write.properties)))
        for decision in applied.tasks:
            record = records.get(decision.contact_id)
            task = self._task(decision, record.owner_id if record else None)
            outbox.append(
                OwedWrite.task(decision.contact_id, decision.cause, decision.at, json.dumps(task))
            )

    def _task(self, decision: Decision, owner_id: str | None) -> dict[str, Any]:
        spec = self.mapping.handoff
        score = decision.changes.get("engagement_score", (None, None))[1]
        return {
            "contact_id": decision.contact_id,
            "owner_id": owner_id,
            "subject": spec.subject,
            "body": f"Reached an engagement score of {score} in program "
            f"{self.mapping.program} ({decision.reason}).",
            "priority": spec.priority,
            "due_at": (decision.at + timedelta(days=spec.due_in_days)).isoformat(),
        }

    @staticmethod
    def _encode(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat()
        if isinstance(value, Status):
            return value.value
        return value.value if hasattr(value, "value") else value

    def _payload(self, fields: dict[str, Any], properties: dict[str, Any]) -> str:
        """An owed fields write as stored: one JSON object, as earlier releases stored it."""
        owed = {n: self._encode(v) for n, v in fields.items()}
        owed.update((RAW_PROPERTY + p, v) for p, v in properties.items())
        return json.dumps(owed)

    def _request(self, owed: OwedWrite) -> WriteRequest:
        """The write request an owed fields payload (`_payload`) holds."""
        fields: dict[str, Any] = {}
        properties: dict[str, Any] = {}
        for name, value in json.loads(owed.payload).items():
            if name.startswith(RAW_PROPERTY):
                properties[name.removeprefix(RAW_PROPERTY)] = value
            elif name in self._dates and value is not None:
                fields[name] = datetime.fromisoformat(value)
            else:
                fields[name] = value
        return WriteRequest(owed.contact_id, fields, properties)

    def flush(self, summary: SyncSummary | None = None) -> None:
        """Push owed writes to the CRM. A CRM that is down leaves them owed for next time."""
        try:
            self._flush_fields(summary)
            self._flush_tasks(summary)
        except QuotaExhausted:
            raise
        except ConnectorError as exc:
            log.warning("CRM writes stay owed: %s", exc)
            if summary is not None:
                summary.stopped = f"writes owed, CRM unavailable: {exc}"

    def _flush_fields(self, summary: SyncSummary | None) -> None:
        # Each key taken is leased to this flusher: another flusher (a `sync` beside the worker)
        # neither writes it too nor writes a newer value before this one lands.
        with self._holding_deferred() as deferred:
            while owed := self.store.outbox_claim(self.write_page, OwedKind.FIELDS):
                with self._giving_back(owed):
                    requests = [self._request(o.owed) for o in owed]
                    result = self.connector.write_records(requests)
                    by_contact = {r.contact_id: r.contact_id for r in requests}
                    failures = self._failure_decisions(result.failed, by_contact, "write_failed")
                    later = set(result.deferred)
                    deferred += [o for o in owed if o.owed.contact_id in later]
                    done = [o for o in owed if o.owed.contact_id not in later]
                    self.store.commit(Batch(outbox_done=done, decisions=failures))
                if summary is not None:
                    summary.written += len(result.written)
                    summary.write_failures += len(result.failed)

    def _flush_tasks(self, summary: SyncSummary | None) -> None:
        with self._holding_deferred() as deferred:
            while owed := self.store.outbox_claim(self.write_page, OwedKind.TASK):
                with self._giving_back(owed):
                    tasks = [self._task_from(o.key, json.loads(o.payload)) for o in owed]
                    result = self.connector.create_tasks(tasks)
                    owners = {t.key: t.contact_id for t in tasks}
                    failures = self._failure_decisions(result.failed, owners, "task_failed")
                    pairs = list(zip(owed, tasks, strict=True))
                    deferred += [o for o, t in pairs if t.key in result.deferred]
                    done = [o for o, t in pairs if t.key not in result.deferred]
                    self.store.commit(Batch(outbox_done=done, decisions=failures))
                if summary is not None:
                    summary.tasks_created += len(result.written)

    @contextmanager
    def _holding_deferred(self) -> Iterator[list[ClaimedWrite]]:
        """Owed writes the connector deferred (still failing for a passing reason) stay owed:
        their leases are held until this flush ends, so it does not take them again at once,
        then given back for the next flush."""
        deferred: list[ClaimedWrite] = []
        try:
            yield deferred
        finally:
            if deferred:
                log.warning(
                    "%d owed write(s) kept for the next flush: still failing for a passing reason",
                    len(deferred),
                )
                try:
                    self.store.outbox_release(deferred)
                except StoreError as exc:
                    log.warning("deferred writes wait for their lease to expire: %s", exc)

    @contextmanager
    def _giving_back(self, owed: list[ClaimedWrite]) -> Iterator[None]:
        """Writes that failed stay owed, and their leases are given back for the next flush.
        (A flusher that dies outright leaves its leases to expire.)"""
        try:
            yield
        except Exception:
            try:
                self.store.outbox_release(owed)
            except StoreError as exc:
                log.warning("owed writes wait for their lease to expire: %s", exc)
            raise

    @staticmethod
    def _task_from(key: str, data: dict[str, Any]) -> HandoffTask:
        return HandoffTask(
            key=key,
            contact_id=data["contact_id"],
            owner_id=data["owner_id"],
            subject=data["subject"],
            body=data["body"],
            priority=data["priority"],
            due_at=datetime.fromisoformat(data["due_at"]),
        )

    def _failure_decisions(
        self, failed: dict[str, str], contact_of: dict[str, str], reason: str
    ) -> list[Decision]:
        """Permanent failures go to the ledger with the vendor's message, not into a retry loop."""
        if not failed:
            return []
        ids = [contact_of.get(key, key) for key in failed]
        snapshots = self.store.get_contacts(ids)
        now = self.clock()
        decisions = []
        for message, cid in zip(failed.values(), ids, strict=True):
            status = snapshots[cid].campaign_status if cid in snapshots else Status.ACTIVE
            decisions.append(
                Decision(
                    contact_id=cid,
                    at=now,
                    rule=Rule.WRITE_BACK,
                    reason=reason,
                    cause=f"crm:{redact_emails(message)[:500]}",
                    from_status=status,
                    to_status=status,
                    changes={},
                    policy_version=self.policy.version,
                )
            )
        return decisions
