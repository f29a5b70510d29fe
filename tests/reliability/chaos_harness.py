"""One chaos run: a seeded stream through intake -> inbox -> worker (Runner) -> fake HubSpot,
with a scheduled sync closing every daily window; and the field-by-field comparison of two runs.

As under `serve`, the intake (`connectors.server.Intake`) and the worker (a `Runner`) each
have their own connector and store connection on one `SQLiteStore` file. When the worker dies
(`Killed`, mid-operation or idle between deliveries) or its store connection fails
(`StoreError`), the harness does what `serve`'s supervisor does: it starts a fresh connector,
store connection and runner on the same file and carries on, the intake untouched. When the
store file is replaced under both (a consistent copy moved over it), the intake refuses with
503 (the sender delivers again), and the harness stops the worker and reopens the intake, as
the supervisor does.

Deliveries in a chaos run are signed anew for each attempt, every one is delivered twice (the
copy up to a window late), 20% are displaced within their window, and a refused delivery (5xx)
is delivered again later, as HubSpot does. The worker drains each window's inbox as one batch
before the window's sync, and decides each contact's events in `occurred_at` order, so a
displacement within the window changes nothing. Only the duplicate copies reach the next
window, where their event ids absorb them. An original arriving after a later decision of its
contact (another event, or a time rule the sync fired) would be decided in its place too
(`core.order`) and end in the same state, but the ledger would then hold a `revised` decision
the fault-free run has not, and the two runs' ledgers are compared line by line: late
originals are measured against `replay` instead (`bench/order.py`, the `serve` and Lambda
differential tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import astuple, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from crm_elasticity.connectors.base import ConnectorError
from crm_elasticity.connectors.hubspot import HubSpotConnector
from crm_elasticity.connectors.hubspot.config import HubSpotSettings, load_options
from crm_elasticity.connectors.runner import Runner
from crm_elasticity.connectors.server import Intake
from crm_elasticity.core.mapping import Mapping, load_mapping
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.store import OUTBOX_LEASE, Batch, StoreError
from tests.fakes.hubspot_server import TOKEN
from tests.reliability.chaos_faults import (
    ChaosHubSpot,
    ChaosHubSpotConnector,
    ChaosStore,
    FaultPlan,
    Killed,
)
from tests.reliability.chaos_stream import (
    NOTIFICATIONS_PER_REQUEST,
    STREAM_START,
    Change,
    contact_ids,
    generate,
    requests_for,
    signed_request,
    window_end,
)

MAPPING = Path(__file__).resolve().parents[2] / "mappings" / "hubspot.yaml"
SECRET = "chaos-client-secret-3f9a"
MAX_RECEIVES = 3
"""A worker batch failing this many times in a row is parked (dead-lettered) and replayed."""
MAX_RESTARTS = 10_000
POISON_MS = 253_402_128_000_000
"""9999-12-30T00:00:00Z in epoch milliseconds: a time no real event has."""
LEASE_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class VirtualClock:
    """The HubSpot client's monotonic clock: only sleeping moves it, so back-offs cost nothing."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


@dataclass
class RunReport:
    events_in: int = 0
    deliveries: int = 0
    refused: int = 0
    refused_store_replaced: int = 0
    duplicates_absorbed: int = 0
    applied: int = 0
    restarts: int = 0
    worker_failures: int = 0
    dead_lettered: int = 0
    replayed: int = 0
    syncs: int = 0
    api_calls: int = 0
    retries: int = 0
    virtual_wait_s: float = 0.0
    faults: Counter = field(default_factory=Counter)


