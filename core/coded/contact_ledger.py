"""One contact's decisions from the coded ledger, read on a connection the caller has open.

`explain` reads them through `SQLiteStore.contact_decisions`, on the store's own connection:
explaining a contact opens the file once, parses its schema once, and neither the text nor the
coded ledger pays for a second connection to find out which one the store holds. No numpy
here (the writer's `core.coded.ledger` needs it): the CLI's `explain` does not load it.

A contact's row in `coded_contacts` names its chunks; one statement fetches those chunks'
contact indices and causes (stored before the rows, so no row is read for them), and each
chunk's rows blob is read only at the contact's positions, through incremental blob I/O. Only
the names the contact's rows use are decoded.
"""

from __future__ import annotations

import json
import sqlite3
import struct
from array import array
from collections.abc import Iterable

import orjson

from crm_elasticity.core.coded.decode import Texts, decisions
from crm_elasticity.core.coded.row import ROW
from crm_elasticity.core.models import Action, Decision
from crm_elasticity.core.sqlite_rows import changes_json

_CONTACT = (
    "SELECT c.shard, c.idx, c.arm, c.segment, c.chunks, m.value FROM coded_contacts AS c "
    "JOIN coded_meta AS m ON m.name = 'policy_version' WHERE c.contact_id = ?"
)
_CHUNKS = (
    "SELECT chunk, rowid, contacts, cause_ends, causes FROM coded_chunks "
    "WHERE shard = ? AND chunk IN (SELECT value FROM json_each(?))"
)
_NAMES = (
    "SELECT kind, code, text FROM coded_names WHERE shard = ? AND kind IN ('what', 'type', "
    "'action')"
)
_KIND_COLUMN = {"what": 2, "type": 5, "action": 12}
"""Where each kind of name's code sits in a row."""


def coded_contact_decisions(db: sqlite3.Connection, contact_id: str) -> list[Decision] | None:
    """The contact's decisions from the coded ledger in the database `db` has open, oldest
    first, as the text ledger would hand them out; None when it has no coded ledger (its
    decisions are in the text ledger), [] when the contact has no decisions."""
    try:
        contact = db.execute(_CONTACT, (contact_id,)).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # not a coded store
            return None
        raise
    if contact is None:
        return []
    shard, idx, arm, segment, chunk_list, version = contact
    chunks = array("i", chunk_list).tolist()
    me = struct.pack("<i", idx)
    found = {chunk: rest for chunk, *rest in db.execute(_CHUNKS, (shard, json.dumps(chunks)))}
    rows: list[tuple] = []
    for chunk in chunks:
        rowid, contacts, cause_ends, causes = found[chunk]
        positions = positions_in_chunk(contacts, me)
        rows += _read_rows(db, rowid, positions, array("q", cause_ends), causes)
    texts = Texts(_names_used(db.execute(_NAMES, (shard,)), rows))
    experiments = json.loads(arm) if arm else {}
    return [
        as_text_ledger_hands_it_out(d)
        for d in decisions(contact_id, rows, texts, version, experiments, segment)
    ]


def _names_used(
    names: Iterable[tuple[str, int, str]], rows: list[tuple]
) -> list[tuple[str, int, str]]:
    # A run's names are few, but decoding each `what` (JSON) costs more than reading them all.
    used = {kind: {row[column] for row in rows} for kind, column in _KIND_COLUMN.items()}
    return [(kind, code, text) for kind, code, text in names if code in used[kind]]


def as_text_ledger_hands_it_out(d: Decision) -> Decision:
    """`d` with its changes and action details through their JSON text, as the text ledger
    stores and returns them (times as ISO text, statuses as their values, tuples as lists):
    the same as `decision_from_row(decision_row(d))`, without formatting and parsing the
    fields JSON leaves as they are."""
    changes = {name: tuple(pair) for name, pair in orjson.loads(changes_json(d.changes)).items()}
    actions = (
        [
            Action(kind, detail)
            for kind, detail in orjson.loads(orjson.dumps([[a.kind, a.detail] for a in d.actions]))
        ]
        if d.actions
        else []
    )
    return Decision(
        contact_id=d.contact_id,
        at=d.at,
        rule=d.rule,
        reason=d.reason,
        cause=d.cause,
        from_status=d.from_status,
        to_status=d.to_status,
        changes=changes,
        policy_version=d.policy_version,
        actions=actions,
        event_type=d.event_type,
    )


def positions_in_chunk(contacts: bytes, me: bytes) -> list[int]:
    """Where the int32 `me` (packed) occurs in the packed int32 `contacts` (a contact has a
    row or two in a chunk: a byte search finds them faster than numpy is set up)."""
    out = []
    at = contacts.find(me)
    while at >= 0:
        if at % 4 == 0:
            out.append(at // 4)
            at = contacts.find(me, at + 4)
        else:  # (straddling two values)
            at = contacts.find(me, at + 1)
    return out


def _read_rows(
    db: sqlite3.Connection, rowid: int, positions: list[int], cause_ends: array, causes: bytes
) -> list[tuple]:
    out = []
    with db.blobopen("coded_chunks", "rows", rowid, readonly=True) as rows_blob:
        for pos in positions:
            rows_blob.seek(pos * ROW.size)
            row = ROW.unpack(rows_blob.read(ROW.size))
            start = cause_ends[pos - 1] if pos else 0
            end = cause_ends[pos]
            out.append((*row, causes[start:end].decode() if end > start else None))
    return out
