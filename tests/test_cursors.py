"""Cursor names are `core.cursors.Cursors`'s alone, and stay the ones earlier releases stored:
a store written before keeps its sync positions, seen values and report notes."""

from __future__ import annotations

from crm_elasticity.core.cursors import Cursors
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.store import Batch


def test_the_stored_names_are_those_of_earlier_releases() -> None:
    assert (Cursors.poll_since, Cursors.poll_after) == ("poll:since", "poll:after")
    assert (Cursors.due_after, Cursors.full_after) == ("due:after", "full:after")
    assert Cursors.seen("1001", "hs_email_last_open_date") == "seen:1001:hs_email_last_open_date"
    assert Cursors.policy("abc123") == "policy:abc123"
    assert Cursors.changelog("2026-01-01T00:00:00+00:00", "subject") == (
        "changelog:2026-01-01T00:00:00+00:00:subject"
    )
    assert Cursors.replay_intake == "replay:intake"


def test_notes_are_the_policy_changelog_and_replay_cursors_and_no_other() -> None:
    store = SQLiteStore(":memory:")
    store.commit(
        Batch(
            cursors={
                Cursors.policy("v1"): "{}",
                Cursors.changelog("t", "e"): "{}",
                Cursors.replay_intake: "{}",
                Cursors.due_after: "c1",
                Cursors.seen("c1", "p"): "{}",
            }
        )
    )
    assert set(store.policy_notes()) == {
        Cursors.policy("v1"),
        Cursors.changelog("t", "e"),
        Cursors.replay_intake,
    }
    assert [Cursors.is_note(n) for n in (Cursors.policy("v1"), Cursors.due_after)] == [True, False]
