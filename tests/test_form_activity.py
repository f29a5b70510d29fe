"""Form activity: a form submission is its own engagement in the shipped mappings, the shipped
policy gives it points, and the simulation's event mix has it."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm_elasticity.core.mapping import load_mapping
from crm_elasticity.core.simulate import SimulationConfig, run_simulation

SHIPPED = sorted(Path("mappings").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_mappings_turn_a_form_submission_into_form_submit(path):
    mapping = load_mapping(path)
    assert [s.event for s in mapping.signals].count("form_submit") == 1
    points = mapping.policy.points
    assert points["form_submit"] > 0
    others = {points[k] for k in ("open", "click", "high_intent_visit")}
    assert points["form_submit"] not in others  # its own number, not a copy of another's


def test_the_simulation_mixes_in_form_submissions():
    policy = load_mapping("mappings/hubspot.yaml").policy
    result = run_simulation(SimulationConfig(contacts=400, days=30, seed=5), policy, ":memory:")
    assert result.events["form_submit"] > 0
    assert result.events["form_submit"] < result.events["high_intent_visit"]


def test_readme_rules_state_the_decay_floor():
    rules = Path("README.md").read_text().split("## How it works", 1)[1].split("\n## ", 1)[0]
    floor = load_mapping("mappings/hubspot.yaml").policy.decay.floor
    assert "`decay.floor`" in rules
    assert f"({floor:g}) becomes 0" in rules
