"""A daily roll-up of the ledger, kept in the same commit as the decisions it counts.

`report` must read a 10M-decision ledger in seconds. SQLite has no hash aggregation, so a
GROUP BY over the ledger sorts every row (about 20 s for 10M); counting each batch's decisions
in Python (~1 us a decision) and upserting a few hundred rows per commit keeps the report's
reads to a table of (days x rules x variants) rows instead.

A row counts the decisions of one UTC day with the same rule, reason, status move, policy
version, triggering event type, experiment assignment (`arm`, the contact's assignment JSON as
stored on the contact) and reactivation cycle (for reactivation steps, and for reactivations
that happened during a reactivation sequence; 0 otherwise).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from crm_elasticity.core.models import ContactState, Decision

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_rollup (
    day TEXT NOT NULL, rule TEXT NOT NULL, reason TEXT NOT NULL, from_status TEXT NOT NULL,
    to_status TEXT NOT NULL, policy_version TEXT NOT NULL, event_type TEXT NOT NULL,
    arm TEXT NOT NULL, cycle INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (day, rule, reason, from_status, to_status, policy_version, event_type, arm, cycle)
) WITHOUT ROWID;
"""

UPSERT = (
    "INSERT INTO ledger_rollup (day, rule, reason, from_status, to_status, policy_version, "
    "event_type, arm, cycle, n) VALUES (?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT DO UPDATE SET n = n + excluded.n"
)

_REBUILD = """
INSERT INTO ledger_rollup
SELECT substr(l.at, 1, 10), l.rule, l.reason, COALESCE(l.from_status, ''), l.to_status,
       l.policy_version, COALESCE(l.event_type, ''), COALESCE(c.experiments, ''),
       CASE
         WHEN l.reason LIKE 'reactivation_step_%'
           THEN COALESCE(json_extract(l.actions, '$[0][1].cycle'), 0)
         WHEN l.reason = 'reactivated_from_dormant'
              AND json_extract(l.changes, '$.reactivation_step') IS NOT NULL
           THEN (SELECT COUNT(*) FROM ledger p WHERE p.contact_id = l.contact_id
                 AND p.seq < l.seq AND p.reason = 'reactivation_step_1')
         ELSE 0
       END,
       COUNT(*)
FROM ledger l LEFT JOIN contacts c ON c.contact_id = l.contact_id
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
"""


_ARMS: dict[tuple, str] = {}


def arm_of(state: ContactState | None) -> str:
    if state is None or not state.experiments:
        return ""
    # A program has a handful of assignments: encode each once, not once per contact.
    key = tuple(state.experiments.items())
    arm = _ARMS.get(key)
    if arm is None:
        if len(_ARMS) > 10_000:
            _ARMS.clear()
        arm = _ARMS[key] = json.dumps(state.experiments)
    return arm


_CYCLED = frozenset({f"reactivation_step_{n}" for n in range(1, 10)} | {"reactivated_from_dormant"})
"""Reasons whose roll-up row carries the reactivation cycle; all others count under cycle 0."""


def rollup_keys(
    decisions: Sequence[Decision], rows: Sequence[tuple], contacts: Sequence[ContactState]
) -> list[tuple]:
    """Each decision's roll-up key (the table's columns but `n`), in decision order. `rows`
    are the ledger rows of `decisions` (the ISO time text and status values are reused). Runs
    per decision on the commit path: plain lists, one pass, and the rare reactivation decisions
    handled apart."""
    if not decisions:
        return []
    states = {s.contact_id: s for s in contacts}
    arms: dict[str, str] = {}
    keys: list[tuple] = []
    cycled: list[int] = []
    for i, row in enumerate(rows):
        cid = row[0]
        arm = arms.get(cid)
        if arm is None:
            arm = arms[cid] = arm_of(states.get(cid))
        if row[3] in _CYCLED:
            cycled.append(i)
            keys.append(())
            continue
        keys.append(
            (row[1][:10], row[2], row[3], row[5] or "", row[6], row[9], row[10] or "", arm, 0)
        )
    # A reactivation's cycle: the contact's final cycle less the cycles it started later in
    # this batch (only step 1 starts one).
    started_later: dict[str, int] = {}
    for i in reversed(cycled):
        d, row = decisions[i], rows[i]
        cid = row[0]
        if row[3] == "reactivated_from_dormant":
            cycle = 0
            if "reactivation_step" in d.changes:
                state = states.get(cid)
                final = state.reactivation_cycle if state is not None else 0
                cycle = max(0, final - started_later.get(cid, 0))
        else:
            cycle = d.actions[0].detail.get("cycle", 0) if d.actions else 0
            if row[3] == "reactivation_step_1":
                started_later[cid] = started_later.get(cid, 0) + 1
        keys[i] = (
            row[1][:10],
            row[2],
            row[3],
            row[5] or "",
            row[6],
            row[9],
            row[10] or "",
            arms[cid],
            cycle,
        )
    return keys


def rollup_rows(
    decisions: Sequence[Decision], rows: Sequence[tuple], contacts: Sequence[ContactState]
) -> list[tuple]:
    """Roll-up increments for a batch: (key..., n) per distinct key of `rollup_keys`."""
    counts: dict[tuple, int] = {}
    get = counts.get
    for key in rollup_keys(decisions, rows, contacts):
        counts[key] = get(key, 0) + 1
    return [(*key, n) for key, n in counts.items()]


def ensure_rollup(db: sqlite3.Connection) -> None:
    """Create the roll-up; on a store that predates it, build it once from the ledger."""
    existed = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger_rollup'"
    ).fetchone()
    db.executescript(SCHEMA)
    if existed:
        return
    if db.execute("SELECT 1 FROM ledger LIMIT 1").fetchone() is None:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(_REBUILD)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
