"""Random canonical event streams delivered the way webhooks arrive (late, out of order, some
twice), and the reference they must end at: `replay` of the same events sorted.

Used by the differential tests of `serve` and of the Lambda worker: both must end every contact
in the state replay gives, however the deliveries were shuffled."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from crm_elasticity.core.mapping import Mapping
from crm_elasticity.core.models import ContactState, Event
from crm_elasticity.core.replay import replay_file, state_json

STREAM_START = datetime(2030, 3, 1, tzinfo=UTC)  # the generated stream's first instant
SHUFFLE = timedelta(hours=6)
REDELIVERED = 0.05
KINDS = {
    "send": 36,
    "open": 20,
    "click": 10,
    "high_intent_visit": 9,
    "unsubscribe": 3,
    "hard_bounce": 1,
    "spam_complaint": 1,
    "resubscribe": 5,
}


def generate(contacts: int, seed: int) -> list[Event]:
    """Each contact enrolls, then 5-25 events: bursts hours apart (where delivery order
    matters), the odd long silence (dormancy and reactivation steps fire in between), repeat
    visits to the same page, compliance exits and resubscribes, and some events at the same
    instant. Ids are unique and random, so ties are not broken by generation order."""
    rng = random.Random(seed)
    kinds, weights = list(KINDS), list(KINDS.values())
    events: list[Event] = []
    for n in range(contacts):
        cid = f"c{n:04d}"
        at = STREAM_START + timedelta(hours=rng.uniform(0, 48))
        events.append(_event(rng, cid, "enroll", at))
        for _ in range(rng.randint(5, 25)):
            roll = rng.random()
            if roll < 0.05:
                pass  # the same instant as the previous event
            elif roll < 0.12:
                at += timedelta(days=rng.uniform(20, 130))
            else:
                at += timedelta(hours=rng.expovariate(1 / 5))
            kind = rng.choices(kinds, weights)[0]
            url = "https://example.com/pricing" if kind == "high_intent_visit" else None
            events.append(_event(rng, cid, kind, at, url))
    return events


def _event(rng: random.Random, cid: str, kind: str, at: datetime, url: str | None = None) -> Event:
    return Event(
        event_id=f"{cid}-{rng.getrandbits(40):010x}",
        contact_id=cid,
        type=kind,
        occurred_at=at,
        url=url,
    )


def deliveries(events: list[Event], seed: int) -> list[Event]:
    """Each event delivered up to `SHUFFLE` after it happened, in delivery order; `REDELIVERED`
    of them delivered a second time, up to `SHUFFLE` after the first."""
    rng = random.Random(seed)
    timed: list[tuple[datetime, int, Event]] = []
    for i, event in enumerate(events):
        first = event.occurred_at + SHUFFLE * rng.random()
        timed.append((first, i, event))
        if rng.random() < REDELIVERED:
            timed.append((first + SHUFFLE * rng.random(), i, event))
    timed.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in timed]


def requests(delivered: list[Event], seed: int) -> Iterable[list[Event]]:
    """The deliveries as webhook requests of one to five events each."""
    rng = random.Random(seed)
    start = 0
    while start < len(delivered):
        size = rng.randint(1, 5)
        yield delivered[start : start + size]
        start += size


def _as_dict(e: Event) -> dict[str, str]:
    fields = {
        "event_id": e.event_id,
        "contact_id": e.contact_id,
        "type": e.type,
        "occurred_at": e.occurred_at.isoformat(),
        "url": e.url,
    }
    return {k: v for k, v in fields.items() if v is not None}


def body(events: list[Event]) -> bytes:
    return json.dumps([_as_dict(e) for e in events]).encode()


def replayed(mapping: Mapping, events: list[Event], workdir: Path) -> tuple[dict, datetime]:
    """`replay` of the sorted events: each contact's state (as `replay` prints it) and the time
    its time rules were run up to."""
    ordered = sorted(events, key=lambda e: (e.occurred_at, e.event_id))
    path = workdir / "sorted.jsonl"
    path.write_text("".join(json.dumps(_as_dict(e)) + "\n" for e in ordered))
    result = replay_file(mapping, path, workdir / "replay.sqlite3")
    states = {s.contact_id: state_json(s) for page in result.store.iter_contacts() for s in page}
    result.store.close()
    assert result.until is not None and result.bad_lines == 0
    return states, result.until


def differences(reference: dict[str, dict], got: dict[str, ContactState]) -> list[str]:
    found = []
    for cid, expected in sorted(reference.items()):
        state = got.get(cid)
        actual = state_json(state) if state is not None else None
        if actual != expected:
            found.append(f"{cid}: replay {expected} != {actual}")
    return found
