"""The due-time index of a bulk run's deferred contacts answers like a scan of them all."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from crm_elasticity.core.bulk_states import BulkStates
from crm_elasticity.core.engine import new_contact
from tests.helpers import T0, days

ids = st.sampled_from([f"c{i}" for i in range(12)])
moments = st.integers(0, 30).map(lambda d: T0 + days(d))
steps = st.lists(
    st.one_of(
        st.tuples(st.just("put"), ids, st.one_of(st.none(), moments)),
        st.tuples(st.just("due"), st.sampled_from(["", "c3", "c7"]), moments),
    ),
    max_size=60,
)


@given(steps, st.integers(1, 5))
@settings(max_examples=300, deadline=None)
def test_due_matches_a_full_scan(program, limit):
    deferred = BulkStates()
    model: dict = {}
    for op, key, value in program:
        if op == "put":
            deferred.put(new_contact(key, T0), value)
            model[key] = value
        else:
            expected = sorted(
                c for c, at in model.items() if at is not None and at <= value and c > key
            )[:limit]
            assert deferred.due(value, after=key, limit=limit) == expected
    drained = deferred.drain()
    assert [s.contact_id for s, _ in drained] == sorted(model)
    assert len(deferred) == 0 and deferred.due(T0 + days(99)) == []


def test_a_held_state_is_handed_out_itself_and_indexed_at_its_latest_due():
    deferred = BulkStates()
    state = new_contact("c1", T0)
    deferred.put(state, T0 + days(5))
    held = deferred.get("c1")
    assert held is state and deferred.get("nobody") is None
    held.unanswered_sends = 9
    deferred.put(held, T0 + days(50))  # committed back with a later due
    assert deferred.due(T0 + days(10)) == []
    assert deferred.due(T0 + days(50)) == ["c1"]
