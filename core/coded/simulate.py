"""`elasticity simulate` on the coded path: the same population, mail and feedback as
`core.simulate`, with contacts as indices, events as tuples and decisions as coded rows.

It makes the same random draws in the same order, so a seed gives the same run (and report)
as the object pipeline; the ledger is the coded one (`core.coded.ledger`).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from operator import itemgetter

import numpy as np

from crm_elasticity.core.coded import engine, ledger
from crm_elasticity.core.coded.codes import (
    M_REASON,
    NO_RESPONSE,
    NONE,
    STATUSES,
    Names,
    coded_policies,
    from_us,
    to_us,
)
from crm_elasticity.core.coded.replay import record_policy
from crm_elasticity.core.coded.states import write_contacts
from crm_elasticity.core.models import Transition
from crm_elasticity.core.policy import Policy
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.synthetic import (
    IN_SEND_STREAM_LEVELS,
    START,
    ListLevel,
    Population,
    SimulationConfig,
    SimulationResult,
    day_row,
    fresh_day,
    simulated_event_id,
)

_DAY_US = 86_400_000_000
_FLUSH_ROWS = 50_000
_START_US = to_us(START)
_BY_TIME = itemgetter(0, 3)  # time, then serial: the object path sorts by time, then id
_STATUS_TEXT = [s.value for s in STATUSES]
_LEVELS = {
    (code, no_response): ListLevel.of(status, no_response)
    for code, status in enumerate(STATUSES)
    for no_response in (False, True)
}
"""A status code and whether a suppression was for no response -> the contact's list level."""


