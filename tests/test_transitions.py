"""Transitions are named members, not strings built and split again: the text summaries show
and the metric name the Lambda handlers emit both come from the member."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest

from crm_elasticity.core.models import Decision, Status, Transition
from crm_elasticity.core.pipeline import count_transitions

AT = datetime(2026, 3, 1, tzinfo=UTC)


def _moved(source: Status | None, target: Status) -> Decision:
    return Decision(
        contact_id="c1",
        at=AT,
        rule="engagement",
        reason="open",
        cause="e1",
        from_status=source,
        to_status=target,
        changes={},
        policy_version="v1",
    )


@pytest.mark.parametrize("source", list(Status))
@pytest.mark.parametrize("target", list(Status))
def test_every_move_between_two_states_has_a_member(source, target):
    if source is target:
        return
    transition = Transition.between(source, target)
    assert transition == f"{source.value}->{target.value}"
    assert transition.metric_name == f"Transition_{source.value}_{target.value}"


def test_the_members_are_the_moves_and_enrolled():
    assert len(Transition) == 1 + 5 * 4
    assert Transition.ENROLLED.metric_name == "Transition_enrolled"


def test_counts_serialise_as_the_plain_text_they_always_had():
    counts: Counter[Transition] = Counter()
    count_transitions(
        [
            _moved(None, Status.ACTIVE),
            _moved(Status.ACTIVE, Status.ENGAGED),
            _moved(Status.ACTIVE, Status.ACTIVE),
        ],
        counts,
    )
    assert json.dumps(dict(counts), sort_keys=True) == '{"Active->Engaged": 1, "enrolled": 1}'
    assert counts["Active->Engaged"] == 1  # plain text finds the member's count


def test_the_lambda_metric_name_comes_from_the_member():
    handlers = pytest.importorskip("crm_elasticity.connectors.aws.handlers")
    assert handlers._transition_metric(Transition.DORMANT_REACTIVATED) == (
        "Transition_Dormant_Reactivated"
    )
    assert handlers._transition_metric("enrolled") == "Transition_enrolled"
