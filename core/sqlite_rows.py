"""Contact states and decisions as rows of the SQLite store, and back."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

import orjson

from crm_elasticity.core.models import (
    Action,
    ContactState,
    Decision,
    Status,
    SuppressionReason,
    iso_utc,
)


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


_at = datetime.fromisoformat
"""A time from a NOT NULL column: never None (a NULL there fails loudly, not later)."""


def changes_json(changes: dict[str, tuple]) -> str:
    """The ledger's `changes` column: {field: [before, after]}, times as UTC ISO text. orjson
    writes it in ~1 us, `json.dumps` with a `default` hook in ~4 (more than the rule that made
    the decision). The engine keeps every time in UTC and never records a non-finite number
    (orjson would write null for one)."""
    return orjson.dumps(changes).decode()


_EXPERIMENTS_JSON: dict[tuple, str] = {}


def experiments_json(experiments: dict[str, str]) -> str:
    # A program has a handful of distinct assignments: encode each once, not once per row.
    key = tuple(experiments.items())
    text = _EXPERIMENTS_JSON.get(key)
    if text is None:
        if len(_EXPERIMENTS_JSON) > 10_000:
            _EXPERIMENTS_JSON.clear()
        text = _EXPERIMENTS_JSON[key] = json.dumps(experiments)
    return text


def contact_row(s: ContactState, due: datetime | None) -> tuple:
    return (
        s.contact_id,
        s.campaign_status.value,
        iso_utc(s.enrolled_at),
        iso_utc(s.as_of),
        iso_utc(s.status_changed_at),
        iso_utc(s.stream_entered_at),
        s.engagement_score,
        s.base_score,
        iso_utc(s.last_engagement_date),
        s.decay_steps,
        s.reactivation_cycle,
        s.reactivation_step,
        iso_utc(s.reactivation_step_at),
        s.unanswered_sends,
        s.suppression_reason.value if s.suppression_reason else None,
        experiments_json(s.experiments) if s.experiments else None,
        s.segment,
        json.dumps([iso_utc(t) for t in s.send_times]) if s.send_times else None,
        iso_utc(due),
    )


def contact_from_row(row: sqlite3.Row | tuple) -> ContactState:
    return ContactState(
        row[0],
        Status(row[1]),
        _at(row[2]),
        _at(row[3]),
        _at(row[4]),
        _at(row[5]),
        row[6],
        row[7],
        _dt(row[8]),
        row[9],
        row[10],
        row[11],
        _dt(row[12]),
        row[13],
        SuppressionReason(row[14]) if row[14] else None,
        json.loads(row[15]) if row[15] else {},
        row[16],
        tuple(_at(t) for t in json.loads(row[17])) if row[17] else (),
    )


# `.value` goes through a descriptor; None is a first decision's `from_status`.
_STATUS_TEXT: dict[Status | None, str | None] = {status: status.value for status in Status}
_STATUS_TEXT[None] = None


def decision_row(d: Decision) -> tuple:
    actions = orjson.dumps([[a.kind, a.detail] for a in d.actions]).decode() if d.actions else None
    return (
        d.contact_id,
        iso_utc(d.at),
        d.rule,
        d.reason,
        d.cause,
        _STATUS_TEXT[d.from_status],
        _STATUS_TEXT[d.to_status],
        changes_json(d.changes),
        actions,
        d.policy_version,
        d.event_type,
    )


def decision_from_row(row: tuple) -> Decision:
    actions = [Action(kind, detail) for kind, detail in json.loads(row[8])] if row[8] else []
    changes = {k: tuple(v) for k, v in json.loads(row[7]).items()}
    return Decision(
        contact_id=row[0],
        at=_at(row[1]),
        rule=row[2],
        reason=row[3],
        cause=row[4],
        from_status=Status(row[5]) if row[5] else None,
        to_status=Status(row[6]),
        changes=changes,
        policy_version=row[9],
        actions=actions,
        event_type=row[10] if len(row) > 10 else None,
    )
