"""The ledger-reader port: everything `report`, experiment results and `explain` read.

Both stores implement it (`core.sqlite_store.SQLiteStore`, `core.dynamodb_store.DynamoDBStore`)
and `tests/test_store_contract.py` holds them to the same answers. A reader hands out:

- one contact's decisions, oldest first, and its current state (`explain`);
- the daily roll-up (`core.rollup`): rows of (day, rule, reason, from status, to status,
  policy version, event type, experiment arm, reactivation cycle, count), all-time or from a
  `since` instant on;
- how many contacts are in each (status, suppression reason) now;
- the policy notes (what each policy version says, promotions): JSON texts;
- data-quality counters, an open set of named counts (`quarantined_events`, ...): a store
  reports what it keeps, the report lists them all.

Nothing here reads the whole ledger: a report's cost is the roll-up's size (days x rules x arms),
whatever the number of decisions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crm_elasticity.core.models import ContactState, Decision

RollupRow = tuple[str, str, str, str, str, str, str, str, int, int]
"""(day, rule, reason, from_status or '', to_status, policy_version, event_type or '', arm or
'', cycle, n): the columns of `core.rollup`'s `ledger_rollup`."""


class WindowError(ValueError):
    """The store cannot cut the roll-up at the instant asked for."""


class LedgerReader(ABC):
    """What reports and `explain` read from a store."""

    @abstractmethod
    def contact_decisions(self, contact_id: str) -> list[Decision]:
        """The contact's decisions, oldest first (empty when it has none)."""

    @abstractmethod
    def contact_now(self, contact_id: str) -> ContactState | None:
        """The contact's current state, None when unknown."""

    @abstractmethod
    def rollup(self, since: datetime | None = None) -> list[RollupRow]:
        """The daily roll-up: every day, or the decisions at or after `since` (whole days from
        the roll-up; a store that can also count the first, partial day exactly does so, the
        others raise `WindowError` for an instant that is not midnight UTC). Rows are in key
        order, except that a partial first day comes after the whole days."""

    @abstractmethod
    def contact_levels(self) -> dict[tuple[str, str | None], int]:
        """Contacts now, by (campaign status, suppression reason or None)."""

    @abstractmethod
    def policy_notes(self) -> dict[str, str]:
        """Cursor name -> JSON value of every note cursor (`Cursors.note_prefixes`)."""

    @abstractmethod
    def quality_counts(self) -> dict[str, int]:
        """Named data-quality counts the store keeps outside the roll-up, in the order the
        report lists them (`quarantined_events`: events set aside now)."""
