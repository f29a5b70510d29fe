"""Event lines decoded with msgspec: the same rules as `core.models.Event` (lengths, a
timezone-aware time) at a tenth of pydantic's cost.

A line msgspec refuses goes through pydantic as well, so the verdict and the problem reported
for a bad line are exactly the webhook path's (and a line only pydantic's lax parsing accepts
still counts).

A line is an export's row: a key the event format does not have (an export's extra column) is
ignored and counted (`UnknownKeys`), on both replay paths. The webhooks' canonical events keep
refusing one (`core.models.Event`): that is their documented contract.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from pydantic import ValidationError

from crm_elasticity.core.models import (
    EARLIEST_INSTANT,
    EVENT,
    LATEST_INSTANT,
    MAX_LABEL_CHARS,
    MAX_URL_CHARS,
    Event,
    instant_problem,
)


class WireEvent(msgspec.Struct):
    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    contact_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    occurred_at: Annotated[datetime, msgspec.Meta(tz=True)]
    campaign: Annotated[str, msgspec.Meta(max_length=MAX_LABEL_CHARS)] | None = None
    variant: Annotated[str, msgspec.Meta(max_length=MAX_LABEL_CHARS)] | None = None
    url: Annotated[str, msgspec.Meta(max_length=MAX_URL_CHARS)] | None = None
    source: Annotated[str, msgspec.Meta(max_length=MAX_LABEL_CHARS)] | None = None


class _StrictWireEvent(WireEvent, forbid_unknown_fields=True):
    """A line with no key beyond the format's: decoded in one pass (the common case)."""


_DECODE = msgspec.json.Decoder(_StrictWireEvent).decode
_LENIENT = msgspec.json.Decoder(WireEvent).decode
_KEYS = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_UNKNOWN_FIELD = "Object contains unknown field"
EVENT_KEYS = frozenset(Event.__dataclass_fields__)
"""The keys of an event line; `observed` is one (the object path reads it)."""


@dataclass
class UnknownKeys:
    """Lines of a replay that carried keys the event format does not have, and those keys
    (counted by the set of them a line had: an export's lines mostly share one)."""

    lines: int = 0
    shapes: Counter = field(default_factory=Counter)

    def add(self, keys: Iterable[str]) -> None:
        self.lines += 1
        self.shapes[tuple(sorted(keys))] += 1

    @property
    def keys(self) -> Counter:
        found: Counter = Counter()
        for shape, n in self.shapes.items():
            for key in shape:
                found[key] += n
        return found

    def top(self, n: int = 5) -> list[tuple[str, int]]:
        return sorted(self.keys.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


_EXTRA_OF: dict[tuple[str, ...], tuple[str, ...]] = {}
"""A line's keys (in their order) -> those beyond the format, sorted: lines mostly repeat one."""
_EXTRA_OF_MAX = 4096


_SUBMICROSECOND = re.compile(rb"\.\d{7}")
"""A time with more than six fractional digits: msgspec rounds it, pydantic truncates."""


class LineProblem(ValueError):
    """The line is not an event; the message says why, as the webhook path would."""


def problem_text(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "line"
        parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


_EXTRA = frozenset({"unexpected_keyword_argument", "extra_forbidden"})
"""How pydantic names a key beyond the format (a dataclass's word, a model's)."""


def event_from_line(line: bytes | str) -> tuple[Event, list[str]]:
    """One JSON line as an `Event` (pydantic, the object path's reading) and the top-level keys
    it ignored; `ValidationError` when the line is not an event even without them."""
    try:
        return EVENT.validate_json(line), []
    except ValidationError as exc:
        extra = [
            str(e["loc"][0])
            for e in exc.errors(include_url=False)
            if e["type"] in _EXTRA and len(e["loc"]) == 1
        ]
        if not extra:
            raise
    data = json.loads(line)  # an object: pydantic found keys in it
    for key in extra:
        data.pop(key, None)
    return EVENT.validate_python(data), extra


def _lenient(line: bytes, unknown: UnknownKeys | None) -> WireEvent | None:
    """A line with keys beyond the format's, or None when msgspec refuses it even so."""
    try:
        keys = _KEYS(line)
        event = _LENIENT(line)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if "observed" in keys:  # not a WireEvent field: pydantic checks it
        return None
    if unknown is not None:
        shape = tuple(keys)
        extra = _EXTRA_OF.get(shape)
        if extra is None:
            extra = tuple(sorted(k for k in keys if k not in EVENT_KEYS))
            if len(_EXTRA_OF) < _EXTRA_OF_MAX:
                _EXTRA_OF[shape] = extra
        if extra:
            unknown.lines += 1
            unknown.shapes[extra] += 1
    return event


_DECODE_MANY = msgspec.json.Decoder(list[_StrictWireEvent]).decode


def decode_chunk(
    lines: list[bytes], unknown: UnknownKeys | None = None
) -> Sequence[WireEvent] | None:
    """Many lines in one msgspec call: their events, one a line, with the times as msgspec
    reads them (`settle` them as `decode_event` does), or None when any line needs reading on
    its own with `decode_event` (a line msgspec refuses, a blank line, a sub-microsecond time,
    keys beyond the format's, or a file already known to carry such keys). The lines are
    joined as the items of one JSON array, so a line that is not one JSON value breaks the
    array, and the count is checked."""
    if unknown is not None and unknown.lines:
        return None
    joined = b",".join(lines)
    if _SUBMICROSECOND.search(joined) is not None:
        return None
    try:
        events = _DECODE_MANY(b"[" + joined + b"]")
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return events if len(events) == len(lines) else None


def settle(event: WireEvent) -> WireEvent:
    """A decoded event's time in UTC and within the instants an event may have, or
    `LineProblem`."""
    at = event.occurred_at
    if at.tzinfo is not UTC:
        try:
            at = event.occurred_at = at.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: no such UTC instant
            raise LineProblem("occurred_at: not a representable instant in UTC") from None
    if EARLIEST_INSTANT <= at < LATEST_INSTANT:
        return event
    raise LineProblem(f"occurred_at: {instant_problem(at)}")


def decode_event(line: bytes, unknown: UnknownKeys | None = None) -> WireEvent:
    """One JSON line as an event, or `LineProblem`. Keys the format does not have are ignored
    and, with `unknown`, counted there."""
    if _SUBMICROSECOND.search(line) is None:
        event: WireEvent | None = None
        if unknown is None or not unknown.lines:
            try:
                event = _DECODE(line)
            except msgspec.ValidationError as exc:
                if str(exc).startswith(_UNKNOWN_FIELD):
                    event = _lenient(line, unknown)
            except msgspec.DecodeError:
                pass
        else:  # this file carries extra columns: expect them on every line
            event = _lenient(line, unknown)
        if event is not None:
            return settle(event)
    try:
        checked, extra = event_from_line(line)
    except ValidationError as exc:
        raise LineProblem(problem_text(exc)) from None
    except OverflowError:  # converting the time to UTC left the calendar
        raise LineProblem("occurred_at: not a representable instant in UTC") from None
    if extra and unknown is not None:
        unknown.add(extra)
    at = checked.occurred_at
    return WireEvent(
        checked.event_id,
        checked.contact_id,
        checked.type,
        at if at.tzinfo is UTC else at.astimezone(UTC),
        checked.campaign,
        checked.variant,
        checked.url,
        checked.source,
    )
