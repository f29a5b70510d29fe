"""One contact's decisions from the coded ledger, read on a connection the caller has open.

`explain` reads them through `SQLiteStore.contact_decisions`, on the store's own connection:
explaining a contact opens the file once, parses its schema once, and neither the text nor the
coded ledger pays for a second connection to find out which one the store holds. No numpy
here (the writer's `core.coded.ledger` needs it): the CLI's `explain` does not load it.

A contact's row in `coded_contacts` says where each of its rows is: its part and its position
in the part (`POSITION_BITS`). A part is a record that fits one page, so one statement reads
the few pages the contact's rows are on, and nothing else: no other contact's index, no chain
of overflow pages. Only the names those rows use are read and decoded, and the rows decode
straight into what the text ledger hands out (`core.coded.decode`).
"""

from __future__ import annotations

import json
import sqlite3
import struct
from array import array

import orjson

from crm_elasticity.core.coded.decode import Texts, decisions
from crm_elasticity.core.coded.row import ROW
from crm_elasticity.core.models import Decision

_CONTACT = (
    "SELECT c.shard, c.arm, c.segment, c.rows, s.version, s.names FROM coded_contacts AS c "
    "JOIN coded_shards AS s ON s.shard = c.shard WHERE c.contact_id = ?"
)
_PARTS = "SELECT id, rows, cause_ends, causes FROM coded_parts WHERE id IN ({})"
_LISTED = 500
"""At most this many part ids listed in a statement (under SQLite's bound-parameter limit on
every build). They are listed, not passed as one JSON array: `json_each` costs more the first
time a connection uses it than reading a contact's rows."""

POSITION_BITS = 6
"""Where a row is, in `coded_contacts.rows` (int32): its part's number in the shard shifted
left by this many bits, or'ed with its position in the part (a part holds at most 32 rows, of
124 bytes or more each in `ledger.PART_BYTES`)."""
_POSITION = (1 << POSITION_BITS) - 1
_END = struct.Struct("<I")
"""A cause's end in its part's causes (`core.coded.ledger`)."""


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
    shard, arm, segment, located, version, names = contact
    rows = _read_rows(db, shard << 32, array("i", located).tolist())
    experiments = json.loads(arm) if arm else {}
    texts = Texts.of(orjson.loads(names))
    return decisions(contact_id, rows, texts, version, experiments, segment)


def _read_rows(db: sqlite3.Connection, base: int, located: list[int]) -> list[tuple]:
    """The rows at `located` (in order), from the parts of id `base` + their number."""
    ids = sorted({base + (at >> POSITION_BITS) for at in located})
    parts = {}
    for start in range(0, len(ids), _LISTED):
        some = ids[start : start + _LISTED]
        for i, rows, cause_ends, causes in db.execute(
            _PARTS.format(",".join("?" * len(some))), some
        ):
            parts[i] = (rows, cause_ends, causes)
    unpack, size, end_at = ROW.unpack_from, ROW.size, _END.unpack_from
    out = []
    for at in located:
        rows, cause_ends, causes = parts[base + (at >> POSITION_BITS)]
        pos = at & _POSITION
        start = end_at(cause_ends, (pos - 1) * _END.size)[0] if pos else 0
        end = end_at(cause_ends, pos * _END.size)[0]
        out.append((*unpack(rows, pos * size), causes[start:end].decode() if end > start else None))
    return out
