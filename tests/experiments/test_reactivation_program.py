"""Holdout, reactivation formats and the frequency cap, through the real pipeline and store."""

from __future__ import annotations

from datetime import timedelta

from crm_elasticity.core.engine import apply_event, next_due
from crm_elasticity.core.pipeline import Pipeline
from crm_elasticity.core.sqlite_store import SQLiteStore

from .helpers import T0, event, mapping

CAPPED = "\n".join(
    [
        "",
        "eligibility:",
        "  consent_property: hs_email_optout",
        "  frequency_cap: {max_sends: 3, window_days: 40}",
        "",
    ]
)


def _go_dormant(pipeline: Pipeline, contacts: list[str]) -> None:
    """Enroll on day 0 and three unanswered sends (days 1-3): Dormant on day 3."""
    events = []
    for cid in contacts:
        events.append(event(f"{cid}-enroll", cid, "enroll", 0))
        events += [event(f"{cid}-send{d}", cid, "send", d) for d in (1, 2, 3)]
    pipeline.process(events)


def _step_actions(store: SQLiteStore, cid: str) -> list[tuple[str, dict]]:
    return [
        (a.kind, a.detail)
        for d in store.ledger_for(cid)
        for a in d.actions
        if a.kind.startswith("reactivation_step")
    ]


def test_holdout_contacts_never_get_a_reactivation_send_but_their_timeline_advances():
    m = mapping()
    store = SQLiteStore()
    pipeline = Pipeline(store, m.policy)
    contacts = [f"h{i}" for i in range(1500)]
    _go_dormant(pipeline, contacts)
    pipeline.tick(T0 + timedelta(days=60))
    held = treated = 0
    for cid in contacts:
        group = store.get_contacts([cid])[cid].experiments["holdout"]
        kinds = [k for k, _ in _step_actions(store, cid)]
        assert len(kinds) == 2, kinds  # both steps fell due for everyone
        if group == "holdout":
            held += 1
            assert set(kinds) == {"reactivation_step_withheld"}
        else:
            treated += 1
            assert set(kinds) == {"reactivation_step_due"}
        final = store.get_contacts([cid])[cid]
        assert final.campaign_status.value == "Suppressed"  # no_response for both groups
    assert 100 < held < 200 and treated > 1300


def test_step_two_uses_the_other_format_than_step_one():
    m = mapping()
    store = SQLiteStore()
    pipeline = Pipeline(store, m.policy)
    contacts = [f"f{i}" for i in range(60)]
    _go_dormant(pipeline, contacts)
    pipeline.tick(T0 + timedelta(days=45))
    seen = set()
    for cid in contacts:
        (_, first), (_, second) = _step_actions(store, cid)
        assigned = store.get_contacts([cid])[cid].experiments["reactivation_format"]
        assert first["format"] == assigned == first["variants"]["format"]
        assert {first["format"], second["format"]} == {"HTML", "Plain-Text"}
        assert (first["step"], second["step"]) == (1, 2)
        assert first["cycle"] == second["cycle"] == 1
        seen.add(first["format"])
    assert seen == {"HTML", "Plain-Text"}


def test_without_a_format_experiment_steps_still_alternate_formats():
    m = mapping(replace={"    element: format\n": "    element: layout\n"})
    state, _ = apply_event(None, event("e0", "x", "enroll", 0), m.policy)
    for n, day in enumerate((1, 2, 3)):
        state, _ = apply_event(state, event(f"s{n}", "x", "send", day), m.policy)
    from crm_elasticity.core.engine import advance

    _, decisions = advance(state, T0 + timedelta(days=41), m.policy)
    formats = [a.detail["format"] for d in decisions for a in d.actions]
    assert formats == ["HTML", "Plain-Text"]


def test_frequency_cap_delays_a_due_step_instead_of_skipping_it():
    m = mapping(CAPPED, replace={"eligibility:\n  consent_property: hs_email_optout\n": ""})
    state = None
    for eid, kind, day in (
        ("e0", "enroll", 0),
        ("s1", "send", 1),
        ("s2", "send", 2),
        ("s3", "send", 3),
    ):
        state, _ = apply_event(state, event(eid, "cap", kind, day), m.policy)
    assert len(state.send_times) == 3
    due = next_due(state, m.policy)
    assert due.rule == "cooling_done"
    assert due.at == T0 + timedelta(days=41)  # oldest counted send (day 1) + 40-day window
    uncapped = mapping()
    plain = None
    for eid, kind, day in (
        ("e0", "enroll", 0),
        ("s1", "send", 1),
        ("s2", "send", 2),
        ("s3", "send", 3),
    ):
        plain, _ = apply_event(plain, event(eid, "cap", kind, day), uncapped.policy)
    assert next_due(plain, uncapped.policy).at == T0 + timedelta(days=33)

    from crm_elasticity.core.engine import advance

    _, decisions = advance(state, T0 + timedelta(days=60), m.policy)
    steps = [(d.at, a.detail) for d in decisions for a in d.actions]
    assert steps[0][0] == T0 + timedelta(days=41)
    assert steps[0][1]["delay_reason"] == "frequency_cap"
    assert steps[0][1]["delayed_from"] == (T0 + timedelta(days=33)).isoformat()
    assert steps[1][0] == T0 + timedelta(days=48)  # step 2 keeps its wait after step 1
    assert "delay_reason" not in steps[1][1]


def test_capped_ticks_are_idempotent_and_independent_of_scheduler_frequency():
    m = mapping(CAPPED, replace={"eligibility:\n  consent_property: hs_email_optout\n": ""})
    results = []
    for every_hours in (1, 24, None):
        store = SQLiteStore()
        pipeline = Pipeline(store, m.policy)
        _go_dormant(pipeline, ["a", "b", "c"])
        end = T0 + timedelta(days=50)
        if every_hours is None:
            pipeline.tick(end)
        else:
            now = T0 + timedelta(days=3)
            while now < end:
                now += timedelta(hours=every_hours)
                pipeline.tick(min(now, end))
        assert pipeline.tick(end).decisions == 0  # a second sync at the same now writes nothing
        results.append([(d.at, d.rule, d.reason) for c in "abc" for d in store.ledger_for(c)])
    assert results[0] == results[1] == results[2]
