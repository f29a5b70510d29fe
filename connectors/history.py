"""`elasticity history`: past engagement as canonical events, for `replay` and `compare`.

This module holds the vendor-neutral import: a CSV export from any tool, with the user's column
mapping. Every row becomes one event with a stable id (the export's own id column, or a hash of
the row's contact, type, time and URL), and an existing output file is read first, so running
the same import again appends nothing twice.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from core.mapping import Mapping
from core.models import EVENT, Event

CANONICAL_COLUMNS = ("event_id", "contact_id", "type", "occurred_at", "campaign", "variant", "url")
REQUIRED_COLUMNS = ("contact_id", "type", "occurred_at")


class HistoryError(Exception):
    """A usage problem the user fixes (a column that does not exist, a bad --columns value)."""


def parse_pairs(text: str | None, option: str) -> dict[str, str]:
    """`a=b,c=d` -> {"a": "b", "c": "d"}."""
    pairs: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise HistoryError(
                f"{option}: expected NAME=VALUE pairs separated by commas, got {part!r}"
            )
        pairs[key.strip()] = value.strip()
    return pairs


@dataclass
class CsvImport:
    """What a CSV import did: rows read, events written, rows skipped (and why)."""

    rows: int = 0
    written: int = 0
    already_there: int = 0
    outside_window: int = 0
    bad_rows: int = 0
    types: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def parse_time(value: str) -> datetime | None:
    """ISO 8601 with a zone, or epoch seconds / milliseconds (told apart by size). A time
    without a zone is refused rather than guessed."""
    text = value.strip()
    if not text:
        return None
    try:
        if text.isdigit():
            number = int(text)
            return datetime.fromtimestamp(number / 1000 if number > 10**11 else number, tz=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        return None
    return parsed if parsed.tzinfo is not None else None


def row_event_id(contact: str, kind: str, at: datetime, url: str | None) -> str:
    digest = hashlib.sha256(f"{contact}\x1f{kind}\x1f{at.isoformat()}\x1f{url or ''}".encode())
    return f"csv:{digest.hexdigest()[:32]}"


def _existing_ids(path: Path) -> set[str]:
    ids: set[str] = set()
    if not path.exists():
        return ids
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                try:
                    ids.add(json.loads(line)["event_id"])
                except (ValueError, KeyError, TypeError):
                    continue
    return ids


def import_csv(
    mapping: Mapping,
    source: Path,
    out: Path,
    columns: dict[str, str],
    type_values: dict[str, str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    on_bad_row: Callable[[int, str], None] | None = None,
) -> CsvImport:
    """Append the CSV's rows to `out` as canonical events. `columns` maps canonical names
    (`contact_id`, `type`, `occurred_at`, optionally `event_id`, `campaign`, `variant`, `url`)
    to the CSV's header names; `type_values` maps the CSV's event words to canonical types."""
    unknown = sorted(set(columns) - set(CANONICAL_COLUMNS))
    if unknown:
        raise HistoryError(
            f"--columns: unknown canonical name(s) {unknown}; expected {list(CANONICAL_COLUMNS)}"
        )
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise HistoryError(f"--columns: map {missing} to columns of the file")
    words = {k.lower(): v for k, v in (type_values or {}).items()}
    result = CsvImport()
    seen = _existing_ids(out)
    with source.open(newline="", encoding="utf-8-sig") as handle, out.open("a") as sink:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        absent = [f"{name}={col}" for name, col in columns.items() if col not in header]
        if absent:
            raise HistoryError(
                f"--columns: {', '.join(absent)}: no such column in {source} "
                f"(it has {', '.join(header) or 'no header'})"
            )
        for event in _events(reader, columns, words, mapping, result, on_bad_row):
            if (since and event.occurred_at < since) or (until and event.occurred_at > until):
                result.outside_window += 1
                continue
            if event.event_id in seen:
                result.already_there += 1
                continue
            seen.add(event.event_id)
            sink.write(EVENT.dump_json(event, exclude_none=True).decode() + "\n")
            result.written += 1
            result.types[event.type] = result.types.get(event.type, 0) + 1
    return result


def _events(
    reader: csv.DictReader,
    columns: dict[str, str],
    words: dict[str, str],
    mapping: Mapping,
    result: CsvImport,
    on_bad_row: Callable[[int, str], None] | None,
) -> Iterator[Event]:
    policy = mapping.policy
    for row in reader:
        result.rows += 1
        line = reader.line_num

        def bad(problem: str, line: int = line) -> None:
            result.bad_rows += 1
            if on_bad_row:
                on_bad_row(line, problem)

        values = {name: (row.get(col) or "").strip() for name, col in columns.items()}
        kind = words.get(values["type"].lower(), values["type"])
        if not policy.knows_event(kind):
            bad(f"type {values['type']!r} is not an event the policy knows (map it with --types)")
            continue
        at = parse_time(values["occurred_at"])
        if at is None:
            bad(
                f"occurred_at {values['occurred_at']!r}: expected ISO 8601 with a time zone, "
                "or epoch seconds/milliseconds"
            )
            continue
        url = values.get("url") or None
        event_id = values.get("event_id") or row_event_id(values["contact_id"], kind, at, url)
        try:
            event = EVENT.validate_python(
                {
                    "event_id": event_id,
                    "contact_id": values["contact_id"],
                    "type": kind,
                    "occurred_at": at,
                    "campaign": values.get("campaign") or None,
                    "variant": values.get("variant") or None,
                    "url": url,
                    "source": "csv",
                }
            )
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]
            bad(f"{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}")
            continue
        yield event
