"""`elasticity simulate`: a synthetic population run through the real engine and store.

Each contact has a seeded propensity to open, click and visit, and drifts between warm and
cold spells, so the audience contracts (engaged contacts leave, silent ones go dormant) and
expands again (reactivations) the way a real list does. The program mails its send stream
weekly; reactivation emails go out when the engine says a step is due.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from crm_elasticity.core.gcpause import cyclic_gc_paused
from crm_elasticity.core.models import STATE_COLOURS, Event, Status, SuppressionReason
from crm_elasticity.core.order import event_order
from crm_elasticity.core.pipeline import Applied, Pipeline
from crm_elasticity.core.policy import Policy
from crm_elasticity.core.publish import Renames, partial_path, publish, remove_store
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.synthetic import (
    IN_SEND_STREAM_LEVELS,
    START,
    STATUSES,
    ListLevel,
    Population,
    SimulationConfig,
    SimulationResult,
    day_row,
    fresh_day,
    simulated_event_id,
)

TICK_PAGE = 20_000
_COMEBACKS = frozenset({"reactivated_from_dormant", "reactivated_from_alternate_channel"})


class _Simulation:
    def __init__(self, config: SimulationConfig, policy: Policy, store: SQLiteStore) -> None:
        self.config = config
        self.policy = policy
        self.store = store
        # Generated day by day in time order: no event arrives late, so no history is kept.
        self.pipeline = Pipeline(store, policy, revision_window=None)
        self.people = Population(config)
        self.result = SimulationResult(config, policy.version, store.path)
        self.buckets: dict[int, list[Event]] = {}
        self.serial = 0
        self.ever: dict[str, set[str]] = {s: set() for s in STATUSES}
        # What the CRM's dynamic lists would show, kept from the decisions as they commit.
        self.status: dict[str, ListLevel] = {}
        self.counts: Counter = Counter()
        self.today: Counter = fresh_day()

    def _event(self, cid: str, kind: str, at: datetime, campaign: str) -> None:
        self.serial += 1
        day = (at - START).days
        if day >= self.config.days:
            return
        # Validated: pydantic builds it faster than `model_construct` does in Python.
        event = Event(
            event_id=simulated_event_id(self.serial),
            contact_id=cid,
            type=kind,
            occurred_at=at,
            campaign=campaign,
            source="simulate",
        )
        self.buckets.setdefault(day, []).append(event)
        self.result.events[kind] += 1

    def _mail(self, idx: np.ndarray, at: datetime, campaign: str) -> None:
        """One email to these contacts, and the opens, clicks and exits it causes."""
        c, rng, ids = self.config, self.people.rng, self.people.ids
        idx = idx[self.people.reachable[idx]]
        self.result.sends[campaign] += idx.size
        for i in idx.tolist():
            self._event(ids[i], "send", at, campaign)
        opened = idx[rng.random(idx.size) < self.people.open_probability(idx)]
        delays = rng.exponential(8.0, opened.size)
        clicked = rng.random(opened.size) < c.click_given_open
        for i, hours, click in zip(opened.tolist(), delays.tolist(), clicked.tolist(), strict=True):
            when = at + timedelta(hours=hours)
            self._event(ids[i], "open", when, campaign)
            if click:
                self._event(ids[i], "click", when + timedelta(minutes=3), campaign)
        exits = rng.random(idx.size)
        for i, draw in zip(idx.tolist(), exits.tolist(), strict=True):
            if draw < c.hard_bounce_per_send:
                self._event(ids[i], "hard_bounce", at + timedelta(minutes=1), campaign)
                self.people.reachable[i] = False
            elif draw < c.hard_bounce_per_send + c.unsubscribe_per_send:
                self._event(ids[i], "unsubscribe", at + timedelta(hours=2), campaign)

    def _visits(self, day_start: datetime) -> None:
        people, c = self.people, self.config
        chance = c.visit_per_day * people.warm * (people.open_p / people.open_p.mean())
        visitors = np.nonzero(people.rng.random(chance.size) < chance)[0]
        hours = people.rng.uniform(8, 20, visitors.size)
        forms = people.rng.random(visitors.size) < c.form_given_visit
        submits = "form_submit" in self.policy.points
        for i, h, form in zip(visitors.tolist(), hours.tolist(), forms.tolist(), strict=True):
            at = day_start + timedelta(hours=h)
            self._event(people.ids[i], "high_intent_visit", at, "web")
            if submits and form:
                self._event(people.ids[i], "form_submit", at + timedelta(minutes=4), "web")

    def _commit(self, applied: Applied) -> None:
        self.store.commit(applied.batch)
        self.result.transitions.update(applied.stats.transitions)
        today = self.today
        for d in applied.decisions:
            if d.from_status != d.to_status or "suppression_reason" in d.changes:
                self._moved(d.contact_id, d.to_status, d.changes)
            if d.reason in _COMEBACKS:
                today["comebacks"] += 1
            for action in d.actions:
                if action.kind == "reactivation_step_due":
                    today[f"step_{action.detail.get('step', 1)}_sent"] += 1
                    idx = np.array([self.people.index[d.contact_id]])
                    self._mail(idx, d.at + timedelta(hours=1), "reactivation")

    def _moved(self, cid: str, status: Status, changes: dict) -> None:
        before = self.status.get(cid)
        if before is not None:
            self.counts[before] -= 1
        reason = changes.get("suppression_reason", (None, None))[1]
        level = ListLevel.of(status, no_response=reason == SuppressionReason.NO_RESPONSE)
        self.status[cid] = level
        self.counts[level] += 1
        self.ever[status.value].add(cid)

    def _in_stream(self) -> np.ndarray:
        index = self.people.index
        return np.fromiter(
            (index[cid] for cid, s in self.status.items() if s in IN_SEND_STREAM_LEVELS),
            dtype=np.int64,
        )

    def run(self, progress: Callable[[int], None] | None) -> SimulationResult:
        c = self.config
        # Sign-ups arrive over the first weeks, as a growing list does.
        offsets = self.people.rng.uniform(0, min(c.signup_days, c.days), c.contacts)
        offsets[: c.contacts // 2] = 0.0
        for cid, offset in zip(self.people.ids.tolist(), offsets.tolist(), strict=True):
            self._event(cid, "enroll", START + timedelta(days=offset), "enroll")
        for day in range(c.days):
            self._day(day)
            if progress:
                progress(1)
        self.result.ever = {s: len(ids) for s, ids in self.ever.items()}
        return self.result

    def _day(self, day: int) -> None:
        c = self.config
        day_start = START + timedelta(days=day)
        if day % c.send_every_days == 0 and day > 0:
            send_at = day_start + timedelta(hours=c.send_hour)
            self._mail(self._in_stream(), send_at, "newsletter")
        self._visits(day_start)
        self.people.drift()
        day_end = day_start + timedelta(days=1)
        # The day's reactivation steps fire in the tick and mail within the hour: those emails
        # (and the opens they cause) land in today's bucket again, so drain it until it stays
        # empty rather than leave them behind undecided.
        while events := self.buckets.pop(day, None):
            events.sort(key=event_order)  # batches in the order events are decided too
            for start in range(0, len(events), c.batch_size):
                self._commit(self.pipeline.prepare_events(events[start : start + c.batch_size]))
            self._tick(day_end)
        self._tick(day_end)
        self.result.daily.append(self._counts(day))

    def _tick(self, now: datetime) -> None:
        after = ""
        while ids := self.store.due_contacts(now, after=after, limit=TICK_PAGE):
            self._commit(self.pipeline.prepare_tick(ids, now))
            after = ids[-1]

    def _counts(self, day: int) -> dict[str, int]:
        row = day_row(self.counts, self.today, day)
        self.today = fresh_day()
        return row


def run_simulation(
    config: SimulationConfig,
    policy: Policy,
    store_path: Path | str,
    progress: Callable[[int], None] | None = None,
    engine: str = "coded",
    before_publish: Callable[[SimulationResult], Renames | None] | None = None,
    phase: Callable[[str], None] | None = None,
) -> SimulationResult:
    """Run on a fresh store at `store_path`. `engine`: "coded" (the bulk path of
    `core.coded`) or "object" (the pipeline); the same seed gives the same run.

    The store is built beside the previous one (`<store>.partial`) and replaces it only once
    complete: a run that fails or is interrupted leaves the previous store as it was.
    `before_publish(result)` runs once the run and its headline are complete, before the
    store takes its name: it may write files for the run under temporary names and return
    (written, final name) pairs, renamed together with the store (see `core.publish`).
    `phase(name)` is told what the run does next: "deciding" (day by day), "writing" (the
    store, once the last day is decided), "summarising" (the headline from the ledger)."""
    if engine not in ("coded", "object"):
        raise ValueError(f"engine: expected 'coded' or 'object', got {engine!r}")
    from crm_elasticity.core.report import headline

    if phase is not None:
        progress = _phased(progress, phase, config.days)
    if str(store_path) == ":memory:":
        store = SQLiteStore(":memory:")
        try:
            with store.bulk(), cyclic_gc_paused():  # see replay_file
                result = _Simulation(config, policy, store).run(progress)
            result.headline = headline(store)
        finally:
            store.close()
        for written, name in (before_publish(result) or ()) if before_publish else ():
            written.replace(name)
        return result
    final = Path(store_path)
    partial = partial_path(final)
    remove_store(partial)
    try:
        if engine == "coded":
            from crm_elasticity.core.coded.simulate import run_coded_simulation

            # Written in several transactions: the store takes its name once all have landed.
            store = SQLiteStore(partial, defer_limit=5_000, cache_mb=8)
            try:
                with cyclic_gc_paused():
                    result = run_coded_simulation(config, policy, store, progress)
            finally:
                store.close()
        else:
            store = SQLiteStore(partial)
            try:
                with store.bulk(), cyclic_gc_paused():  # see replay_file
                    result = _Simulation(config, policy, store).run(progress)
            finally:
                store.close()
        if phase is not None:
            phase("summarising")
        store = SQLiteStore(partial)
        try:
            result.headline = headline(store)
        finally:
            store.close()
        result.store_path = str(final)
        renames = list(before_publish(result) or ()) if before_publish else []
    except BaseException:
        remove_store(partial)
        raise
    publish(partial, final, renames)
    return result


def _phased(
    progress: Callable[[int], None] | None, phase: Callable[[str], None], days: int
) -> Callable[[int], None]:
    """`progress` that also says when the last day is decided."""
    phase("deciding")
    done = [0]

    def report(n: int) -> None:
        if progress:
            progress(n)
        done[0] += n
        if done[0] == days:
            phase("writing")

    return report


def plot_audience(result: SimulationResult, path: Path) -> None:
    """The audience by state over dated days, suppression split by reason, and below it the
    reactivation cycle: steps sent each day and the comebacks they brought."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    rows = result.daily
    dates = [START + timedelta(days=row["day"] + 1) for row in rows]  # counts at the day's end
    layers = [
        ("Active", "Active", STATE_COLOURS["Active"], None),
        ("Reactivated", "Reactivated", STATE_COLOURS["Reactivated"], None),
        ("Engaged", "Engaged (handed to sales)", STATE_COLOURS["Engaged"], None),
        ("Dormant", "Dormant (cooling / reactivation)", STATE_COLOURS["Dormant"], None),
        ("suppressed_no_response", "Suppressed: no response", STATE_COLOURS["Suppressed"], None),
        ("suppressed_compliance", "Suppressed: compliance", "#5A5A5A", "//"),
    ]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 7), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    stacks = top.stackplot(
        dates,
        [[row.get(key, 0) for row in rows] for key, *_ in layers],
        labels=[label for _, label, *_ in layers],
        colors=[colour for _, _, colour, _ in layers],
        alpha=0.9,
    )
    for stack, (*_, hatch) in zip(stacks, layers, strict=True):
        if hatch:
            stack.set_hatch(hatch)
    in_stream = [row["Active"] + row["Reactivated"] for row in rows]
    top.step(
        dates, in_stream, where="post", color="black", linewidth=1.4, label="in the send stream"
    )
    top.set_ylabel("contacts (end of day)")
    top.set_title(f"Elastic audience: {result.config.contacts:,} contacts by state")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    cycle = (
        ("step_1_sent", "reactivation step 1 sent", STATE_COLOURS["Dormant"]),
        ("step_2_sent", "reactivation step 2 sent", "#6F4E7C"),
        ("comebacks", "comebacks", STATE_COLOURS["Reactivated"]),
    )
    for key, label, colour in cycle:
        bottom.step(
            dates,
            [row.get(key, 0) for row in rows],
            where="post",
            color=colour,
            label=label,
            linewidth=1.3,
        )
    bottom.set_ylabel("per day")
    bottom.set_xlabel("date (UTC)")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


REPORT_FILES = ("summary.json", "audience.png", "summary.md")


def write_report(result: SimulationResult, directory: Path, suffix: str = "") -> list[Path]:
    """`summary.json`, `audience.png` and `summary.md` in `directory`, each name followed by
    `suffix` (a temporary name, renamed when the run is published)."""
    directory.mkdir(parents=True, exist_ok=True)
    summary, plot, markdown = (directory / f"{name}{suffix}" for name in REPORT_FILES)
    summary.write_text(json.dumps({**result.summary(), "daily": result.daily}, indent=2))
    plot_audience(result, plot)
    markdown.write_text(result.markdown() + "\n![audience by state](audience.png)\n")
    return [summary, plot, markdown]
