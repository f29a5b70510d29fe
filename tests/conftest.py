from __future__ import annotations

import pytest

from crm_elasticity.core.policy import Policy
from tests.helpers import EventFactory


@pytest.fixture
def ev() -> EventFactory:
    return EventFactory()


@pytest.fixture
def policy() -> Policy:
    return Policy(version="test")
