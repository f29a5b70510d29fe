"""Duplicate event ids found exactly, even when their hashes collide."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from crm_elasticity.core.coded.seen import SeenIds


@given(
    st.lists(st.lists(st.text("abc", min_size=1, max_size=4), max_size=30), max_size=12),
    st.sampled_from([hash, len, lambda s: 7]),
)
@settings(max_examples=200, deadline=None)
def test_first_sightings_are_exactly_the_first_occurrences(batches, hash_of):
    lines: list[str] = []
    seen = SeenIds(lambda offset: lines[offset], hash_of=hash_of)
    reference: set[str] = set()
    for batch in batches:
        offsets = list(range(len(lines), len(lines) + len(batch)))
        lines += batch
        expected = []
        for event_id in batch:
            expected.append(event_id not in reference)
            reference.add(event_id)
        assert seen.first_sightings(batch, offsets) == expected