class CodedSimulation:
    def __init__(
        self, config: SimulationConfig, policy: Policy, store: SQLiteStore, db: sqlite3.Connection
    ) -> None:
        self.config = config
        self.policy = policy
        self.store = store
        self.names = Names()
        self.p = coded_policies(policy, self.names)[None]
        self.people = Population(config)
        n = config.contacts
        self.ids = self.people.ids.tolist()
        self.result = SimulationResult(config, policy.version, store.path)
        self.buckets: dict[int, list[tuple]] = {}
        self.serial = 0
        self.states: list[engine.CodedState | None] = [None] * n
        self.next_due = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        self.ever: list[set[int]] = [set() for _ in STATUSES]
        # What the CRM's dynamic lists would show, in the order contacts first appeared.
        self.status: dict[int, ListLevel] = {}
        self.counts: Counter = Counter()
        self.today: Counter = fresh_day()
        self.rows: list[tuple] = []
        self.writer = ledger.ChunkWriter(db, 0, self.names)
        self.first: datetime | None = None
        t = self.p.type_codes
        self.send, self.open, self.click = t["send"], t["open"], t["click"]
        self.visit, self.bounce, self.unsub = (
            t["high_intent_visit"],
            t["hard_bounce"],
            t["unsubscribe"],
        )
        self.type_names = {code: name for name, code in t.items()}
        self.comebacks = {self.p.what_from_dormant, self.p.what_from_alternate}
        self._steps: dict[int, int] = {}

    def _event(self, i: int, kind: int, at: int) -> None:
        self.serial += 1
        day = (at - _START_US) // _DAY_US
        if day >= self.config.days:
            return
        self.buckets.setdefault(day, []).append((at, i, kind, self.serial))
        self.result.events[self.type_names[kind]] += 1

    def _mail(self, idx: np.ndarray, at: datetime, campaign: str) -> None:
        c, rng, people = self.config, self.people.rng, self.people
        idx = idx[people.reachable[idx]]
        self.result.sends[campaign] += idx.size
        at_us = to_us(at)
        event = self._event
        for i in idx.tolist():
            event(i, self.send, at_us)
        opened = idx[rng.random(idx.size) < people.open_probability(idx)]
        delays = rng.exponential(8.0, opened.size)
        clicked = rng.random(opened.size) < c.click_given_open
        three_minutes = to_us(START + timedelta(minutes=3)) - _START_US
        for i, hours, click in zip(opened.tolist(), delays.tolist(), clicked.tolist(), strict=True):
            when = to_us(at + timedelta(hours=hours))
            event(i, self.open, when)
            if click:
                event(i, self.click, when + three_minutes)
        exits = rng.random(idx.size)
        for i, draw in zip(idx.tolist(), exits.tolist(), strict=True):
            if draw < c.hard_bounce_per_send:
                event(i, self.bounce, to_us(at + timedelta(minutes=1)))
                people.reachable[i] = False
            elif draw < c.hard_bounce_per_send + c.unsubscribe_per_send:
                event(i, self.unsub, to_us(at + timedelta(hours=2)))

    def _visits(self, day_start: datetime) -> None:
        people, c = self.people, self.config
        chance = c.visit_per_day * people.warm * (people.open_p / people.open_p.mean())
        visitors = np.nonzero(people.rng.random(chance.size) < chance)[0]
        hours = people.rng.uniform(8, 20, visitors.size)
        forms = people.rng.random(visitors.size) < c.form_given_visit
        form_submit = self.p.type_codes.get("form_submit")
        submits = "form_submit" in self.policy.points
        four_minutes = 4 * 60_000_000
        for i, h, form in zip(visitors.tolist(), hours.tolist(), forms.tolist(), strict=True):
            at = to_us(day_start + timedelta(hours=h))
            self._event(i, self.visit, at)
            if submits and form:
                self._event(i, form_submit, at + four_minutes)  # type: ignore[arg-type]

    def _decided(self, made: int) -> None:
        """Follow the decisions from row `made` on, as the CRM's lists and workflows would."""
        rows = self.rows
        result = self.result
        if self.first is None and len(rows) > made:
            self.first = from_us(min(r[1] for r in rows[made:]))
        today = self.today
        comebacks = self.comebacks
        for r in rows[made:]:
            i, src, dst = r[0], r[3], r[4]
            if src == NONE:
                result.transitions[Transition.ENROLLED] += 1
            elif src != dst:
                result.transitions[Transition.between(STATUSES[src], STATUSES[dst])] += 1
            reason_changed = r[6] & M_REASON
            if src != dst or reason_changed:
                self._moved(i, dst, r[11] if reason_changed else 0)
            if r[2] in comebacks:
                today["comebacks"] += 1
            if r[12] != NONE:
                step = self._step_sent(r[12])
                if step:
                    today[f"step_{step}_sent"] += 1
                    self._mail(np.array([i]), from_us(r[1]) + timedelta(hours=1), "reactivation")
        if len(rows) >= _FLUSH_ROWS:
            self.writer.write(rows)
            rows.clear()

    def _step_sent(self, action: int) -> int:
        """The step a reactivation action sends (0: withheld for the holdout)."""
        sent = self._steps.get(action)
        if sent is None:
            kind, detail = json.loads(self.names.texts["action"][action])
            sent = self._steps[action] = (
                detail.get("step", 1) if kind == "reactivation_step_due" else 0
            )
        return sent

    def _moved(self, i: int, status: int, new_reason: int) -> None:
        before = self.status.get(i)
        if before is not None:
            self.counts[before] -= 1
        level = _LEVELS[status, new_reason == NO_RESPONSE]
        self.ever[status].add(i)
        self.status[i] = level
        self.counts[level] += 1

    def _in_stream(self) -> np.ndarray:
        return np.fromiter(
            (i for i, s in self.status.items() if s in IN_SEND_STREAM_LEVELS), dtype=np.int64
        )

    def run(self, progress: Callable[[int], None] | None) -> SimulationResult:
        c = self.config
        offsets = self.people.rng.uniform(0, min(c.signup_days, c.days), c.contacts)
        offsets[: c.contacts // 2] = 0.0
        enroll = self.p.type_codes["enroll"]
        for i, offset in enumerate(offsets.tolist()):
            self._event(i, enroll, to_us(START + timedelta(days=offset)))
        for day in range(c.days):
            self._day(day)
            if progress:
                progress(1)
        self.result.ever = {_STATUS_TEXT[s]: len(ids) for s, ids in enumerate(self.ever)}
        return self.result

    def _day(self, day: int) -> None:
        c = self.config
        day_start = START + timedelta(days=day)
        if day % c.send_every_days == 0 and day > 0:
            send_at = day_start + timedelta(hours=c.send_hour)
            self._mail(self._in_stream(), send_at, "newsletter")
        self._visits(day_start)
        self.people.drift()
        day_end = to_us(day_start + timedelta(days=1))
        # The day's reactivation steps mail within the hour, into today's bucket again: drain
        # it until it stays empty (as the object simulation does).
        while events := self.buckets.pop(day, None):
            events.sort(key=_BY_TIME)
            for start in range(0, len(events), c.batch_size):
                self._apply(events[start : start + c.batch_size])
            self._tick(day_end)
        self._tick(day_end)
        self.result.daily.append(day_row(self.counts, self.today, day))
        self.today = fresh_day()

    def _apply(self, events: list[tuple]) -> None:
        events.sort(key=_BY_TIME)
        states, rows, p, ids = self.states, self.rows, self.p, self.ids
        apply, due, next_due = engine.apply, engine.due, self.next_due
        writer = self.writer
        made = len(rows)
        for at, i, kind, serial in events:
            s = states[i]
            if s is None:
                states[i] = s = apply(s, i, kind, at, simulated_event_id(serial), p, rows, ids[i])
                writer.set_arm(i, s.arm)
            else:
                apply(s, i, kind, at, simulated_event_id(serial), p, rows, ids[i])
            when = due(s)
            next_due[i] = when[0] if when is not None else _NEVER
        self._decided(made)

    def _tick(self, now: int) -> None:
        states, rows, next_due = self.states, self.rows, self.next_due
        advance, due = engine.advance, engine.due
        made = len(rows)
        for i in np.flatnonzero(next_due <= now).tolist():
            s = states[i]
            assert s is not None  # a contact not enrolled yet is never due
            advance(s, now, rows)
            when = due(s)
            next_due[i] = when[0] if when is not None else _NEVER
        self._decided(made)

    def finish(self) -> None:
        self.writer.write(self.rows)
        self.rows.clear()
        enrolled = [
            (i, self.ids[i], s.policy.segment) for i, s in enumerate(self.states) if s is not None
        ]
        self.writer.finish(enrolled, self.p.version)
        ledger.write_rollup(self.writer.db, self.writer.rollup_rows(self.p.version))


_NEVER = np.iinfo(np.int64).max


def run_coded_simulation(
    config: SimulationConfig,
    policy: Policy,
    store: SQLiteStore,
    progress: Callable[[int], None] | None,
) -> SimulationResult:
    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        ledger.create(db)
        db.execute("BEGIN IMMEDIATE")
        sim = CodedSimulation(config, policy, store, db)
        try:
            result = sim.run(progress)
            sim.finish()
            live = [i for i, s in enumerate(sim.states) if s is not None]
            write_contacts(db, [sim.ids[i] for i in live], [sim.states[i] for i in live])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.close()
    if sim.first is not None:
        record_policy(store, policy, sim.first)
    return result
