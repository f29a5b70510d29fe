from __future__ import annotations

from pathlib import Path

import pytest

from crm_elasticity.connectors.base import ConnectorError
from crm_elasticity.connectors.salesforce import SalesforceConnector
from crm_elasticity.connectors.salesforce.config import credentials_from_env, load_options
from crm_elasticity.core.mapping import Mapping


def test_jwt_is_chosen_when_its_three_variables_are_set(env: dict[str, str]) -> None:
    creds = credentials_from_env(env)
    assert creds.kind == "jwt"
    assert creds.can_regrant


def test_password_then_token_paths() -> None:
    creds = credentials_from_env(
        {
            "SALESFORCE_USERNAME": "u@x",
            "SALESFORCE_PASSWORD": "pw",
            "SALESFORCE_SECURITY_TOKEN": "tok",
            "SALESFORCE_DOMAIN": "test",
        }
    )
    assert (creds.kind, creds.domain) == ("password", "test")
    creds = credentials_from_env(
        {
            "SALESFORCE_ACCESS_TOKEN": "00Dxx!secret-token",
            "SALESFORCE_INSTANCE_URL": "https://acme.my.salesforce.com",
        }
    )
    assert creds.kind == "token"
    assert not creds.can_regrant
    assert "secret-token" not in repr(creds)


def test_missing_credentials_name_the_variables_not_values() -> None:
    with pytest.raises(ConnectorError) as caught:
        credentials_from_env({"SALESFORCE_ACCESS_TOKEN": "00Dxx!secret-token"})
    message = str(caught.value)
    assert "SALESFORCE_INSTANCE_URL" in message
    assert "secret-token" not in message


def test_jwt_without_username_or_key_file_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ConnectorError, match="SALESFORCE_USERNAME"):
        credentials_from_env(
            {"SALESFORCE_CONSUMER_KEY": "ck", "SALESFORCE_PRIVATE_KEY_FILE": str(tmp_path / "k")}
        )
    with pytest.raises(ConnectorError, match="no such file"):
        credentials_from_env(
            {
                "SALESFORCE_CONSUMER_KEY": "ck",
                "SALESFORCE_USERNAME": "u",
                "SALESFORCE_PRIVATE_KEY_FILE": str(tmp_path / "missing.key"),
            }
        )


def test_host_rewrite_is_loopback_only() -> None:
    base = {
        "SALESFORCE_ACCESS_TOKEN": "t",
        "SALESFORCE_INSTANCE_URL": "https://a.my.salesforce.com",
    }
    creds = credentials_from_env({**base, "SALESFORCE_REWRITE_TO": "http://127.0.0.1:8999/x"})
    assert creds.rewrite_to == "http://127.0.0.1:8999"
    with pytest.raises(ConnectorError, match="loopback"):
        credentials_from_env({**base, "SALESFORCE_REWRITE_TO": "http://evil.example:80"})


def test_my_domain_prefix_for_the_jwt_token_endpoint(env: dict[str, str]) -> None:
    creds = credentials_from_env(
        {**env, "SALESFORCE_INSTANCE_URL": "https://acme.my.salesforce.com"}
    )
    assert creds.my_domain_prefix == "acme.my"


def test_bad_options_are_reported_with_their_key_path(mapping: Mapping) -> None:
    broken = mapping.model_copy(
        update={"options": {"bulk_threshold": 0, "api_version": "v62", "surprise": 1}}
    )
    with pytest.raises(ConnectorError) as caught:
        load_options(broken)
    lines = str(caught.value).splitlines()
    assert any("options.bulk_threshold" in line for line in lines)
    assert any("options.api_version" in line for line in lines)
    assert any("options.surprise: unknown key" in line for line in lines)


def test_object_must_be_contact_or_lead(mapping: Mapping, env: dict[str, str]) -> None:
    with pytest.raises(ConnectorError, match="Contact or Lead"):
        SalesforceConnector(
            mapping.model_copy(update={"object": "contacts"}), credentials_from_env(env)
        )


def test_registry_finds_the_connector(mapping: Mapping, env: dict[str, str]) -> None:
    from crm_elasticity.connectors.registry import load_connector

    connector = load_connector(mapping, env)
    assert isinstance(connector, SalesforceConnector)
    assert connector.webhook_paths == ("/webhooks/salesforce", "/webhooks/salesforce/events")


@pytest.mark.parametrize(
    "token", ["short", "x" * 31, "has spaces and is long enough 0123456789", "a&b" * 20]
)
def test_a_weak_or_url_unsafe_outbound_token_is_refused(token: str) -> None:
    env = {
        "SALESFORCE_ACCESS_TOKEN": "00D!x",
        "SALESFORCE_INSTANCE_URL": "https://acme.my.salesforce.com",
        "SALESFORCE_OUTBOUND_TOKEN": token,
    }
    with pytest.raises(ConnectorError, match="SALESFORCE_OUTBOUND_TOKEN") as refused:
        credentials_from_env(env)
    assert token not in str(refused.value)


def test_the_outbound_token_is_kept_secret() -> None:
    token = "A" * 40
    credentials = credentials_from_env(
        {
            "SALESFORCE_ACCESS_TOKEN": "00D!x",
            "SALESFORCE_INSTANCE_URL": "https://acme.my.salesforce.com",
            "SALESFORCE_OUTBOUND_TOKEN": token,
        }
    )
    assert credentials.outbound_token is not None
    assert token not in repr(credentials)
