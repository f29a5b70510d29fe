from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest

from core.models import Event
from core.policy import Policy

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def days(n: float) -> timedelta:
    return timedelta(days=n)


class EventFactory:
    """Builds events with fresh ids at offsets (in days) from T0."""

    def __init__(self) -> None:
        self._ids = count(1)

    def __call__(self, kind: str, day: float, contact: str = "c1", **extra) -> Event:
        return Event(
            event_id=extra.pop("event_id", f"e{next(self._ids)}"),
            contact_id=contact,
            type=kind,
            occurred_at=T0 + days(day),
            **extra,
        )


@pytest.fixture
def ev() -> EventFactory:
    return EventFactory()


@pytest.fixture
def policy() -> Policy:
    return Policy(version="test")
