"""Late events are decided as if they had arrived in order: the contact ends where the sorted
events put it, what was already done in the CRM stays done, and the ledger says so."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from crm_elasticity.connectors.runner import Runner
from crm_elasticity.core.explain import explain_contact
from crm_elasticity.core.models import Event, Status
from crm_elasticity.core.order import MAX_EVENTS, REVISED
from crm_elasticity.core.pipeline import Pipeline
from crm_elasticity.core.policy import Policy
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.fakes.memory_crm import MemoryConnector, MemoryCrm, memory_mapping
from tests.helpers import T0, days

POLICY = Policy(version="order")


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


def event(event_id: str, kind: str, at: timedelta, contact: str = "c1") -> Event:
    return Event(event_id=event_id, contact_id=contact, type=kind, occurred_at=T0 + at)


def sorted_outcome(events: list[Event], policy: Policy = POLICY):
    """The reference: every event in one batch, in order."""
    store = SQLiteStore(":memory:")
    Pipeline(store, policy).process(events)
    return store


def comparable(state):
    return replace(state, as_of=T0)


SENDS_AND_A_LATE_CLICK = [
    event("enroll", "enroll", hours(0)),
    event("s1", "send", hours(1)),
    event("s2", "send", hours(2)),
    event("s4", "send", hours(4)),
    event("k3", "click", hours(3)),
]


def test_a_late_click_is_decided_before_the_send_after_it_and_no_comeback_is_invented() -> None:
    store = SQLiteStore(":memory:")
    pipeline = Pipeline(store, POLICY)
    pipeline.process(SENDS_AND_A_LATE_CLICK[:4])
    assert store.get_contacts(["c1"])["c1"].campaign_status is Status.DORMANT

    stats = pipeline.process(SENDS_AND_A_LATE_CLICK[4:])

    state = store.get_contacts(["c1"])["c1"]
    assert state.campaign_status is Status.ACTIVE  # the click reset the count before send 3
    assert (state.unanswered_sends, state.engagement_score) == (1, 10.0)
    assert state.status_changed_at == T0  # it never left Active
    reference = sorted_outcome(SENDS_AND_A_LATE_CLICK).get_contacts(["c1"])["c1"]
    assert comparable(state) == comparable(reference)
    assert stats.revised == 1
    reasons = [d.reason for d in store.ledger_for("c1")]
    assert "reactivated_from_dormant" not in reasons
    revision = store.ledger_for("c1")[-1]
    assert revision.reason == REVISED
    assert (revision.from_status, revision.to_status) == (Status.DORMANT, Status.ACTIVE)
    assert revision.changes["unanswered_sends"] == (3, 1)


def test_events_at_the_same_instant_are_decided_in_event_id_order() -> None:
    at = hours(5)
    sends = [event(f"s{i}", "send", hours(i)) for i in (1, 2)]
    tied = [event("b-send", "send", at), event("a-click", "click", at)]
    store = SQLiteStore(":memory:")
    pipeline = Pipeline(store, POLICY)
    pipeline.process([event("enroll", "enroll", hours(0)), *sends])
    pipeline.process(tied[:1])  # the third send: Dormant
    pipeline.process(tied[1:])  # the click at the same instant sorts first

    state = store.get_contacts(["c1"])["c1"]
    reference = sorted_outcome([event("enroll", "enroll", hours(0)), *sends, *tied])
    assert state.campaign_status is Status.ACTIVE
    assert comparable(state) == comparable(reference.get_contacts(["c1"])["c1"])


def test_a_late_event_re_decides_the_time_rules_fired_after_it() -> None:
    """A late open from before a dormancy that a sync already fired: in order the contact never
    went dormant, and the reactivation step the sync wrote stays a fact in the ledger."""
    store = SQLiteStore(":memory:")
    pipeline = Pipeline(store, POLICY)
    pipeline.process([event("enroll", "enroll", days(0))])
    pipeline.tick(T0 + days(125))  # dormant at day 90, step 1 at day 120
    assert store.get_contacts(["c1"])["c1"].reactivation_step == 1

    pipeline.process([event("o80", "open", days(80))])

    state = store.get_contacts(["c1"])["c1"]
    assert state.campaign_status is Status.ACTIVE  # silence now counts from day 80
    assert (state.reactivation_cycle, state.reactivation_step) == (0, 0)
    revision = store.ledger_for("c1")[-1]
    assert revision.reason == REVISED and revision.actions == []
    assert any("reactivation_step_1" in line for line in revision.changes["decisions"][0])
    store.close()


def test_a_late_event_older_than_the_kept_history_is_decided_now_and_counted() -> None:
    store = SQLiteStore(":memory:")
    pipeline = Pipeline(store, POLICY)
    pipeline.process([event("enroll", "enroll", days(0))])
    pipeline.process([event(f"s{i}", "send", days(10 * i)) for i in range(1, 3)])

    stats = pipeline.process([event("o1", "open", days(1))])  # 19 days before the latest

    assert (stats.revised, stats.late_unrevised) == (0, 1)
    assert [d.reason for d in store.ledger_for("c1")][-2:] == ["decided_late", "open"]


def test_the_kept_history_is_bounded() -> None:
    store = SQLiteStore(":memory:")
    pipeline = Pipeline(store, POLICY)
    opens = [event(f"o{i}", "open", hours(i)) for i in range(MAX_EVENTS + 50)]
    for start in range(0, len(opens), 50):
        pipeline.process(opens[start : start + 50])
    history = store.histories(["c1"])["c1"]
    assert len(history.events) <= MAX_EVENTS
    assert min(e.occurred_at for e in history.events) >= opens[-1].occurred_at - days(7) - days(2)


@pytest.mark.parametrize("seed", range(25))
def test_any_delivery_order_ends_where_the_sorted_events_end(seed: int) -> None:
    rng = random.Random(seed)
    kinds = ["send"] * 6 + ["open", "click", "high_intent_visit", "unsubscribe", "resubscribe"]
    events = [event("enroll", "enroll", hours(0))]
    at = 0.0
    for i in range(rng.randint(5, 40)):
        at += rng.expovariate(1 / 30)  # hours
        events.append(event(f"e{i:03d}", rng.choice(kinds), hours(at)))
    shuffled = list(events)
    rng.shuffle(shuffled)
    store = SQLiteStore(":memory:")
    pipeline = Pipeline(store, POLICY, revision_window=days(10_000))
    for start in range(0, len(shuffled), 3):
        pipeline.process(shuffled[start : start + 3])
    horizon = max(e.occurred_at for e in events)
    pipeline.tick(horizon)
    reference_store = sorted_outcome(events)
    Pipeline(reference_store, POLICY).tick(horizon)
    got = store.get_contacts(["c1"])["c1"]
    assert comparable(got) == comparable(reference_store.get_contacts(["c1"])["c1"])


# ---- through the connected runner: actions already done in the CRM are facts ---------------


@pytest.fixture
def runner() -> Runner:
    return Runner(MemoryConnector(memory_mapping(), MemoryCrm()), SQLiteStore(":memory:"))


def test_a_revision_keeps_the_hand_off_task_already_created_and_owes_no_second(
    runner: Runner,
) -> None:
    runner.process([event("k1", "click", hours(1)), event("k2", "click", hours(2))])
    crm = runner.connector.crm  # type: ignore[attr-defined]
    assert len(crm.tasks) == 1  # Engaged at +2 h

    # A visit at +1.5 h: in order the hand-off happens there, not at +2 h. Same hand-off.
    stats = runner.process([event("v15", "high_intent_visit", hours(1.5))])

    assert stats.revised == 1
    state = runner.store.get_contacts(["c1"])["c1"]
    assert state.campaign_status is Status.ENGAGED
    assert state.engagement_score == 35.0
    assert state.status_changed_at == T0 + hours(1.5)
    assert len(crm.tasks) == 1
    revision = runner.store.ledger_for("c1")[-1]
    assert revision.reason == REVISED and revision.actions == []
    assert crm.values["c1"]["engagement_score"] == 35.0


def test_a_revision_that_reaches_a_new_hand_off_owes_its_task(runner: Runner) -> None:
    runner.process([event("k1", "click", hours(1))])
    crm = runner.connector.crm  # type: ignore[attr-defined]
    assert not crm.tasks

    runner.process([event("k05", "click", hours(0.5))])

    assert runner.store.get_contacts(["c1"])["c1"].campaign_status is Status.ENGAGED
    assert len(crm.tasks) == 1
    assert [a.kind for a in runner.store.ledger_for("c1")[-1].actions] == ["handoff_task"]


def test_explain_shows_the_revision_with_both_paths(tmp_path: Path) -> None:
    path = tmp_path / "elasticity.sqlite3"
    store = SQLiteStore(path)
    pipeline = Pipeline(store, POLICY)
    pipeline.process(SENDS_AND_A_LATE_CLICK[:4])
    pipeline.process(SENDS_AND_A_LATE_CLICK[4:])
    store.close()

    text = explain_contact(path, "c1")

    assert text is not None
    assert "Dormant -> Active" in text and "engagement/revised" in text
    assert "late click (k3)" in text
    assert "was: " in text and "send/unanswered_sends Active -> Dormant" in text
    assert "now: " in text and "engagement/click" in text
    assert text.splitlines()[-1].startswith("now Active")


def test_the_report_counts_revised_and_beyond_history_late_events(tmp_path: Path) -> None:
    from crm_elasticity.core.report import build

    path = tmp_path / "elasticity.sqlite3"
    store = SQLiteStore(path)
    pipeline = Pipeline(store, POLICY)
    pipeline.process(SENDS_AND_A_LATE_CLICK[:4])
    pipeline.process(SENDS_AND_A_LATE_CLICK[4:])  # revised
    pipeline.process([event("s30", "send", days(30))])
    pipeline.process([event("o1", "open", hours(3.5))])  # older than the kept history
    store.close()

    quality = build(path, None, None)["data_quality"]

    assert quality["late_events_revised"] == 1
    assert quality["late_events_beyond_history"] == 1


def test_the_kept_history_stays_within_one_dynamodb_item() -> None:
    store = SQLiteStore(":memory:")
    pipeline = Pipeline(store, POLICY)
    url = "https://example.com/" + "p" * 2000
    visits = [replace(event(f"v{i}", "high_intent_visit", hours(i)), url=url) for i in range(150)]
    for start in range(0, len(visits), 10):
        pipeline.process(visits[start : start + 10])
    history = store.histories(["c1"])["c1"]
    assert 0 < len(history.events) < 150
    assert len(store.execute("SELECT body FROM contact_history")[0][0]) < 400_000
    reference = sorted_outcome(visits).get_contacts(["c1"])["c1"]
    assert comparable(store.get_contacts(["c1"])["c1"]) == comparable(reference)


def test_an_event_that_decided_nothing_still_bounds_what_can_be_re_decided() -> None:
    """A resubscribe on an Active contact decides nothing; once it is folded into the kept
    state, an unsubscribe from before it cannot be put first any more (the resubscribe would
    have lifted it): it is decided at the current time and counted, not revised wrongly."""
    store = SQLiteStore(":memory:")
    pipeline = Pipeline(store, POLICY)
    pipeline.process([event("enroll", "enroll", hours(0)), event("r5", "resubscribe", hours(5))])
    pipeline.process([event("s10", "send", days(10))])  # the rest is older than the window

    stats = pipeline.process([event("u3", "unsubscribe", hours(3))])

    assert (stats.revised, stats.late_unrevised) == (0, 1)
    assert store.ledger_for("c1")[-2].reason == "decided_late"


def test_events_that_decided_nothing_keep_the_history_they_belong_to() -> None:
    """Resubscribes on an Active contact decide nothing (its `as_of` stays at enrolment), yet
    they are recent: an unsubscribe from before the last one still goes first."""
    store = SQLiteStore(":memory:")
    pipeline = Pipeline(store, POLICY)
    pipeline.process([event("enroll", "enroll", days(0)), event("r5", "resubscribe", days(5))])
    pipeline.process([event("r10", "resubscribe", days(10))])
    pipeline.process([event("s12", "send", days(12))])

    stats = pipeline.process([event("u9", "unsubscribe", days(9.5))])

    assert (stats.revised, stats.late_unrevised) == (1, 0)
    state = store.get_contacts(["c1"])["c1"]
    assert (state.campaign_status, state.unanswered_sends) == (Status.ACTIVE, 1)
