"""Shared builders for the HubSpot tests (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from crm_elasticity.connectors.hubspot import HubSpotConnector
from crm_elasticity.connectors.hubspot.config import HubSpotSettings
from crm_elasticity.core.mapping import Mapping
from tests.fakes.hubspot_server import TOKEN, FakeHubSpot

MAPPING = Path(__file__).resolve().parents[2] / "mappings" / "hubspot.yaml"
SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"


class FakeClock:
    """Monotonic seconds that only move when someone sleeps: nothing in the tests waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_settings(fake: FakeHubSpot, **overrides) -> HubSpotSettings:
    values = {
        "access_token": TOKEN,
        "client_secret": SECRET,
        "base_url": fake.url,
        "timeout_seconds": 5,
        **overrides,
    }
    return HubSpotSettings(**values)


def make_connector(fake, mapping, clock, prefetch_pages: int = 0, **overrides) -> HubSpotConnector:
    return HubSpotConnector(
        mapping,
        make_settings(fake, **overrides),
        sleep=clock.sleep,
        clock=clock,
        prefetch_pages=prefetch_pages,
    )


def with_options(mapping: Mapping, **options) -> Mapping:
    return mapping.model_copy(update={"options": {**mapping.options, **options}})
