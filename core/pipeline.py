"""Events and time through the engine into the store, in atomic batches.

Every path uses this: `replay`, `simulate`, the local webhook worker, the Lambda worker and the
scheduled syncs. A batch claims its event keys, saves the contacts' new states and appends the
decisions in one commit, so a crash mid-batch leaves no half-applied event and a redelivered
event is absorbed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from crm_elasticity.core.cursors import Cursors
from crm_elasticity.core.engine import advance_owned, apply_owned, next_due
from crm_elasticity.core.gcpause import cyclic_gc_paused
from crm_elasticity.core.models import (
    MAX_URL_CHARS,
    ContactState,
    Decision,
    Event,
    Reason,
    Rule,
    Transition,
)
from crm_elasticity.core.occurrences import Seen, counts, decode_seen, encode_seen, newer
from crm_elasticity.core.order import REVISION_WINDOW, ContactHistory, event_order, revise
from crm_elasticity.core.policy import Policy
from crm_elasticity.core.store import URLS_TRUNCATED, Batch, ConflictError, ContactStore
from crm_elasticity.core.writeback import ContactWrite, WriteBack

CONFLICT_ATTEMPTS = 5
"""Decisions made again after another writer got there first, before giving up (the caller
retries later: an inbox stays queued, a queue message is redelivered)."""


def policy_record(policy: Policy, first_decision_at: datetime) -> str:
    """JSON of what a policy version decides by: its numbers and the mapping's program."""
    program = policy.program
    body = (
        program.snapshot
        if program is not None
        else {"policy": policy.model_dump(mode="json", exclude={"version"})}
    )
    record = {
        "version": policy.version,
        "first_decision_at": first_decision_at.isoformat(),
        "snapshot": body,
    }
    return json.dumps(record, sort_keys=True)


def decide_and_commit(
    store: ContactStore, decide: Callable[[], Applied], attempts: int = CONFLICT_ATTEMPTS
) -> Applied:
    """Commit what `decide` decides. When another writer claimed one of its events or changed
    one of its contacts since `decide` read them (`ConflictError`, nothing written), decide
    again on what that writer left: `decide` must read afresh each time."""
    for attempt in range(1, attempts + 1):
        applied = decide()
        try:
            store.commit(applied.batch)
        except ConflictError:
            if attempt == attempts:
                raise
            continue
        return applied
    raise AssertionError("unreachable")


@dataclass
class RunStats:
    events_in: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    decisions: int = 0
    contacts_touched: int = 0
    revised: int = 0
    """Late events decided in their place, re-deciding the events after them."""
    late_unrevised: int = 0
    """Late events decided at the contact's current time (older than its kept history)."""
    transitions: Counter[Transition] = field(default_factory=Counter)
    rejections: list[str] = field(default_factory=list)

    def add(self, other: RunStats) -> None:
        self.events_in += other.events_in
        self.revised += other.revised
        self.late_unrevised += other.late_unrevised
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.decisions += other.decisions
        self.contacts_touched += other.contacts_touched
        self.transitions.update(other.transitions)
        self.rejections.extend(other.rejections)


@dataclass
class Applied:
    """The result of one batch before it is committed: what changed, for connectors to write."""

    changed: dict[str, ContactState]
    decisions: list[Decision]
    stats: RunStats
    batch: Batch
    writes: dict[str, ContactWrite] = field(default_factory=dict)
    """Contact id -> what the CRM is to hold for each changed contact (with a `WriteBack`)."""
    tasks: list[Decision] = field(default_factory=list)
    """The decisions that owe the CRM a sales hand-off task (with a `WriteBack`)."""


def url_truncated(event: Event) -> bool:
    """Whether the event's url is the cut-off start of a longer CRM value (`connectors.signals`
    keeps such a value for comparison as its digest)."""
    observed, url = event.observed, event.url
    return (
        url is not None
        and observed is not None
        and len(url) == MAX_URL_CHARS
        and observed.value.startswith("sha256:")
    )


def count_transitions(decisions: Iterable[Decision], into: Counter[Transition]) -> None:
    for d in decisions:
        if d.from_status is not None and d.from_status != d.to_status:
            into[Transition.between(d.from_status, d.to_status)] += 1
        elif d.from_status is None:
            into[Transition.ENROLLED] += 1


