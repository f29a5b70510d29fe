"""Policy versions: which version made which transitions, and what changed between them.

The pipeline stores what each version says (`policy:<version>` in the store's cursors) the
first time that version decides anything; promotions add `changelog:` entries. Diffing
consecutive snapshots gives the change log without keeping the mapping files around.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from crm_elasticity.core.cursors import Cursors

if TYPE_CHECKING:
    from crm_elasticity.core.ledger_view import LedgerView


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key paths to leaf values; lists of named items are keyed by their name."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(i, dict) and "name" in i for i in value)
    ):
        for item in value:
            rest = {k: v for k, v in item.items() if k != "name"}
            out.update(flatten(rest, f"{prefix}[{item['name']}]"))
    else:
        out[prefix] = value
    return out


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = flatten(old), flatten(new)
    lines = []
    for key in sorted(a.keys() | b.keys()):
        if key not in b:
            lines.append(f"removed {key} (was {json.dumps(a[key])})")
        elif key not in a:
            lines.append(f"added {key} = {json.dumps(b[key])}")
        elif a[key] != b[key]:
            lines.append(f"{key}: {json.dumps(a[key])} -> {json.dumps(b[key])}")
    return lines


def change_log(store: LedgerView) -> list[dict[str, Any]]:
    """Versions in the order they first decided, each with what changed from the one before,
    and promotions where they happened."""
    versions = [
        json.loads(v)
        for (v,) in store.execute(
            "SELECT value FROM cursors WHERE name LIKE ?", (Cursors.policy_like,)
        )
    ]
    versions.sort(key=lambda v: v.get("first_decision_at", ""))
    entries: list[dict[str, Any]] = []
    previous: dict[str, Any] | None = None
    for v in versions:
        snapshot = v.get("snapshot", {})
        changes = ["first version seen"] if previous is None else diff(previous, snapshot)
        if previous is not None and not changes:
            changes = ["no rule changes (the file changed elsewhere, e.g. comments)"]
        entries.append(
            {
                "at": v.get("first_decision_at"),
                "kind": "version",
                "version": v["version"],
                "changes": changes,
            }
        )
        previous = snapshot
    for (value,) in store.execute(
        "SELECT value FROM cursors WHERE name LIKE ?", (Cursors.changelog_like,)
    ):
        item = json.loads(value)
        change = (
            f"experiments[{item.get('experiment')}].default: "
            f"{json.dumps(item.get('previous_default'))} -> {json.dumps(item.get('default'))} "
            f"({item.get('verdict')})"
        )
        entries.append(
            {
                "at": item.get("at"),
                "kind": item.get("kind", "change"),
                "version": item.get("to_version"),
                "changes": [change],
            }
        )
    entries.sort(key=lambda e: e.get("at") or "")
    return entries


def versions_by_transition(store: LedgerView) -> list[dict[str, Any]]:
    rows = store.execute(
        "SELECT policy_version, from_status, to_status, SUM(n), MIN(day), MAX(day) "
        "FROM report_rows WHERE from_status <> to_status GROUP BY 1, 2, 3 ORDER BY 1, 4 DESC"
    )
    return [
        {"version": v, "from": a or "(new)", "to": b, "count": n, "first_day": d0, "last_day": d1}
        for v, a, b, n, d0, d1 in rows
    ]
