from __future__ import annotations

from pathlib import Path

import pytest

import crm_elasticity.core
from crm_elasticity.core.policy import Policy
from tests.helpers import EventFactory

ROOT = Path(__file__).resolve().parents[1]
if not Path(crm_elasticity.core.__file__).resolve().is_relative_to(ROOT):
    # The tests, and the processes they start, import the installed crm_elasticity: it must be
    # this checkout's (`pip install -e .` here), or they would test some other copy.
    pytest.exit(
        f"crm_elasticity.core is imported from {crm_elasticity.core.__file__}, not from this "
        f"checkout ({ROOT}): run `pip install -e .` in it",
        returncode=2,
    )


@pytest.fixture
def ev() -> EventFactory:
    return EventFactory()


@pytest.fixture
def policy() -> Policy:
    return Policy(version="test")
