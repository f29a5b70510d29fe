"""Quarantined inbox events as a listing shows them: the event's own fields where its body
still reads as JSON, the raw body's start where it does not."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from crm_elasticity.core.models import iso_utc
from crm_elasticity.core.store import Quarantined

SHOWN_CHARS = 120


def _clip(value: Any, limit: int = SHOWN_CHARS) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quarantine_rows(
    entries: Iterable[Quarantined], applied: set[str] | frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """One row per entry; `since_applied` marks those whose event was applied afterwards (the
    vendor delivered it again and it went through)."""
    rows = []
    for entry in entries:
        try:
            body = json.loads(entry.body)
        except ValueError:
            body = None
        fields = body if isinstance(body, dict) else {"contact_id": entry.body}
        rows.append(
            {
                "event_id": _clip(entry.key),
                "contact_id": _clip(fields.get("contact_id")),
                "type": _clip(fields.get("type")),
                "occurred_at": _clip(fields.get("occurred_at")),
                "quarantined_at": iso_utc(entry.at) or "",
                "reason": _clip(entry.reason, 400),
                "since_applied": entry.key in applied,
            }
        )
    return rows
