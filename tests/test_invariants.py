"""Invariants of the rules (README, "How it works"), property-tested over random event histories."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from crm_elasticity.core.engine import advance, advance_owned, apply_event, apply_owned
from crm_elasticity.core.models import COMPLIANCE_REASONS, Event, Status
from crm_elasticity.core.pipeline import Pipeline
from crm_elasticity.core.policy import Policy
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.helpers import T0, days

POLICY = Policy(version="prop")
KINDS = [
    "open",
    "click",
    "high_intent_visit",
    "send",
    "send",
    "send",
    "unsubscribe",
    "hard_bounce",
    "spam_complaint",
    "resubscribe",
    "enroll",
]
HORIZON = 420

histories = st.lists(
    st.tuples(st.sampled_from(KINDS), st.floats(0, 400, allow_nan=False)), min_size=1, max_size=40
).map(lambda items: sorted(items, key=lambda item: item[1]))


def to_events(history, contact="c1"):
    # Events at the same instant are decided in event-id order (README, "Order"); zero-padded
    # ids make that the list's order, which `run` below applies (c1-10 would sort before c1-2).
    return [
        Event(
            event_id=f"{contact}-{i:03d}",
            contact_id=contact,
            type=kind,
            occurred_at=T0 + days(day),
        )
        for i, (kind, day) in enumerate(history)
    ]


def run(events, tick_times=()):
    """Apply events in time order, ticking at the given extra times, then advance to HORIZON."""
    state, decisions = None, []
    ticks = sorted(T0 + days(t) for t in tick_times)
    for event in events:
        while ticks and state is not None and ticks[0] < event.occurred_at:
            state, fired = advance(state, ticks.pop(0), POLICY)
            decisions += fired
        state, fired = apply_event(state, event, POLICY)
        decisions += fired
    for tick in [*ticks, T0 + days(HORIZON)]:
        state, fired = advance(state, tick, POLICY)
        decisions += fired
    return state, decisions


def comparable(state):
    return replace(state, as_of=T0)


@given(histories)
@settings(max_examples=150, deadline=None)
def test_scheduler_frequency_does_not_change_outcomes(history):
    events = to_events(history)
    once_state, once = run(events)
    daily_state, daily = run(events, tick_times=range(HORIZON))
    hourly_state, hourly = run(events, tick_times=[h / 24 for h in range(0, 200 * 24, 7)])
    assert comparable(once_state) == comparable(daily_state) == comparable(hourly_state)
    assert once == daily == hourly


@given(histories, st.floats(0, HORIZON))
@settings(max_examples=100, deadline=None)
def test_a_second_tick_at_the_same_now_changes_nothing(history, at):
    state, _ = run(to_events(history))
    now = T0 + days(max(at, HORIZON))
    state, _ = advance(state, now, POLICY)
    again, decisions = advance(state, now, POLICY)
    assert decisions == [] and again == state


@given(histories)
@settings(max_examples=150, deadline=None)
def test_score_is_never_negative_and_compliance_is_sticky(history):
    state, decisions = None, []
    for event in to_events(history):
        state, fired = apply_event(state, event, POLICY)
        assert state.engagement_score >= 0
        decisions += fired
    state, fired = advance(state, T0 + days(HORIZON), POLICY)
    decisions += fired
    # Replay the decision trail: once compliance-suppressed, only resubscribe may lift it.
    locked = False
    for d in decisions:
        if locked and d.to_status is not Status.SUPPRESSED:
            assert d.reason == "resubscribed"
        if d.to_status is Status.SUPPRESSED and d.rule == "compliance":
            locked = True
        elif d.reason == "resubscribed":
            locked = False
    if locked:
        assert state.campaign_status is Status.SUPPRESSED
        assert state.suppression_reason in COMPLIANCE_REASONS


@given(histories, st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_redelivered_events_change_nothing(history, data):
    events = to_events(history)
    store = SQLiteStore(":memory:")
    pipeline = Pipeline(store, POLICY)
    first = pipeline.process(events)
    snapshot = store.get_contacts(["c1"])
    ledger = store.ledger_for("c1")
    again = data.draw(st.lists(st.sampled_from(events), min_size=1, max_size=len(events)))
    second = pipeline.process(again)
    assert second.applied == 0 and second.duplicates == len(again) and second.decisions == 0
    assert store.get_contacts(["c1"]) == snapshot
    assert store.ledger_for("c1") == ledger
    assert first.applied == len({e.event_id for e in events})


@given(histories)
@example([("open", 0.0)] * 10 + [("send", 0.0)])  # ties past ten events: id order, not text
@settings(max_examples=40, deadline=None)
def test_pipeline_ticks_are_idempotent_and_match_the_engine(history):
    events = to_events(history)
    store = SQLiteStore(":memory:")
    pipeline = Pipeline(store, POLICY)
    pipeline.process(events)
    now = T0 + days(HORIZON)
    pipeline.tick(now)
    assert pipeline.tick(now).decisions == 0
    expected, _ = run(events)
    stored = store.get_contacts(["c1"])["c1"]
    assert comparable(stored) == comparable(expected)


TRACKED = (
    "campaign_status",
    "engagement_score",
    "last_engagement_date",
    "reactivation_cycle",
    "reactivation_step",
    "unanswered_sends",
    "suppression_reason",
    "status_changed_at",
)


@given(
    histories,
    st.sampled_from(
        [POLICY, Policy(version="capped", handoff_on_engaged=False, max_reactivation_cycles=0)]
    ),
)
@settings(max_examples=150, deadline=None)
def test_the_ledger_explains_every_tracked_field(history, policy):
    """Folding the decisions' before/after values from enrolment gives the contact's state:
    no change goes unrecorded, every recorded `before` is what the field held, and nothing is
    recorded that did not change."""
    state, decisions = None, []
    for event in to_events(history):
        state, fired = apply_event(state, event, policy)
        decisions += fired
    state, fired = advance(state, T0 + days(HORIZON), policy)
    decisions += fired
    first = decisions[0]
    assert first.rule == "enroll"
    held = {name: None for name in TRACKED}
    held.update(
        campaign_status=Status.ACTIVE,
        engagement_score=0.0,
        reactivation_cycle=0,
        reactivation_step=0,
        unanswered_sends=0,
        status_changed_at=first.at,
    )
    for d in decisions[1:]:
        assert d.changes or d.actions, d
        assert d.from_status == held["campaign_status"]
        for name, (old, new) in d.changes.items():
            if name in held:
                assert held[name] == old, (d, name)
                assert old != new, (d, name)
                held[name] = new
        assert d.to_status == held["campaign_status"]
    assert held == {name: getattr(state, name) for name in TRACKED}


WORTHLESS = Policy(
    version="worthless",
    points={"open": 5.0, "click": 10.0, "high_intent_visit": 15.0, "webinar": 0.0},
)


@given(histories, st.lists(st.floats(0, 400, allow_nan=False), max_size=6))
@settings(max_examples=150, deadline=None)
def test_an_event_or_tick_that_decides_nothing_leaves_the_state_alone(history, late_days):
    """The pipeline and a bulk run change states in place and store only those with a
    decision: a state that moved without one would differ from its stored row."""
    kinds = [("webinar" if kind == "enroll" else kind, day) for kind, day in history]
    events = to_events(kinds + [("webinar", day) for day in late_days])
    state = None
    for i, event in enumerate(events):
        for step in ("event", "tick"):
            before = None if state is None else state.copy()
            decisions: list = []
            if step == "event":
                state = apply_owned(state, event, WORTHLESS, decisions)
            else:
                advance_owned(state, event.occurred_at + days(i % 40), WORTHLESS, decisions)
            if not decisions and before is not None:
                assert state == before, (step, event)
