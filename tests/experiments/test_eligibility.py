"""Consent, segments and programs competing for a contact."""

from __future__ import annotations

from datetime import timedelta

import pytest

from crm_elasticity.core.eligibility import (
    check_send,
    choose_program,
    has_consent,
    resolve_programs,
    segment_of,
)
from crm_elasticity.core.engine import apply_event
from crm_elasticity.core.mapping import MappingError, parse_mapping
from crm_elasticity.core.pipeline import Pipeline
from crm_elasticity.core.sqlite_store import SQLiteStore

from .helpers import T0, event, hubspot_text, mapping

SEGMENTS = """
segments:
  - name: dach
    where: {country: [DE, AT, CH]}
    policy: {threshold: 30, decay: {factor: 0.8}}
  - name: healthcare
    where: {industry: Healthcare}
    policy: {dormant_after_days: 120}
"""


def test_segments_pick_policy_overrides_by_contact_properties():
    m = mapping(SEGMENTS)
    assert segment_of(m, {"country": "de", "industry": "Retail"}) == "dach"
    assert segment_of(m, {"country": "FR", "industry": "Healthcare"}) == "healthcare"
    assert segment_of(m, {"country": "FR"}) is None
    dach = m.policy.for_contact("dach")
    assert dach.threshold == 30 and dach.decay.factor == 0.8
    assert dach.decay.every_days == 30  # nested keys merge, the rest stays
    assert dach.version == m.policy.version
    assert m.policy.for_contact(None) is m.policy


def test_a_segment_is_fixed_at_enrollment_and_governs_the_contact(tmp_path):
    m = mapping(SEGMENTS)
    store = SQLiteStore(tmp_path / "s.sqlite3")
    pipeline = Pipeline(store, m.policy)
    # 25 points: Engaged under the base threshold (20), not under dach's (30).
    events = [
        event("a1", "de-1", "click", 0),
        event("a2", "de-1", "high_intent_visit", 0.1),
        event("b1", "fr-1", "click", 0),
        event("b2", "fr-1", "high_intent_visit", 0.1),
    ]
    applied = pipeline.prepare_events(events, segments={"de-1": "dach"})
    store.commit(applied.batch)
    states = store.get_contacts(["de-1", "fr-1"])
    assert states["de-1"].segment == "dach" and states["fr-1"].segment is None
    assert states["de-1"].campaign_status.value == "Active"
    assert states["fr-1"].campaign_status.value == "Engaged"
    enroll = store.ledger_for("de-1")[0]
    assert enroll.changes["segment"] == (None, "dach")
    # Later batches need no segment hint: the stored segment decides.
    pipeline.process([event("a3", "de-1", "open", 1)])
    assert store.get_contacts(["de-1"])["de-1"].campaign_status.value == "Engaged"


def test_a_bad_segment_override_names_its_key_path():
    bad = hubspot_text(SEGMENTS.replace("threshold: 30", "threshold: -1"))
    with pytest.raises(MappingError) as caught:
        parse_mapping(bad.encode(), "m.yaml")
    assert any("segments[0].policy.threshold" in p for p in caught.value.problems)


def test_reserved_and_duplicate_experiment_names_are_refused():
    text = hubspot_text(replace={"  - name: cta_button": "  - name: subject_line"})
    with pytest.raises(MappingError) as caught:
        parse_mapping(text.encode(), "m.yaml")
    assert any("declared twice" in p for p in caught.value.problems)
    text = hubspot_text(replace={"  - name: cta_button": "  - name: holdout"})
    with pytest.raises(MappingError):
        parse_mapping(text.encode(), "m.yaml")


def test_consent_opt_out_and_opt_in():
    m = mapping()
    assert has_consent(m, {"hs_email_optout": "false"})
    assert has_consent(m, {})
    assert not has_consent(m, {"hs_email_optout": "true"})
    opt_in_text = "  consent_property: marketing_ok\n  consent_means: opt_in"
    opt_in = mapping(replace={"  consent_property: hs_email_optout": opt_in_text})
    assert not has_consent(opt_in, {})
    assert has_consent(opt_in, {"marketing_ok": "Yes"})


def test_check_send_refuses_for_consent_holdout_and_frequency_with_a_time():
    capped = mapping(
        replace={
            "  consent_property: hs_email_optout\n": (
                "  consent_property: hs_email_optout\n"
                "  frequency_cap: {max_sends: 2, window_days: 7}\n"
            )
        }
    )
    state = None
    for eid, kind, day in (("e0", "enroll", 0), ("s1", "send", 1), ("s2", "send", 2)):
        state, _ = apply_event(state, event(eid, "c", kind, day), capped.policy)
    at = T0 + timedelta(days=3)
    assert check_send(capped, state, {"hs_email_optout": "true"}, at).reason == "no_consent"
    verdict = check_send(capped, state, {}, at)
    assert not verdict.allowed and verdict.reason == "frequency_cap"
    assert verdict.not_before == T0 + timedelta(days=8)
    assert check_send(capped, state, {}, T0 + timedelta(days=8)).allowed
    dormant = state.copy()
    dormant.campaign_status = type(state.campaign_status)("Dormant")
    dormant.experiments = {**state.experiments, "holdout": "holdout"}
    assert (
        check_send(capped, dormant, {}, T0 + timedelta(days=9), reactivation=True).reason
        == "holdout"
    )


def test_two_programs_matching_one_contact_priority_decides_and_conflicts_count():
    news = mapping(
        replace={
            "program: elastic-newsletter": "program: newsletter",
            "eligibility:\n": "eligibility:\n  priority: 1\n",
        }
    )
    promo = mapping(
        replace={
            "program: elastic-newsletter": "program: promo",
            "eligibility:\n": "eligibility:\n  priority: 5\n  audience: {lifecycle: [lead, mql]}\n",
        }
    )
    assert choose_program([news, promo], {"lifecycle": "lead"}).program == "promo"
    assert choose_program([news, promo], {"lifecycle": "customer"}).program == "newsletter"
    assert choose_program([news, promo], {"hs_email_optout": "true"}).program is None
    contacts = [
        ("1", {"lifecycle": "lead"}),
        ("2", {"lifecycle": "customer"}),
        ("3", {"lifecycle": "mql"}),
    ]
    chosen, report = resolve_programs([news, promo], contacts)
    assert chosen == {"1": "promo", "2": "newsletter", "3": "promo"}
    assert report.conflicts[("promo", "newsletter")] == 2
    assert report.total_conflicts == 2
    alpha = mapping(replace={"program: elastic-newsletter": "program: alpha"})
    tie = choose_program([mapping(), alpha], {})  # equal priority: the name decides, stably
    assert tie.program == "alpha" and tie.conflict
