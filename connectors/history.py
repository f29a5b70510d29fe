"""`elasticity history`: past engagement as canonical events, for `replay` and `compare`.

This module holds the vendor-neutral parts. A CSV export from any tool, with the user's column
mapping: every row becomes one event with a stable id (the export's own id column, or a hash of
the row's contact, type, time and URL). An export from the connected CRM: the connector's
`export_history` pages, written as they come, with a checkpoint next to the output file after
each page so an interrupted export resumes where it stopped. Either way an existing output file
is read first, so running the same import or export again appends nothing twice.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from crm_elasticity.connectors.base import Connector, HistoryPage, QuotaExhausted
from crm_elasticity.core.mapping import Mapping
from crm_elasticity.core.models import EVENT, Event

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


def _drop_partial_tail(path: Path) -> None:
    """A run killed while writing leaves half a line at the end; appending after it would fuse
    it with the next event into one unreadable line. Its event was never checkpointed (the
    checkpoint follows the page's flush), so dropping it is safe: the resumed run writes it."""
    if not path.exists():
        return
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        keep = 0
        position = size
        while position > 0 and not keep:
            start = max(0, position - 65536)
            handle.seek(start)
            chunk = handle.read(position - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
            position = start
        handle.truncate(keep)


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
    _drop_partial_tail(out)
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


# ---- export from the connected CRM -----------------------------------------------------------


@dataclass
class SourceReport:
    """What one source of the CRM gave: whether it holds usable history, and what was read."""

    available: bool = True
    notes: list[str] = field(default_factory=list)
    read: int = 0
    written: int = 0
    already_there: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class HistoryExport:
    """What an export did, for the summary on stderr."""

    since: datetime
    until: datetime
    resumed: bool = False
    pages: int = 0
    written: int = 0
    already_there: int = 0
    outside_window: int = 0
    types: dict[str, int] = field(default_factory=dict)
    sources: dict[str, SourceReport] = field(default_factory=dict)
    stopped: str | None = None
    """Why the export stopped before the end (the daily API reserve), resumable."""

    def source(self, name: str) -> SourceReport:
        return self.sources.setdefault(name, SourceReport())


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".checkpoint")


def _load_checkpoint(path: Path, source: str, since: datetime) -> dict | None:
    """The saved progress of an export of the same program and CRM from the same start."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        if saved.get("source") != source or parse_time(saved.get("since", "")) != since:
            return None
        until = parse_time(saved.get("until", ""))
        cursor = saved.get("cursor")
        if until is None or not isinstance(cursor, dict):
            return None
    except (OSError, ValueError, AttributeError):
        return None
    return {"until": until, "cursor": {str(k): str(v) for k, v in cursor.items()}}


def _save_checkpoint(
    path: Path, source: str, since: datetime, until: datetime, cursor: dict[str, str]
) -> None:
    """Written after the page's events are on disk, and replaced atomically: a crash between
    the two leaves the older cursor, whose page is read again and its events found there."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(
        json.dumps(
            {
                "source": source,
                "since": since.isoformat(),
                "until": until.isoformat(),
                "cursor": cursor,
            }
        )
    )
    os.replace(temporary, path)


def export_history(
    connector: Connector,
    out: Path,
    since: datetime,
    until: datetime | None,
    now: datetime,
    progress: Callable[[HistoryExport], None] | None = None,
) -> HistoryExport:
    """Append the CRM's past engagement in [since, until] to `out`. Without `until`, an export
    resumed from a checkpoint keeps the end it started with (`now` the first time)."""
    checkpoint = checkpoint_path(out)
    source = f"{connector.vendor}:{connector.mapping.program}:{connector.mapping.object}"
    saved = _load_checkpoint(checkpoint, source, since)
    if saved is not None and until is not None and saved["until"] != until:
        saved = None  # another window: start it afresh (ids keep the file free of doubles)
    if saved is not None and not out.exists():
        saved = None  # the events it counted are gone: resuming would leave them out
    end = until or (saved["until"] if saved else now)
    result = HistoryExport(since=since, until=end, resumed=saved is not None)
    _drop_partial_tail(out)
    seen = _existing_ids(out)
    pages = connector.export_history(since, end, saved["cursor"] if saved else None)
    try:
        with out.open("a") as sink:
            for page in pages:
                _write_page(page, sink, seen, result)
                sink.flush()
                os.fsync(sink.fileno())
                _save_checkpoint(checkpoint, source, since, end, page.cursor)
                if page.events or page.read:
                    result.pages += 1
                    if progress:
                        progress(result)
    except QuotaExhausted as exc:
        result.stopped = str(exc)
        return result
    checkpoint.unlink(missing_ok=True)
    return result


def _write_page(page: HistoryPage, sink: IO[str], seen: set[str], result: HistoryExport) -> None:
    source = result.source(page.source)
    if page.note and page.note not in source.notes:
        source.notes.append(page.note)
    source.available = source.available and page.available
    source.read += page.read
    for reason, count in page.skipped.items():
        source.skipped[reason] = source.skipped.get(reason, 0) + count
    for event in page.events:
        if not result.since <= event.occurred_at <= result.until:
            result.outside_window += 1
            continue
        if event.event_id in seen:
            result.already_there += 1
            source.already_there += 1
            continue
        seen.add(event.event_id)
        sink.write(EVENT.dump_json(event, exclude_none=True).decode() + "\n")
        result.written += 1
        source.written += 1
        result.types[event.type] = result.types.get(event.type, 0) + 1
