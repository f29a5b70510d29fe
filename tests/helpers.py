"""Helpers shared by the tests: the tests' epoch `T0`, day offsets and an event factory.
Tests import them from here (conftest.py only declares fixtures)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

from crm_elasticity.connectors.base import WriteRequest
from crm_elasticity.core.models import Event

T0 = datetime(2026, 1, 1, tzinfo=UTC)
"""The tests' epoch: events and clocks are offsets from it."""


def days(n: float) -> timedelta:
    return timedelta(days=n)


def writes(values: dict[str, dict[str, Any]]) -> list[WriteRequest]:
    """Contact id -> canonical fields, as the write requests `Connector.write_records` takes."""
    return [WriteRequest(cid, dict(fields)) for cid, fields in values.items()]


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
