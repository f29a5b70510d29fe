"""CRM search semantics for the fake HubSpot: HubSpot's limits, operators and error texts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

MAX_LIMIT, MAX_RESULTS = 200, 10_000
MAX_GROUPS, MAX_PER_GROUP, MAX_TOTAL = 5, 6, 18
DEFAULT_PROPERTIES = (
    "createdate",
    "email",
    "firstname",
    "hs_object_id",
    "lastmodifieddate",
    "lastname",
)


class SearchError(Exception):
    def __init__(self, message: str, category: str = "VALIDATION_ERROR") -> None:
        super().__init__(message)
        self.category = category


def to_ms(value: Any) -> int | None:
    if value is None or value == "":
        return None
    text = str(value)
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)


def typed(kind: str, raw: str | None) -> Any:
    """A stored string as the value HubSpot compares: numbers and instants numerically."""
    if raw is None or raw == "":
        return None
    if kind in ("datetime", "date"):
        return to_ms(raw)
    if kind == "number":
        try:
            return float(raw)
        except ValueError:
            return None
    return str(raw)


Predicate = Callable[[dict[str, Any]], bool]


def compile_filter(f: dict[str, Any], kinds: dict[str, str]) -> tuple[Predicate, int | None]:
    """A predicate over a record's typed values, and the id it must be above (if any)."""
    prop, op = f.get("propertyName"), f.get("operator")
    if prop not in kinds:
        raise SearchError(f"There was a problem with the request: property {prop!r} does not exist")
    kind = kinds[prop]
    if op in ("HAS_PROPERTY", "NOT_HAS_PROPERTY"):
        want = op == "HAS_PROPERTY"
        return (lambda r: (r.get(prop) is not None) is want), None
    if op in ("IN", "NOT_IN"):
        values = f.get("values")
        if not isinstance(values, list):
            raise SearchError(f"operator {op} needs 'values'")
        wanted = {typed(kind, str(v)) for v in values}
        if op == "IN":
            return (lambda r: r.get(prop) in wanted), None
        return (lambda r: r.get(prop) is not None and r.get(prop) not in wanted), None
    if "value" not in f:
        raise SearchError(f"operator {op} needs 'value'")
    value = typed(kind, str(f["value"]))
    if value is None:
        raise SearchError(f"{f['value']!r} is not a valid value for {prop}")
    compare = {
        "EQ": lambda a: a == value,
        "NEQ": lambda a: a != value,
        "LT": lambda a: a < value,
        "LTE": lambda a: a <= value,
        "GT": lambda a: a > value,
        "GTE": lambda a: a >= value,
    }.get(op)
    if compare is None:
        raise SearchError(f"operator {op!r} is not supported by the fake")
    floor = int(value) if prop == "hs_object_id" and op == "GT" else None
    if kind in ("enumeration", "string", "bool") and op not in ("EQ", "NEQ"):
        raise SearchError(f"operator {op} is not valid for {kind} property {prop}")
    return (lambda r: (a := r.get(prop)) is not None and compare(a)), floor


def compile_request(
    body: dict[str, Any], kinds: dict[str, str]
) -> tuple[list[list[Predicate]], int | None]:
    limit = body.get("limit", 10)
    if not isinstance(limit, int) or limit > MAX_LIMIT or limit < 1:
        raise SearchError(f"limit must be between 1 and {MAX_LIMIT}, got {limit!r}")
    groups = body.get("filterGroups") or []
    if len(groups) > MAX_GROUPS:
        raise SearchError(f"Too many filter groups ({len(groups)}); the maximum is {MAX_GROUPS}")
    total = sum(len(g.get("filters") or []) for g in groups)
    if total > MAX_TOTAL:
        raise SearchError(f"Too many filters ({total}); the maximum is {MAX_TOTAL}")
    sorts = body.get("sorts") or []
    if len(sorts) > 1:
        raise SearchError("Only one sort is allowed")
    for sort in sorts:
        sort = sort if isinstance(sort, dict) else {"propertyName": sort}
        if sort.get("propertyName") != "hs_object_id" or sort.get("direction") == "DESCENDING":
            raise SearchError("the fake only sorts by hs_object_id ascending")
    compiled: list[list[Predicate]] = []
    floors: list[int | None] = []
    for group in groups:
        filters = group.get("filters") or []
        if len(filters) > MAX_PER_GROUP:
            raise SearchError(
                f"Too many filters in a group ({len(filters)}); the maximum is {MAX_PER_GROUP}"
            )
        preds, floor = [], None
        for f in filters:
            pred, f_floor = compile_filter(f, kinds)
            preds.append(pred)
            floor = f_floor if floor is None or (f_floor is not None and f_floor > floor) else floor
        compiled.append(preds)
        floors.append(floor)
    # Records at or below every group's id floor cannot match: start scanning above them.
    start = None if not floors or None in floors else min(f for f in floors if f is not None)
    return compiled, start


def matches(groups: list[list[Predicate]], record: dict[str, Any]) -> bool:
    if not groups:
        return True
    return any(all(p(record) for p in group) for group in groups)
