"""Every cursor the program keeps in a store, by name (`Store.get_cursors`, `Batch.cursors`).

A cursor is a named string a store keeps beside the contacts: where a resumable sync stopped,
what a signal last held, or a note a report reads. Modules ask for them here, by what they
are; nobody builds or reads a cursor name's text elsewhere. The names are the ones earlier
releases stored, so an existing data dir or table keeps its place.
"""

from __future__ import annotations

from typing import Final


class Cursors:
    poll_since: Final = "poll:since"
    """The instant the next engagement poll reads back from (ISO 8601; absent: the start)."""
    poll_after: Final = "poll:after"
    """The last contact id of the poll's last committed page (resumes a stopped poll)."""
    due_after: Final = "due:after"
    """The last contact id of the time-rule sync's last committed page."""
    full_after: Final = "full:after"
    """The same for a `--full` sync, which reads every contact."""
    replay_intake: Final = "replay:intake"
    """What a replay could not use (bad lines, duplicates, ignored keys), as a note."""

    _SEEN: Final = "seen:"
    _POLICY: Final = "policy:"
    _CHANGELOG: Final = "changelog:"
    _REPLAY: Final = "replay:"

    note_prefixes: Final = (_POLICY, _CHANGELOG, _REPLAY)
    """Cursors that are notes a report reads: `policy`, `changelog` and `replay_intake`."""
    policy_like: Final = _POLICY + "%"
    changelog_like: Final = _CHANGELOG + "%"
    note_likes: Final = tuple(p + "%" for p in note_prefixes)
    """SQL LIKE patterns matching every cursor of a kind."""

    @staticmethod
    def seen(contact_id: str, prop: str) -> str:
        """The last value the contact's signal property was counted at (`core.occurrences`)."""
        return f"{Cursors._SEEN}{contact_id}:{prop}"

    @staticmethod
    def policy(version: str) -> str:
        """What a policy version decides by, stored the first time it decides."""
        return Cursors._POLICY + version

    @staticmethod
    def changelog(at: str, experiment: str) -> str:
        """A promotion of an experiment's winner, at an instant (ISO 8601)."""
        return f"{Cursors._CHANGELOG}{at}:{experiment}"

    @staticmethod
    def is_note(name: str) -> bool:
        return name.startswith(Cursors.note_prefixes)
