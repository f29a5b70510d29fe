"""Event lines decoded by msgspec get the verdict, values and message pydantic gives them
(the object path's reading: keys the event format does not have are ignored and counted)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from crm_elasticity.core.coded.events import (
    LineProblem,
    UnknownKeys,
    decode_chunk,
    decode_event,
    event_from_line,
    problem_text,
    settle,
)

BASE = {"event_id": "e1", "contact_id": "c1", "type": "open", "occurred_at": "2026-01-01T00:00:00Z"}
TIMES = [
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00",
    "2026-01-01T00:00:00.1234567Z",
    "2026-01-01T00:00:00.9999995+00:00",
    "2026-01-01 10:00:00+01:00",
    "2026-01-01T00:00:60Z",
    "2026-01-01t00:00:00z",
    "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-01-01T00:00:00-00:00",
    "2026-01-01T00:00:00+0100",
    "2026-02-30T00:00:00Z",
    "",
    "yesterday",
    1767225600,
    1.5,
    None,
    True,
]
OUT_OF_RANGE = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]


def verdict(line: bytes, unknown: UnknownKeys | None = None):
    try:
        event, extra = event_from_line(line)
    except ValidationError as exc:
        return "bad", problem_text(exc)
    if extra and unknown is not None:
        unknown.add(extra)
    return "ok", (
        event.event_id,
        event.contact_id,
        event.type,
        event.occurred_at,
        event.campaign,
        event.variant,
        event.url,
        event.source,
    )


def decoded(line: bytes, unknown: UnknownKeys | None = None):
    try:
        e = decode_event(line, unknown)
    except LineProblem as exc:
        return "bad", str(exc)
    return "ok", (
        e.event_id,
        e.contact_id,
        e.type,
        e.occurred_at,
        e.campaign,
        e.variant,
        e.url,
        e.source,
    )


@pytest.mark.parametrize("when", TIMES)
def test_times_are_read_as_pydantic_reads_them(when):
    line = json.dumps({**BASE, "occurred_at": when}).encode()
    assert decoded(line) == verdict(line)


@pytest.mark.parametrize("when", OUT_OF_RANGE)
def test_a_time_with_no_utc_instant_is_a_bad_line_not_a_crash(when):
    line = json.dumps({**BASE, "occurred_at": when}).encode()
    assert decoded(line) == ("bad", "occurred_at: not a representable instant in UTC")


values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=600), st.sampled_from(TIMES)
)
fields = st.sampled_from(
    [
        "event_id",
        "contact_id",
        "type",
        "occurred_at",
        "campaign",
        "variant",
        "url",
        "source",
        "extra",
        "region",
    ]
)


@given(st.dictionaries(fields, values, max_size=4), st.booleans())
@settings(max_examples=300, deadline=None)
def test_any_object_gets_the_same_verdict(changes, seen_extra_before):
    line = json.dumps({**BASE, **changes}).encode()
    mine, theirs = UnknownKeys(), UnknownKeys()
    if seen_extra_before:  # a file whose earlier lines had extra columns
        mine.add(["earlier"])
        theirs.add(["earlier"])
    assert decoded(line, mine) == verdict(line, theirs)
    assert mine == theirs


def test_keys_beyond_the_format_are_ignored_and_counted():
    unknown = UnknownKeys()
    lines = [
        {**BASE, "region": "EU", "score": 3},
        {**BASE, "region": "US"},
        BASE,
        {**BASE, "observed": {"property": "p", "value": "v"}},
    ]
    for item in lines:
        assert decoded(json.dumps(item).encode(), unknown)[0] == "ok"
    assert unknown.lines == 2
    assert unknown.top() == [("region", 2), ("score", 1)]


def test_a_key_beyond_the_format_does_not_hide_a_real_problem():
    line = json.dumps({**BASE, "region": "EU", "occurred_at": "2026-01-01T00:00:00"}).encode()
    assert decoded(line, UnknownKeys()) == ("bad", "occurred_at: Input should have timezone info")
    nested = json.dumps({**BASE, "observed": {"property": "p", "value": "v", "x": 1}}).encode()
    assert decoded(nested)[0] == "bad"  # inside `observed` the format is still closed


@pytest.mark.parametrize("line", [b"[1]", b"{", b"null", b'{"event_id": "e1"} x', b"\xff\xfe"])
def test_lines_that_are_not_objects(line):
    assert decoded(line) == verdict(line)


def chunk_read(lines: list[bytes], unknown: UnknownKeys):
    """What a replay reads from lines: a chunk in one call, or each line on its own."""
    events = decode_chunk(lines, unknown)
    if events is None:
        return [decoded(line, unknown) if line.strip() else None for line in lines]
    out = []
    for e in events:
        try:
            e = settle(e)
        except LineProblem as exc:
            out.append(("bad", str(exc)))
            continue
        out.append(
            (
                "ok",
                (
                    e.event_id,
                    e.contact_id,
                    e.type,
                    e.occurred_at,
                    e.campaign,
                    e.variant,
                    e.url,
                    e.source,
                ),
            )
        )
    return out


line_kinds = st.one_of(
    st.builds(
        lambda changes: json.dumps({**BASE, **changes}).encode(),
        st.dictionaries(fields, values, max_size=2),
    ),
    st.sampled_from(
        [
            b"",
            b"   ",
            b"[1]",
            b"{",
            b"null",
            b'{"event_id": "e1"} x',
            json.dumps(BASE).encode() + b", " + json.dumps(BASE).encode(),
            json.dumps(BASE).encode() + b" " + json.dumps(BASE).encode(),
        ]
    ),
)


@given(st.lists(line_kinds, max_size=6), st.booleans())
@settings(max_examples=300, deadline=None)
def test_a_chunk_read_at_once_reads_as_its_lines_one_by_one(lines, seen_extra_before):
    lines = [line + b"\n" for line in lines]
    mine, theirs = UnknownKeys(), UnknownKeys()
    if seen_extra_before:
        mine.add(["earlier"])
        theirs.add(["earlier"])
    one_by_one = [decoded(line, theirs) if line.strip() else None for line in lines]
    assert chunk_read(lines, mine) == one_by_one
    assert mine == theirs


def test_a_clean_chunk_is_read_in_one_call_and_a_flawed_one_is_not():
    good = [json.dumps({**BASE, "event_id": f"e{i}"}).encode() + b"\n" for i in range(3)]
    assert decode_chunk(good) is not None and len(decode_chunk(good)) == 3
    for flaw in (
        b"\n",
        b"{\n",
        json.dumps({**BASE, "region": "EU"}).encode() + b"\n",
        json.dumps(BASE).encode() + b"," + json.dumps(BASE).encode() + b"\n",
    ):
        assert decode_chunk([*good, flaw]) is None
