"""Every rule in the README's "How it works" and every transition of the state table, with
the default policy."""

from __future__ import annotations

import pytest

from crm_elasticity.core.engine import UnknownEventType, advance, apply_event, next_due
from crm_elasticity.core.models import Status, SuppressionReason
from crm_elasticity.core.policy import Policy
from tests.helpers import T0, days


def run(policy, events, until=None):
    state, decisions = None, []
    for event in events:
        state, fired = apply_event(state, event, policy)
        decisions += fired
    if until is not None:
        state, fired = advance(state, T0 + days(until), policy)
        decisions += fired
    return state, decisions


def test_unknown_contact_enrolls_active_with_score_zero(policy, ev):
    state, decisions = run(policy, [ev("enroll", 0)])
    assert state.campaign_status is Status.ACTIVE
    assert state.engagement_score == 0
    assert [d.rule for d in decisions] == ["enroll"]


def test_reenrolling_a_known_contact_changes_nothing(policy, ev):
    state, _ = run(policy, [ev("enroll", 0), ev("open", 1)])
    again, decisions = apply_event(state, ev("enroll", 2), policy)
    assert decisions == [] and again == state


def test_event_for_unknown_contact_enrolls_at_its_time_then_applies(policy, ev):
    state, decisions = run(policy, [ev("click", 3)])
    assert [d.rule for d in decisions] == ["enroll", "engagement"]
    assert state.enrolled_at == T0 + days(3)
    assert state.engagement_score == 10


@pytest.mark.parametrize(
    ("kind", "points"), [("open", 5), ("click", 10), ("high_intent_visit", 15)]
)
def test_engagement_points(policy, ev, kind, points):
    state, _ = run(policy, [ev("enroll", 0), ev(kind, 1)])
    assert state.engagement_score == points
    assert state.last_engagement_date == T0 + days(1)


def test_seed_scenario_open_click_visit_reaches_threshold_and_hands_off(policy, ev):
    state, decisions = run(
        policy, [ev("enroll", 0), ev("open", 1), ev("click", 2), ev("high_intent_visit", 3)]
    )
    assert state.engagement_score == 30
    assert state.campaign_status is Status.ENGAGED
    engaged = [d for d in decisions if d.to_status is Status.ENGAGED]
    assert len(engaged) == 1 and engaged[0].reason == "score_reached_threshold"
    assert [a.kind for a in engaged[0].actions] == ["handoff_task"]


def test_threshold_is_inclusive(policy, ev):
    state, _ = run(policy, [ev("enroll", 0), ev("click", 1), ev("click", 2)])
    assert state.engagement_score == 20 and state.campaign_status is Status.ENGAGED


def test_engagement_resets_unanswered_sends(policy, ev):
    state, _ = run(policy, [ev("enroll", 0), ev("send", 1), ev("send", 2), ev("open", 3)])
    assert state.unanswered_sends == 0


def test_late_event_keeps_the_later_engagement_date(policy, ev):
    state, _ = run(policy, [ev("enroll", 0), ev("open", 10), ev("open", 5)])
    assert state.last_engagement_date == T0 + days(10)
    assert state.engagement_score == 10


def test_dormancy_by_unanswered_sends(policy, ev):
    state, decisions = run(policy, [ev("enroll", 0), ev("send", 1), ev("send", 8), ev("send", 15)])
    assert state.campaign_status is Status.DORMANT
    assert decisions[-1].reason == "unanswered_sends"
    assert state.status_changed_at == T0 + days(15)


def test_reactivated_contact_also_goes_dormant_after_unanswered_sends(policy, ev):
    events = [ev("enroll", 0)] + [ev("send", d) for d in (1, 2, 3)] + [ev("open", 4)]
    events += [ev("send", d) for d in (5, 6, 7)]
    state, _ = run(policy, events)
    assert state.campaign_status is Status.DORMANT


def test_dormancy_by_90_days_of_silence_fires_at_its_due_time(policy, ev):
    state, decisions = run(policy, [ev("enroll", 0), ev("open", 10)], until=200)
    dormant = next(d for d in decisions if d.to_status is Status.DORMANT)
    assert dormant.at == T0 + days(100)
    assert dormant.rule == "time:inactivity"