class ChaosRun:
    def __init__(self, workdir: Path, plan: FaultPlan, chaotic: bool, seed: int) -> None:
        self.plan = plan
        self.chaotic = chaotic
        self.rng = random.Random(seed * 31 + 1)
        self.mapping: Mapping = load_mapping(MAPPING)
        self.options = load_options(self.mapping)
        self.path = workdir / ("chaos.sqlite3" if chaotic else "clean.sqlite3")
        self.now = STREAM_START
        self.hubspot = ChaosHubSpot(plan, now=lambda: self.now)
        self.url = self.hubspot.start()
        self.clock = VirtualClock()
        self.report = RunReport()
        self.rival: Runner | None = None
        self.runner: Runner = self._boot()
        self.worker_dead = False
        self.intake = Intake(self._intake_runners(), rebuild=self._intake_runners)

    # ---- the worker process ----------------------------------------------------------------

    def _connector(self) -> ChaosHubSpotConnector:
        connector = ChaosHubSpotConnector(
            self.mapping,
            self._settings(),
            self.options,
            sleep=self.clock.sleep,
            clock=self.clock,
            prefetch_pages=0,
        )
        connector.plan = self.plan
        return connector

    def _boot(self) -> Runner:
        store = ChaosStore(SQLiteStore(self.path, clock=self.lease_clock), self.plan)
        self.plan.rival = self._rival_flush
        return Runner(self._connector(), store, clock=lambda: self.now)

    def _intake_runners(self) -> list[Runner]:
        """The server's own: it only verifies and records."""
        store = SQLiteStore(self.path, clock=self.lease_clock)
        return [Runner(self._connector(), store, clock=lambda: self.now)]

    def _kill_worker_idle(self) -> None:
        """kill -9 of the worker alone, between deliveries: the intake goes on recording."""
        self.plan.count("worker_kills_idle")
        self._tally_calls()
        self.runner.store.close()
        self.worker_dead = True

    def _supervise(self) -> None:
        """What `serve`'s supervisor does before the worker's next pass: reopen a replaced
        store (worker stopped first), respawn a dead worker."""
        if not self.intake.check_store():
            if self.rival is not None:  # another process: its next run opens the new file
                self.rival.store.close()
                self.rival = None
            if not self.worker_dead:
                self._tally_calls()
                self.runner.store.close()
                self.worker_dead = True
            if not self.intake.reopen_store():
                raise RuntimeError("the store file is not back")
        if self.worker_dead:
            self.worker_dead = False
            self.report.restarts += 1
            self.runner = self._boot()
        if self.intake.store_lost is not None:
            self.intake.resume()

    def _replace_store(self) -> None:
        """An operator restores a backup taken this instant: removes the store's files and
        moves the copy in. Same content, another file; what the old connections write next
        goes to files nobody will read."""
        self.plan.count("store_replacements")
        copy_path = self.path.with_name(self.path.name + ".copy")
        source, copy = sqlite3.connect(self.path), sqlite3.connect(copy_path)
        try:
            source.backup(copy)
        finally:
            copy.close()
            source.close()
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")
        os.replace(copy_path, self.path)

    def _settings(self) -> HubSpotSettings:
        return HubSpotSettings(
            access_token=TOKEN,
            client_secret=SECRET,
            base_url=self.url,
            timeout_seconds=self.plan.client_timeout,
            write_concurrency=1,
            requests_per_10s=1000,
        )

    def _rival_flush(self) -> None:
        """Another flusher on the same file (its own connection and connector, which never
        dies here) flushes while the worker's CRM call is in flight."""
        if self.rival is None:
            connector = HubSpotConnector(
                self.mapping,
                self._settings(),
                self.options,
                sleep=self.clock.sleep,
                clock=self.clock,
                prefetch_pages=0,
            )
            store = SQLiteStore(self.path, clock=self.lease_clock)
            self.rival = Runner(connector, store, clock=lambda: self.now)
        self.rival.flush()

    def lease_clock(self) -> datetime:
        """Wall-clock time as the store sees it: a dead worker's leases on owed writes have
        run out by the time its replacement starts."""
        return LEASE_EPOCH + self.report.restarts * (OUTBOX_LEASE + timedelta(seconds=1))

    def _restart(self) -> None:
        self._tally_calls()
        with contextlib.suppress(Exception):
            self.runner.store.close()
        self.report.restarts += 1
        if self.report.restarts > MAX_RESTARTS:
            raise RuntimeError("the worker keeps dying: no progress")
        self.runner = self._boot()

    def _tally_calls(self) -> None:
        calls = self.runner.connector.calls
        self.report.api_calls += calls.api_calls
        self.report.retries += calls.retries
        calls.api_calls = calls.retries = calls.throttled = 0

    def survive(self, step: Callable[[], Any]) -> Any:
        """Run `step` until it completes, restarting the worker whenever it dies."""
        while True:
            try:
                return step()
            except (Killed, StoreError):
                self._restart()

    # ---- the run ---------------------------------------------------------------------------

    def setup(self, contacts: int) -> None:
        plan_was, self.plan.enabled = self.plan.enabled, False
        self.runner.connector.provision()
        for cid in contact_ids(contacts):
            self.hubspot.add_contact({"email": f"c{cid}@example.com"}, contact_id=int(cid))
        self.plan.enabled = plan_was

    def run(self, windows: list[list[Change]]) -> RunReport:
        late: list[bytes] = []
        for day, changes in enumerate(windows):
            self.now = window_end(day) - timedelta(hours=1)
            for change in changes:
                self.hubspot.set_contact(change.contact_id, change.crm_properties())
            self.report.events_in += len(changes)
            late = self._deliver(changes, late)
            self.now = window_end(day)
            self._drain()
            self._sync()
            self._flush_all()
        self._deliver([], late)
        self._drain()
        self._flush_all()
        self._tally_calls()
        self.report.faults = Counter(self.plan.counts)
        self.report.virtual_wait_s = round(self.clock.slept, 1)
        return self.report

    def _deliver(self, changes: list[Change], late: list[bytes]) -> list[bytes]:
        """Deliver a window's requests; return the duplicates that arrive in the next one."""
        ordered = list(changes)
        if self.chaotic:
            for i in range(len(ordered)):
                if self.rng.random() < 0.2:
                    j = self.rng.randrange(len(ordered))
                    ordered[i], ordered[j] = ordered[j], ordered[i]
        bodies = requests_for(ordered)
        queue = late + bodies
        next_late: list[bytes] = []
        if self.chaotic:
            for body in bodies:
                if self.rng.random() < 0.5:
                    queue.insert(self.rng.randrange(len(queue) + 1), body)
                else:
                    next_late.append(body)
        sent_at = self.now
        while queue:
            body = queue.pop(0)
            sent_at += timedelta(seconds=1)
            if self.plan.roll_operator(self.plan.replace_store_rate):
                self._replace_store()
            if self.plan.roll_operator(self.plan.kill_idle_rate) and not self.worker_dead:
                self._kill_worker_idle()
            if self.plan.roll_operator(self.plan.poison_rate):
                body = self._poisoned(body, sent_at)
            request = signed_request(body, SECRET, sent_at)
            self.report.deliveries += 1
            answer = self.intake.answer(request)
            if answer.status >= 500:
                # The store behind the intake failed: HubSpot delivers again later.
                self.report.refused += 1
                if self.intake.store_lost is not None:
                    self.report.refused_store_replaced += 1
                self._supervise()
                queue.append(body)
            elif answer.status >= 300:
                raise AssertionError(
                    f"a genuine delivery was refused: {answer.status} {answer.body[:200]!r}"
                )
            else:
                received = json.loads(answer.body)["received"]
                self.report.duplicates_absorbed += received - answer.recorded
        return next_late

    def _poisoned(self, body: bytes, sent_at: datetime) -> bytes:
        """Send a notification dated year 9999 on its own (it must be refused, 400, and change
        nothing), and return the genuine batch with another one inside it (it must be left
        out while the batch's genuine notifications are recorded)."""
        notifications = json.loads(body)
        poison = {
            **notifications[0],
            "eventId": 10**9 + self.plan.counts["poison"],
            "occurredAt": POISON_MS,
        }
        alone = self.intake.answer(signed_request(json.dumps([poison]).encode(), SECRET, sent_at))
        if alone.status != 400:
            raise AssertionError(f"a poison notification was not refused: {alone.status}")
        self.plan.count("poison")
        if len(notifications) >= NOTIFICATIONS_PER_REQUEST:
            return body
        self.plan.count("poison_in_batch")
        return json.dumps([*notifications, poison]).encode()

    def _drain(self) -> None:
        self._supervise()
        failures = 0
        while True:
            try:
                stats = self.runner.drain_inbox(batch_size=100_000)
                self.report.applied += stats.applied
                self.report.duplicates_absorbed += stats.duplicates
                return
            except (Killed, StoreError):
                self._restart()
            except ConnectorError:
                self.report.worker_failures += 1
                failures += 1
                if failures >= MAX_RECEIVES:
                    self._dead_letter_and_replay()
                    failures = 0

    def _sync(self) -> None:
        """A sync that gives up on the CRM is run again, as the next scheduled run would."""
        for _ in range(100):
            try:
                self.survive(lambda: self.runner.sync(now=self.now))
                self.report.syncs += 1
                return
            except ConnectorError:
                self.report.worker_failures += 1
        raise RuntimeError("the scheduled sync never completed")

    def _dead_letter_and_replay(self) -> None:
        """Park the failing batch as SQS would after `MAX_RECEIVES`, then redrive it."""
        store = self.runner.store
        parked = self.survive(lambda: store.inbox_take(100_000))
        self.survive(
            lambda: self.runner.store.commit(Batch(inbox_done=[e.event_id for e in parked]))
        )
        self.report.dead_lettered += len(parked)
        self.survive(lambda: self.runner.record(parked))
        self.report.replayed += len(parked)

    def _flush_all(self) -> None:
        """The next scheduled run retries owed writes; here we retry until none are owed."""
        for _ in range(1000):
            owed = self.survive(lambda: self.runner.store.outbox_take(1))
            if not owed:
                return
            self.survive(self.runner.flush)
        raise RuntimeError("owed CRM writes never went through")

    def close(self) -> None:
        if self.rival is not None:
            self.rival.store.close()
        with contextlib.suppress(Exception):
            self.runner.store.close()
        for runner in self.intake.runners:
            runner.store.close()
        self.hubspot.stop()


