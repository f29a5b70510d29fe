"""Writes owed to the CRM, as the runner owes them and the stores keep them (the outbox).

An owed write is typed: whose it is (`contact_id`), what it is (`kind`: the contact's fields,
or a hand-off task), the key it is owed under (a newer write under the same key replaces it)
and its JSON `payload`. The key's text is this module's business alone: the stores keep it as
the outbox row's key and never read anything out of it, and so does the runner.

On disk the keys are the ones earlier releases wrote (`fields:<contact id>`,
`task:<contact id>:<cause>:<at>`), so an outbox a store already holds keeps draining.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class OwedKind(StrEnum):
    FIELDS = "fields"
    """The contact's canonical fields and program properties (one owed write per contact)."""
    TASK = "task"
    """A sales hand-off task (one per deciding decision)."""

    @property
    def prefix(self) -> str:
        """What every key of this kind starts with (stores select a kind by it)."""
        return f"{self.value}:"


@dataclass(frozen=True, slots=True)
class OwedWrite:
    contact_id: str
    kind: OwedKind
    key: str
    """Unique per owed write: a newer write owed under the same key replaces this one."""
    payload: str
    """JSON: the values to write (`FIELDS`) or the task (`TASK`)."""

    @classmethod
    def fields(cls, contact_id: str, payload: str) -> OwedWrite:
        return cls(contact_id, OwedKind.FIELDS, fields_key(contact_id), payload)

    @classmethod
    def task(cls, contact_id: str, cause: str, at: datetime, payload: str) -> OwedWrite:
        key = f"{OwedKind.TASK.prefix}{contact_id}:{cause}:{at.isoformat()}"
        return cls(contact_id, OwedKind.TASK, key, payload)

    @classmethod
    def stored(cls, key: str, payload: str, contact_id: str | None) -> OwedWrite:
        """An owed write as a store read it back. `contact_id` is None for a row an earlier
        release wrote, which kept only the key: a fields key ends in the contact id, and a
        task's payload names its contact."""
        kind = OwedKind.TASK if key.startswith(OwedKind.TASK.prefix) else OwedKind.FIELDS
        if contact_id is None:
            if kind is OwedKind.FIELDS:
                contact_id = key.removeprefix(OwedKind.FIELDS.prefix)
            else:
                contact_id = str(json.loads(payload).get("contact_id", ""))
        return cls(contact_id, kind, key, payload)


def fields_key(contact_id: str) -> str:
    """The key a contact's owed field write is kept under (`Store.outbox_owed` asks by it)."""
    return f"{OwedKind.FIELDS.prefix}{contact_id}"