def test_never_engaged_contact_counts_silence_from_enrollment(policy, ev):
    _, decisions = run(policy, [ev("enroll", 5)], until=96)
    assert [d.at for d in decisions if d.to_status is Status.DORMANT] == [T0 + days(95)]


def test_reactivation_sequence_then_suppression(policy, ev):
    state, decisions = run(policy, [ev("enroll", 0)], until=200)
    steps = [
        (d.at, d.actions[0].detail) for d in decisions if d.reason.startswith("reactivation_step")
    ]
    assert steps == [
        (T0 + days(120), {"step": 1, "cycle": 1}),
        (T0 + days(127), {"step": 2, "cycle": 1}),
    ]
    suppressed = next(d for d in decisions if d.to_status is Status.SUPPRESSED)
    assert suppressed.at == T0 + days(134)
    assert [a.kind for a in suppressed.actions] == ["alternate_channel_add"]
    assert state.suppression_reason is SuppressionReason.NO_RESPONSE
    assert state.reactivation_cycle == 1


def test_engagement_during_reactivation_reactivates(policy, ev):
    state, decisions = run(policy, [ev("enroll", 0), ev("open", 122)])
    assert state.campaign_status is Status.REACTIVATED
    assert state.reactivation_step == 0 and state.reactivation_cycle == 1
    assert decisions[-1].reason == "reactivated_from_dormant"


def test_engagement_while_cooling_reactivates(policy, ev):
    state, _ = run(policy, [ev("enroll", 0), ev("open", 95)])
    assert state.campaign_status is Status.REACTIVATED
    assert state.reactivation_cycle == 0


def test_alternate_channel_brings_a_no_response_contact_back(policy, ev):
    state, decisions = run(policy, [ev("enroll", 0), ev("click", 140)])
    assert state.campaign_status is Status.REACTIVATED
    assert state.suppression_reason is None
    assert [a.kind for a in decisions[-1].actions] == ["alternate_channel_remove"]


def test_cycles_exhausted_goes_straight_to_suppressed(ev):
    policy = Policy(max_reactivation_cycles=1, version="t")
    # cycle 1 during days 120-127, reactivated at 125, silent again -> dormant at 215
    state, decisions = run(policy, [ev("enroll", 0), ev("open", 125)], until=400)
    assert state.campaign_status is Status.SUPPRESSED
    final = next(d for d in decisions if d.reason == "reactivation_cycles_exhausted")
    assert final.at == T0 + days(125 + 90 + 30)
    assert state.reactivation_cycle == 1


def test_zero_cycles_allowed_suppresses_at_end_of_cooling(ev):
    policy = Policy(max_reactivation_cycles=0, version="t")
    state, decisions = run(policy, [ev("enroll", 0)], until=121)
    assert state.campaign_status is Status.SUPPRESSED
    assert not any(a.kind == "reactivation_step_due" for d in decisions for a in d.actions)


def test_decay_halves_every_30_days_after_30_days_of_silence(policy, ev):
    state, decisions = run(policy, [ev("enroll", 0), ev("click", 0)], until=75)
    decays = [(d.at, d.changes["engagement_score"]) for d in decisions if d.rule == "time:decay"]
    assert decays == [(T0 + days(30), (10, 5.0)), (T0 + days(60), (5.0, 2.5))]


def test_decayed_engaged_contact_returns_to_active(policy, ev):
    state, decisions = run(policy, [ev("enroll", 0), ev("click", 0), ev("click", 1)], until=40)
    back = [d for d in decisions if d.from_status is Status.ENGAGED]
    assert back[0].to_status is Status.ACTIVE
    assert back[0].reason == "score_decayed_below_threshold"
    assert back[0].at == T0 + days(31)


def test_decay_below_floor_becomes_zero_and_stops(policy, ev):
    state, _ = run(policy, [ev("enroll", 0), ev("open", 0)], until=400)
    assert state.engagement_score == 0.0
    assert next_due(state, policy) is None or state.campaign_status is not Status.SUPPRESSED


