from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from crm_elasticity.connectors.hubspot import HubSpotConnector
from crm_elasticity.core.mapping import Mapping, load_mapping
from tests.fakes.hubspot_server import FakeHubSpot
from tests.hubspot.hubspot_helpers import MAPPING, FakeClock, make_connector


@pytest.fixture
def fake() -> Iterator[FakeHubSpot]:
    # Contacts were created long before the tests' clock (2026): HubSpot stamps createdate.
    server = FakeHubSpot(now=lambda: datetime(2025, 1, 1, tzinfo=UTC))
    server.url = server.start()
    yield server
    server.stop()


@pytest.fixture
def mapping() -> Mapping:
    return load_mapping(MAPPING)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def connector(fake, mapping, clock) -> HubSpotConnector:
    return make_connector(fake, mapping, clock)


@pytest.fixture
def provisioned(fake, connector) -> HubSpotConnector:
    connector.provision()
    return connector
