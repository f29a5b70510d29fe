"""When an observed value is the occurrence already counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crm_elasticity.core.models import Event, Observation
from crm_elasticity.core.occurrences import Seen, counts, decode_seen, encode_seen, newer

T = datetime(2026, 3, 1, tzinfo=UTC)
URL = "https://www.acme.example/pricing"


def observed(kind: str, value: str, changed_at: datetime | None) -> Event:
    seen = Observation(property="p", value=value, changed_at=changed_at)
    return Event(event_id="e", contact_id="c", type=kind, occurred_at=T, observed=seen)


def test_seen_records_round_trip_and_read_the_earlier_bare_value():
    assert decode_seen(encode_seen(URL, T)) == Seen(URL, T)
    assert decode_seen(encode_seen(URL, None)) == Seen(URL, None)
    assert decode_seen("1767225600000") == Seen("1767225600000")  # stored by earlier versions
    assert decode_seen(None) is None


def test_the_same_value_counts_again_only_with_a_new_change_time():
    last = Seen(URL, T)
    assert not counts(observed("high_intent_visit", URL, T), last)  # a redelivery
    assert not counts(observed("high_intent_visit", URL, None), last)  # a snapshot of it
    assert counts(observed("high_intent_visit", URL, T + timedelta(days=20)), last)
    assert counts(observed("high_intent_visit", "/other", None), last)


def test_a_lifting_value_seen_first_in_a_snapshot_lifts_nothing():
    assert not counts(observed("resubscribe", "false", None), None)
    assert counts(observed("resubscribe", "false", T), None)  # a property change says it moved
    assert counts(observed("resubscribe", "false", None), Seen("true"))


def test_an_older_observation_does_not_replace_a_newer_one():
    later = Seen("b", T + timedelta(days=1))
    assert not newer(Observation(property="p", value="a", changed_at=T), later)
    assert newer(Observation(property="p", value="a", changed_at=None), Seen("b", T))