# ---- comparison ------------------------------------------------------------------------------


def crm_state(fake: ChaosHubSpot) -> dict[str, dict[str, Any]]:
    out = {}
    for oid, props in fake.objects["contacts"].raw.items():
        out[str(oid)] = {k: v for k, v in props.items() if k != "lastmodifieddate"}
    return out


def crm_tasks(fake: ChaosHubSpot) -> Counter:
    keep = ("hs_task_subject", "hs_task_body", "hs_timestamp", "elastic_handoff_key")
    return Counter((tuple(t["contacts"]), *(t.get(k) for k in keep)) for t in fake.tasks())


def ledger(store: SQLiteStore) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for page in store.iter_contacts():
        for state in page:
            out[state.contact_id] = [
                (
                    d.at,
                    d.rule,
                    d.reason,
                    d.cause,
                    d.from_status,
                    d.to_status,
                    json.dumps(d.changes, default=str, sort_keys=True),
                    json.dumps([(a.kind, a.detail) for a in d.actions], default=str),
                    d.policy_version,
                    d.event_type,
                )
                for d in store.ledger_for(state.contact_id)
            ]
    return out


def snapshots(store: SQLiteStore) -> dict[str, tuple]:
    return {s.contact_id: astuple(s) for page in store.iter_contacts() for s in page}


