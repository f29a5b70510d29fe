from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from crm_elasticity.connectors.salesforce import SalesforceConnector
from crm_elasticity.core.mapping import Mapping, load_mapping
from tests.fakes.salesforce import ORG_ID, FakeSalesforce
from tests.salesforce.sf_helpers import OUTBOUND_TOKEN, ROOT, SECRET, build


@pytest.fixture(scope="session")
def rsa_key() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.fixture
def mapping() -> Mapping:
    return load_mapping(ROOT / "mappings" / "salesforce.yaml")


@pytest.fixture
def fake(rsa_key: tuple[bytes, bytes]) -> Iterator[FakeSalesforce]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        org = FakeSalesforce()
        org.jwt_public_key = rsa_key[1]
        yield org.install(rsps)


@pytest.fixture
def env(tmp_path: Path, rsa_key: tuple[bytes, bytes], fake: FakeSalesforce) -> dict[str, str]:
    key_file = tmp_path / "server.key"
    key_file.write_bytes(rsa_key[0])
    return {
        "SALESFORCE_CONSUMER_KEY": fake.consumer_key,
        "SALESFORCE_USERNAME": fake.username,
        "SALESFORCE_PRIVATE_KEY_FILE": str(key_file),
        "SALESFORCE_ORG_ID": ORG_ID[:15],
        "SALESFORCE_WEBHOOK_SECRET": SECRET,
        "SALESFORCE_OUTBOUND_TOKEN": OUTBOUND_TOKEN,
    }


@pytest.fixture
def connector(mapping: Mapping, env: dict[str, str], fake: FakeSalesforce) -> SalesforceConnector:
    fake.provision_mapping(mapping)
    return build(mapping, env, fake)
