"""Helpers of the Salesforce tests: paths, the secrets the `env` fixture (conftest.py) sets,
and a connector built on the fake org's clock."""

from __future__ import annotations

from pathlib import Path

from connectors.salesforce import SalesforceConnector
from connectors.salesforce.config import credentials_from_env
from core.mapping import Mapping
from tests.fakes.salesforce import FakeSalesforce

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "whsec-test-0123456789"
OUTBOUND_TOKEN = "outbound-token-0123456789-abcdefghij"
OUTBOUND_QUERY = f"token={OUTBOUND_TOKEN}"


def build(mapping: Mapping, env: dict[str, str], fake: FakeSalesforce) -> SalesforceConnector:
    return SalesforceConnector(
        mapping, credentials_from_env(env), sleep=fake.sleep, jitter=lambda: 0.5
    )