def test_new_engagement_after_decay_adds_to_the_decayed_score(policy, ev):
    state, _ = run(policy, [ev("enroll", 0), ev("click", 0), ev("open", 31)])
    assert state.engagement_score == 10 and state.base_score == 10 and state.decay_steps == 0


@pytest.mark.parametrize("kind", ["unsubscribe", "hard_bounce", "spam_complaint"])
@pytest.mark.parametrize("day_before", [None, 1, 100, 125, 140])
def test_compliance_exit_from_any_state(policy, ev, kind, day_before):
    events = [ev("enroll", 0), ev("click", 0), ev("click", 0.5)]  # Engaged
    if day_before is not None:
        events = [ev("enroll", 0), ev("open", day_before)]
    state, decisions = run(policy, events + [ev(kind, 150)])
    assert state.campaign_status is Status.SUPPRESSED
    assert state.suppression_reason.value == kind


def test_compliance_suppression_is_sticky_until_resubscribe(policy, ev):
    state, _ = run(policy, [ev("enroll", 0), ev("unsubscribe", 1), ev("click", 2), ev("click", 3)])
    assert state.campaign_status is Status.SUPPRESSED
    state, _ = advance(state, T0 + days(900), policy)
    assert state.campaign_status is Status.SUPPRESSED
    state, decisions = apply_event(state, ev("resubscribe", 901), policy)
    assert state.campaign_status is Status.ACTIVE and state.suppression_reason is None


def test_a_later_compliance_reason_replaces_the_earlier_one(policy, ev):
    state, decisions = run(policy, [ev("enroll", 0), ev("unsubscribe", 1), ev("hard_bounce", 2)])
    assert state.campaign_status is Status.SUPPRESSED
    assert state.suppression_reason is SuppressionReason.HARD_BOUNCE
    reasons = [d.reason for d in decisions]
    assert reasons == ["enrolled", "unsubscribe", "suppression_reason_replaced"]
    assert decisions[-1].changes == {
        "suppression_reason": (SuppressionReason.UNSUBSCRIBE, SuppressionReason.HARD_BOUNCE)
    }
    assert state.status_changed_at == T0 + days(1)  # the status itself did not change


def test_the_same_compliance_reason_again_changes_nothing(policy, ev):
    state, decisions = run(policy, [ev("enroll", 0), ev("hard_bounce", 1), ev("hard_bounce", 2)])
    assert state.suppression_reason is SuppressionReason.HARD_BOUNCE
    assert [d.reason for d in decisions] == ["enrolled", "hard_bounce"]


def test_a_comeback_that_reaches_the_threshold_is_handed_on_at_once(policy, ev):
    # Dormant at day 90 with score 0; a high-intent visit (15) plus a click (10) on the way back
    # is 25 >= 20: Reactivated and Engaged in one decision, with the hand-off.
    state, decisions = run(policy, [ev("enroll", 0), ev("open", 0), ev("open", 0.1)])
    state, _ = advance(state, T0 + days(200), policy)  # decays to 0, Dormant, suppressed later
    assert state.campaign_status is Status.SUPPRESSED
    state, fired = apply_event(state, ev("high_intent_visit", 201), policy)
    assert state.campaign_status is Status.REACTIVATED  # 15 < 20
    state, fired = apply_event(state, ev("click", 202), policy)
    assert state.campaign_status is Status.ENGAGED
    dormant, _ = run(policy, [ev("enroll", 0)], until=100)
    assert dormant.campaign_status is Status.DORMANT
    dormant.engagement_score = dormant.base_score = 15.0
    state, fired = apply_event(dormant, ev("click", 101), policy)
    assert state.campaign_status is Status.ENGAGED
    assert len(fired) == 1 and fired[0].reason == "reactivated_from_dormant"
    assert fired[0].from_status is Status.DORMANT and fired[0].to_status is Status.ENGAGED
    assert fired[0].changes["campaign_status"] == (Status.DORMANT, Status.ENGAGED)
    assert [a.kind for a in fired[0].actions] == ["handoff_task"]


