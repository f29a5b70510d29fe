"""Assignment is a pure, stable, balanced function of contact and experiment."""

from __future__ import annotations

from crm_elasticity.core.engine import apply_event
from crm_elasticity.core.experiments import (
    assignment_counts,
    unit_hash,
    unit_hash_after,
    unit_prefix,
)
from crm_elasticity.core.policy import Policy
from crm_elasticity.core.proportions import chi_square_uniformity
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.store import Batch

from .helpers import event, mapping

IDS = [f"contact-{i}" for i in range(100_000)]
CHI2_1DF_P001 = 10.83  # chi-square critical value, 1 degree of freedom, p = 0.001
CHI2_2DF_P001 = 13.82


def test_unit_hash_is_pinned_so_every_machine_assigns_alike():
    # A changed hash would silently reshuffle every running experiment.
    assert f"{unit_hash('a', 'b', 'c'):.10f}" == "0.6335432637"
    assert f"{unit_hash('', 'subject_line', 'contact-1'):.10f}" == "0.4251728385"
    # What assignment computes: the salt and name hashed once, then each contact id.
    assert f"{unit_hash_after(unit_prefix('a', 'b'), 'c'):.10f}" == "0.6335432637"
    subject_line = unit_prefix("", "subject_line")
    assert f"{unit_hash_after(subject_line, 'contact-1'):.10f}" == "0.4251728385"
    assert unit_hash_after(subject_line, "contact-1") == unit_hash_after(subject_line, "contact-1")


def test_two_variants_balance_within_chi_square_tolerance():
    counts = assignment_counts(mapping().policy.program, IDS)
    for name in ("subject_line", "cta_button", "reactivation_format"):
        observed = list(counts[name].values())
        assert len(observed) == 2
        assert chi_square_uniformity(observed) < CHI2_1DF_P001, (name, counts[name])


def test_weighted_variants_follow_their_weights():
    m = mapping(
        replace={
            "variants: [{name: Curiosity}, {name: Value}]": (
                "variants: [{name: Curiosity, weight: 2}, {name: Value}, {name: Urgency}]"
            ),
        }
    )
    counts = assignment_counts(m.policy.program, IDS)["subject_line"]
    observed = [counts["Curiosity"], counts["Value"], counts["Urgency"]]
    assert chi_square_uniformity(observed, [2, 1, 1]) < CHI2_2DF_P001
    assert 0.48 < counts["Curiosity"] / len(IDS) < 0.52


def test_holdout_takes_its_share_and_experiments_are_independent_of_it():
    counts = assignment_counts(mapping().policy.program, IDS)["holdout"]
    assert abs(counts["holdout"] / len(IDS) - 0.10) < 0.005
    rules = mapping().policy.program
    held = [cid for cid in IDS[:20_000] if rules.assign(cid)["holdout"] == "holdout"]
    inside = assignment_counts(rules, held)["subject_line"]
    assert chi_square_uniformity(list(inside.values())) < CHI2_1DF_P001


def test_salt_reshuffles_and_same_salt_is_sticky_across_loads():
    a, b = mapping().policy.program, mapping().policy.program
    assert [a.assign(c) for c in IDS[:500]] == [b.assign(c) for c in IDS[:500]]
    salted = mapping(
        replace={
            "    stage: main\n    metric: open\n": (
                "    stage: main\n    metric: open\n    salt: s2\n"
            )
        }
    )
    moved = sum(
        a.assign(c)["subject_line"] != salted.policy.program.assign(c)["subject_line"]
        for c in IDS[:2000]
    )
    assert 800 < moved < 1200


def test_enrollment_records_assignment_in_state_decision_and_store(tmp_path):
    m = mapping()
    state, decisions = apply_event(None, event("e1", "c-9", "open", 0), m.policy)
    assert state.experiments == m.policy.program.assign("c-9")
    assert set(state.experiments) == {
        "subject_line",
        "cta_button",
        "reactivation_format",
        "holdout",
    }
    assert decisions[0].rule == "enroll"
    assert decisions[0].changes["experiments"] == (None, state.experiments)
    assert decisions[0].event_type == "open"
    store = SQLiteStore(tmp_path / "s.sqlite3")
    store.commit(Batch(contacts=[state], next_due=[None], decisions=decisions))
    assert store.get_contacts(["c-9"])["c-9"].experiments == state.experiments
    assert store.ledger_for("c-9")[1].event_type == "open"


def test_a_contact_known_before_the_program_is_assigned_on_its_next_event():
    m = mapping()
    bare, _ = apply_event(None, event("e1", "old", "enroll", 0), Policy())
    assert bare.experiments == {}
    state, decisions = apply_event(bare, event("e2", "old", "open", 1), m.policy)
    assert state.experiments == m.policy.program.assign("old")
    assert decisions[0].rule == "experiments" and decisions[0].reason == "assigned"
    assert bare.experiments == {}  # the caller's state is not mutated


def test_a_promoted_experiment_stops_assigning_and_writes_its_default():
    from crm_elasticity.core.experiments import experiment_property_values

    variants = "variants: [{name: Curiosity}, {name: Value}]"
    m = mapping(replace={variants: variants + "\n    default: Value"})
    state, _ = apply_event(None, event("e1", "c-1", "enroll", 0), m.policy)
    assert "subject_line" not in state.experiments
    values = experiment_property_values(m, state)
    assert values["elastic_exp_subject"] == "Value"
    assert values["elastic_exp_cta"] == state.experiments["cta_button"]
    assert values["elastic_holdout"] is (state.experiments["holdout"] == "holdout")
