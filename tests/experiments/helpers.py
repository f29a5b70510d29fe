"""Mappings and event streams shared by the experiment tests."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from crm_elasticity.core.mapping import Mapping, parse_mapping
from crm_elasticity.core.models import Event
from tests.helpers import T0

HUBSPOT = Path(__file__).resolve().parents[2] / "mappings" / "hubspot.yaml"


def hubspot_text(extra: str = "", replace: dict[str, str] | None = None) -> str:
    text = HUBSPOT.read_text()
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    return text + extra


def mapping(extra: str = "", replace: dict[str, str] | None = None) -> Mapping:
    return parse_mapping(hubspot_text(extra, replace).encode(), "test.yaml")


def event(eid: str, contact: str, kind: str, day: float) -> Event:
    return Event(event_id=eid, contact_id=contact, type=kind, occurred_at=T0 + timedelta(days=day))
