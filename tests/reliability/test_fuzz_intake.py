"""Hypothesis fuzzing of the webhook intake (bounded for CI; bench/fuzz.py runs >= 100K).

Asserted for every input: `handle_webhook` never raises, never answers 5xx for a client's
mistake, and every forged, stale, tampered or wrongly signed request is rejected with a 4xx.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.fuzz_cases import CASES, Outcomes, Targets, build_targets

EXAMPLES = 150


@pytest.fixture(scope="module")
def targets() -> Targets:
    return build_targets()


@pytest.mark.parametrize("name", sorted(CASES))
def test_intake_survives_fuzzing(name: str, targets: Targets) -> None:
    outcomes = Outcomes()
    case = CASES[name]

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.data())
    def run(data: st.DataObject) -> None:
        case(targets, outcomes, data)

    run()
    assert outcomes.tried >= EXAMPLES
    assert not any(k[1] == "5xx" for k in outcomes.counts)