class Pipeline:
    """Applies events and time rules for one policy against one store."""

    def __init__(
        self,
        store: ContactStore,
        policy: Policy,
        properties: MappingABC[str, MappingABC[str, Any]] | None = None,
        revision_window: timedelta | None = REVISION_WINDOW,
        writeback: WriteBack | None = None,
    ) -> None:
        """`properties`: contacts' CRM properties for a run that has no CRM to read them from
        (`replay --contacts`); a connector passes what it read with each batch instead.
        `revision_window`: how far back a late event is decided in its place (see
        `core.order`); None keeps no history and decides late events at the contact's current
        time. `writeback`: what a connected run writes back to the CRM; with it, each batch's
        `Applied` also carries the values and tasks to write."""
        self.store = store
        self.writeback = writeback
        self.policy = policy
        self.properties = properties
        self.revision_window = revision_window
        program = policy.program
        # Segment policies are only consulted when the mapping declares segments.
        self._segmented = program is not None and len(program.policies) > 1
        self.governance = program.governance if program is not None else None
        self._withholding: dict[tuple[str | None, str], Policy] = {}
        self._version_recorded = False

    def segment_of(self, properties: MappingABC[str, Any] | None) -> str | None:
        """The segment a contact with these CRM properties joins the program in."""
        return self.governance.segment(properties) if self.governance is not None else None

    def governed_policy(
        self,
        state: ContactState | None,
        properties: MappingABC[str, Any] | None,
        segment: str | None = None,
    ) -> Policy:
        """The policy for this contact given its CRM properties: its segment's (a contact new
        to the program joins the segment they match), with reactivation steps withheld while
        the program may not email it (no consent, out of the audience)."""
        if state is None and segment is None:
            segment = self.segment_of(properties)
        policy = self.policy.for_contact(state if state is not None else segment)
        reason = self.governance.withheld(properties) if self.governance is not None else None
        program = policy.program
        if reason is None or program is None:  # governance comes with a program
            return policy
        key = (program.segment, reason)
        twin = self._withholding.get(key)
        if twin is None:
            twin = self._withholding[key] = policy.model_copy()
            twin.attach(program.withholding(reason))
        return twin

    def prepare_events(
        self,
        events: Sequence[Event],
        inbox: bool = False,
        states: dict[str, ContactState] | None = None,
        segments: dict[str, str] | None = None,
        properties: MappingABC[str, MappingABC[str, Any]] | None = None,
    ) -> Applied:
        """Decide a batch of events without committing it.

        Duplicates (within the batch or already processed) are dropped; each contact's events
        are applied in `occurred_at` order (then `event_id`), and one that arrives after later
        ones re-decides the contact as if it had arrived in order (`core.order`). `states`
        replaces the store's snapshots (a connector passes what it reconciled with the CRM).
        `segments` names the segment of contacts that may enroll in this batch (see
        `core.eligibility.segment_of`); `properties` are the contacts' CRM properties the
        mapping's eligibility and segments read (`governed_policy`).
        """
        stats = RunStats(events_in=len(events))
        policy = self.policy
        if properties is None:
            properties = self.properties
        fresh: list[Event] = []
        seen: set[str] = set()
        unseen = self.store.unseen([e.event_id for e in events])
        for event in events:
            key = event.event_id
            if key in seen or key not in unseen:
                stats.duplicates += 1
                continue
            seen.add(key)
            if not policy.knows_event(event.type):
                stats.rejected += 1
                stats.rejections.append(f"{key}: unknown event type '{event.type}'")
                continue
            fresh.append(event)
        remembered: dict[str, str] = {}
        if any(e.observed is not None for e in fresh):
            fresh, remembered = self._new_occurrences(fresh, stats)
        fresh.sort(key=event_order)
        ids = {e.contact_id for e in fresh}
        states = self._own_states(ids, states)
        changed: dict[str, ContactState] = {}
        decisions: list[Decision] = []
        segmented = self._segmented
        segments = segments or {}
        governed: dict[str, Policy] = {}
        window = self.revision_window
        histories = self.store.histories(ids) if window is not None and fresh else {}
        kept: dict[str, ContactHistory] = {}
        with cyclic_gc_paused():
            for event in fresh:
                cid = event.contact_id
                state = states.get(cid)
                if properties is not None:
                    policy = governed.get(cid)  # type: ignore[assignment]
                    if policy is None:
                        policy = governed[cid] = self.governed_policy(
                            state, properties.get(cid), segments.get(cid)
                        )
                elif segmented:
                    who = state if state is not None else segments.get(cid)
                    policy = self.policy.for_contact(who)
                made = len(decisions)
                if window is None:
                    if state is not None and event.occurred_at < state.as_of:
                        stats.late_unrevised += 1
                    states[cid] = state = apply_owned(state, event, policy, decisions)
                else:
                    history = kept.get(cid)
                    if history is None:
                        history = kept[cid] = self._history(state, histories.get(cid), event)
                    if state is not None and history.outlived(event, state, window):
                        history.restart(state.copy())
                    states[cid] = state = self._in_order(
                        state, history, event, policy, decisions, stats
                    )
                if len(decisions) > made or cid in changed:
                    changed[cid] = state
            for cid, history in kept.items():  # kept only with a revision window
                assert window is not None
                # Folded under the policy the contact's events were decided by.
                history.trim(window, governed.get(cid) or self.policy.for_contact(states.get(cid)))
        stats.applied = len(fresh)
        batch = self._batch(changed, decisions)
        batch.histories = list(kept.values())
        batch.event_keys = list(seen)
        batch.cursors.update(remembered)
        batch.quality = [(URLS_TRUNCATED, e.event_id) for e in fresh if url_truncated(e)]
        if inbox:
            batch.inbox_done = [e.event_id for e in events]
        return self._applied(changed, decisions, self._finish(stats, changed, decisions), batch)

    def _new_occurrences(
        self, events: list[Event], stats: RunStats
    ) -> tuple[list[Event], dict[str, str]]:
        """Drop events that show again the value last counted for their property (a resent
        snapshot, a redelivery whose claim expired), and the seen records to store."""
        keys = {
            e.event_id: Cursors.seen(e.contact_id, e.observed.property)
            for e in events
            if e.observed is not None
        }
        stored = self.store.get_cursors(list(dict.fromkeys(keys.values())))
        seen = {key: decode_seen(text) for key, text in stored.items()}
        remembered: dict[str, str] = {}
        kept: list[Event] = []
        for event in events:
            observed = event.observed
            if observed is None:
                kept.append(event)
                continue
            key = keys[event.event_id]
            last = seen.get(key)
            if counts(event, last):
                kept.append(event)
            else:
                stats.duplicates += 1
            if newer(observed, last):
                seen[key] = Seen(observed.value, observed.changed_at)
                remembered[key] = encode_seen(observed.value, observed.changed_at)
        return kept, remembered

    @staticmethod
    def _history(
        state: ContactState | None, stored: ContactHistory | None, event: Event
    ) -> ContactHistory:
        """The contact's history to decide `event` with; a new one starting from the state as
        it is when there is none (a contact new to the program, or one from before histories
        were kept)."""
        if stored is not None and state is not None:
            return stored
        cid = event.contact_id
        return ContactHistory(cid, None if state is None else state.copy(), [])

    @staticmethod
    def _in_order(
        state: ContactState | None,
        history: ContactHistory,
        event: Event,
        policy: Policy,
        decisions: list[Decision],
        stats: RunStats,
    ) -> ContactState:
        """Decide `event` in its place among the contact's events."""
        if state is not None and history.is_late(event, state):
            revision = revise(state, history, event, policy)
            if revision is not None:
                stats.revised += 1
                if revision.decision is not None:
                    decisions.append(revision.decision)
                return revision.state
            stats.late_unrevised += 1
            status = state.campaign_status
            decisions.append(
                Decision(
                    contact_id=state.contact_id,
                    at=max(state.as_of, event.occurred_at),
                    rule=Rule.ORDER,
                    reason=Reason.DECIDED_LATE,
                    cause=event.event_id,
                    from_status=status,
                    to_status=status,
                    changes={},
                    policy_version=policy.version,
                    actions=[],
                    event_type=event.type,
                )
            )
            # What is decided now cannot be re-decided from the old base: start afresh here.
            history.restart(state.copy())
        state = apply_owned(state, event, policy, decisions)
        history.add(event)
        return state

    def prepare_tick(
        self,
        contact_ids: Iterable[str],
        now: datetime,
        states: dict[str, ContactState] | None = None,
        properties: MappingABC[str, MappingABC[str, Any]] | None = None,
    ) -> Applied:
        """Decide the time rules due by `now` for these contacts without committing
        (`properties` as for `prepare_events`)."""
        states = self._own_states(contact_ids, states)
        changed: dict[str, ContactState] = {}
        decisions: list[Decision] = []
        if properties is None:
            properties = self.properties
        with cyclic_gc_paused():
            for cid, state in states.items():
                made = len(decisions)
                if properties is None:
                    policy = self.policy.for_contact(state)
                else:
                    policy = self.governed_policy(state, properties.get(cid))
                advance_owned(state, now, policy, decisions)
                if len(decisions) > made:
                    changed[cid] = state
        stats = RunStats()
        return self._applied(
            changed,
            decisions,
            self._finish(stats, changed, decisions),
            self._batch(changed, decisions),
        )

    def _applied(
        self,
        changed: dict[str, ContactState],
        decisions: list[Decision],
        stats: RunStats,
        batch: Batch,
    ) -> Applied:
        """The whole outcome: with a `WriteBack`, also what the CRM is owed."""
        wb = self.writeback
        if wb is None:
            return Applied(changed, decisions, stats, batch)
        writes = {cid: wb.contact(state) for cid, state in changed.items()}
        return Applied(changed, decisions, stats, batch, writes, wb.tasks(decisions))

    def _own_states(
        self, contact_ids: Iterable[str], given: dict[str, ContactState] | None
    ) -> dict[str, ContactState]:
        """States the engine may change in place: fresh from the store, or copies of the
        caller's (a connector keeps its reconciled states to compare against)."""
        if given is None:
            return self.store.get_contacts(contact_ids)
        return {cid: state.copy() for cid, state in given.items()}

    def _batch(self, changed: dict[str, ContactState], decisions: list[Decision]) -> Batch:
        contacts = list(changed.values())
        due = [self.due_at(s) for s in contacts]
        batch = Batch(contacts=contacts, next_due=due, decisions=decisions)
        if decisions and not self._version_recorded:
            self._record_version(batch)
        return batch

    def _record_version(self, batch: Batch) -> None:
        """The first batch a policy version decides also stores what that version says, so
        `report` can list what changed between versions."""
        key = Cursors.policy(self.policy.version)
        if self.store.get_cursor(key) is None:
            first = min(d.at for d in batch.decisions)
            batch.cursors[key] = policy_record(self.policy, first)
        else:
            # Only once it is stored: a batch that lost a race is decided again with it.
            self._version_recorded = True

    def due_at(self, state: ContactState) -> datetime | None:
        due = next_due(state, self.policy.for_contact(state))
        return None if due is None else due.at

    @staticmethod
    def _finish(stats: RunStats, changed: dict, decisions: list[Decision]) -> RunStats:
        stats.decisions = len(decisions)
        stats.contacts_touched = len(changed)
        count_transitions(decisions, stats.transitions)
        return stats

    def process(self, events: Sequence[Event], inbox: bool = False) -> RunStats:
        """Decide and commit one batch; on a race with another writer, decide it again."""
        with cyclic_gc_paused():
            return decide_and_commit(
                self.store, lambda: self.prepare_events(events, inbox=inbox)
            ).stats

    def process_stream(
        self,
        events: Iterable[Event],
        batch_size: int = 5000,
        progress: Callable[[int], None] | None = None,
    ) -> RunStats:
        total = RunStats()
        stream = iter(events)
        while True:
            # Parsing the chunk (the iterator may read a file) allocates as much as deciding it.
            with cyclic_gc_paused():
                chunk = list(islice(stream, batch_size))
                if not chunk:
                    return total
                total.add(self.process(chunk))
            if progress:
                progress(len(chunk))

    def tick(
        self,
        now: datetime,
        page_size: int = 5000,
        progress: Callable[[int], None] | None = None,
    ) -> RunStats:
        """Fire every time rule due by `now` for every contact in the store."""
        total = RunStats()
        after = ""
        while True:
            ids = self.store.due_contacts(now, after=after, limit=page_size)
            if not ids:
                return total
            with cyclic_gc_paused():
                applied = self.prepare_tick(ids, now)
                self.store.commit(applied.batch)
            total.add(applied.stats)
            if progress:
                progress(len(ids))
            after = ids[-1]