def test_a_no_response_comeback_that_reaches_the_threshold_is_handed_on(policy, ev):
    suppressed, _ = run(policy, [ev("enroll", 0)], until=140)
    assert suppressed.suppression_reason is SuppressionReason.NO_RESPONSE
    suppressed.engagement_score = suppressed.base_score = 15.0
    state, fired = apply_event(suppressed, ev("click", 141), policy)
    assert state.campaign_status is Status.ENGAGED and state.suppression_reason is None
    assert [a.kind for a in fired[0].actions] == ["alternate_channel_remove", "handoff_task"]


def test_resubscribe_without_suppression_changes_nothing(policy, ev):
    state, _ = run(policy, [ev("enroll", 0)])
    again, decisions = apply_event(state, ev("resubscribe", 1), policy)
    assert decisions == [] and again.campaign_status is Status.ACTIVE


def test_resubscribed_contact_counts_silence_from_resubscribing(policy, ev):
    _, decisions = run(
        policy, [ev("enroll", 0), ev("unsubscribe", 1), ev("resubscribe", 200)], until=300
    )
    assert [d.at for d in decisions if d.to_status is Status.DORMANT] == [T0 + days(290)]


def test_time_rule_due_at_the_event_instant_fires_first(policy, ev):
    # Dormancy is due at day 90 exactly; an open at that instant reactivates, not keeps Active.
    state, decisions = run(policy, [ev("enroll", 0), ev("open", 90)])
    assert [d.to_status for d in decisions[-2:]] == [Status.DORMANT, Status.REACTIVATED]


def test_unknown_event_type_is_refused(policy, ev):
    with pytest.raises(UnknownEventType):
        apply_event(None, ev("teleport", 0), policy)


def test_custom_engagement_type_with_points(ev):
    points = {"open": 5, "click": 10, "high_intent_visit": 15, "reply": 12}
    policy = Policy(points=points, version="t")
    state, _ = run(policy, [ev("enroll", 0), ev("reply", 1)])
    assert state.engagement_score == 12


def test_decisions_carry_policy_version_and_before_after(policy, ev):
    _, decisions = run(policy, [ev("enroll", 0), ev("open", 1)])
    assert all(d.policy_version == "test" for d in decisions)
    assert decisions[-1].changes["engagement_score"] == (0.0, 5.0)
    assert decisions[-1].cause == "e2"


def test_every_rule_and_reason_the_engine_names_is_a_member(policy, ev):
    """Rules and the reasons the rules give themselves are `Rule` / `Reason` members (the
    ledger's text is their value); only event types and compliance reasons are passed on."""
    from crm_elasticity.core.models import Reason, Rule

    _, decisions = run(
        policy,
        [
            ev("enroll", 0),
            ev("send", 1),
            ev("send", 2),
            ev("send", 3),  # Dormant at the 3rd
            ev("open", 60),
            ev("click", 61),
            ev("high_intent_visit", 62),  # back, then Engaged
            ev("unsubscribe", 70),
            ev("hard_bounce", 71),
            ev("hard_bounce", 72),
            ev("resubscribe", 73),
        ],
        until=400,
    )
    rules = {d.rule for d in decisions}
    assert all(isinstance(r, Rule) for r in rules)
    assert {
        Rule.ENROLL,
        Rule.SEND,
        Rule.ENGAGEMENT,
        Rule.COMPLIANCE,
        Rule.TIME_DECAY,
        Rule.TIME_INACTIVITY,
        Rule.TIME_COOLING_DONE,
    } <= rules
    for d in decisions:
        assert isinstance(d.reason, Reason | SuppressionReason) or d.reason in {
            "open",
            "click",
            "high_intent_visit",
        }, d.reason
        assert d.reason == str(d.reason)  # the same text in the ledger as before
    assert Reason.step(2) == "reactivation_step_2"
    assert [Reason.step(n) for n in range(1, 6)] == [f"reactivation_step_{n}" for n in range(1, 6)]