def differences(clean: ChaosRun, chaos: ChaosRun) -> list[str]:
    """Every field where the chaotic run's CRM, tasks, ledger or snapshots differ."""
    diffs: list[str] = []
    a, b = crm_state(clean.hubspot), crm_state(chaos.hubspot)
    for cid in sorted(a.keys() | b.keys()):
        pa, pb = a.get(cid, {}), b.get(cid, {})
        diffs += [
            f"crm {cid}.{k}: {pa.get(k)!r} != {pb.get(k)!r}"
            for k in sorted(pa.keys() | pb.keys())
            if pa.get(k) != pb.get(k)
        ]
    ta, tb = crm_tasks(clean.hubspot), crm_tasks(chaos.hubspot)
    diffs += [
        f"task {t}: {ta[t]} != {tb[t]}"
        for t in sorted(ta.keys() | tb.keys(), key=str)
        if ta[t] != tb[t]
    ]
    sa, sb = SQLiteStore(clean.path), SQLiteStore(chaos.path)
    try:
        la, lb = ledger(sa), ledger(sb)
        for cid in sorted(la.keys() | lb.keys()):
            da, db = la.get(cid, []), lb.get(cid, [])
            if da != db:
                first = next(
                    (i for i, (x, y) in enumerate(zip(da, db, strict=False)) if x != y),
                    min(len(da), len(db)),
                )
                diffs.append(
                    f"ledger {cid}: {len(da)} vs {len(db)} decisions, first "
                    f"difference at #{first}: {da[first : first + 1]} != "
                    f"{db[first : first + 1]}"
                )
        na, nb = snapshots(sa), snapshots(sb)
        diffs += [
            f"snapshot {cid}: {na.get(cid)} != {nb.get(cid)}"
            for cid in sorted(na.keys() | nb.keys())
            if na.get(cid) != nb.get(cid)
        ]
    finally:
        sa.close()
        sb.close()
    return diffs


@dataclass
class ChaosResult:
    clean: RunReport
    chaos: RunReport
    differences: list[str]
    ledger_entries: int
    crm_records: int
    tasks: int


def run_chaos(
    workdir: Path, events: int, contacts: int, days: int, seed: int, plan: FaultPlan | None = None
) -> ChaosResult:
    windows = generate(events, contacts, days, seed)
    runs = []
    for chaotic in (False, True):
        fault_plan = plan if chaotic and plan is not None else FaultPlan(seed=seed)
        fault_plan.enabled = chaotic
        run = ChaosRun(workdir, fault_plan, chaotic, seed)
        run.setup(contacts)
        run.run(windows)
        runs.append(run)
    clean, chaos = runs
    try:
        diffs = differences(clean, chaos)
        store = SQLiteStore(clean.path)
        entries = sum(len(v) for v in ledger(store).values())
        store.close()
        return ChaosResult(
            clean.report,
            chaos.report,
            diffs,
            entries,
            len(crm_state(clean.hubspot)),
            sum(crm_tasks(clean.hubspot).values()),
        )
    finally:
        for run in runs:
            run.close()
