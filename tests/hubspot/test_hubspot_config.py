from __future__ import annotations

import pytest

from crm_elasticity.connectors.base import ConnectorError
from crm_elasticity.connectors.hubspot import HubSpotConnector
from crm_elasticity.connectors.hubspot.search import plan_queries
from crm_elasticity.connectors.registry import connector_class
from tests.hubspot.hubspot_helpers import with_options


def test_registry_finds_the_hubspot_connector():
    assert connector_class("hubspot") is HubSpotConnector
    assert HubSpotConnector.webhook_paths == ("/webhooks/hubspot",)


def test_from_env_reads_settings_and_never_shows_the_token(mapping):
    env = {
        "HUBSPOT_ACCESS_TOKEN": "pat-na1-secret-value",
        "HUBSPOT_CLIENT_SECRET": "cs-secret",
        "HUBSPOT_BASE_URL": "http://127.0.0.1:9/",
        "HUBSPOT_RATE_LIMIT_PER_10S": "190",
    }
    connector = HubSpotConnector.from_env(mapping, env)
    assert connector.settings.base_url == "http://127.0.0.1:9"
    assert connector.settings.requests_per_10s == 190
    assert "pat-na1-secret-value" not in repr(connector.settings)
    assert "cs-secret" not in repr(connector.settings)


def test_from_env_lists_every_problem_without_echoing_values(mapping):
    env = {"HUBSPOT_BASE_URL": "ftp://pat-na1-pasted-here", "HUBSPOT_RATE_LIMIT_PER_10S": "0"}
    with pytest.raises(ConnectorError) as caught:
        HubSpotConnector.from_env(mapping, env)
    message = str(caught.value)
    assert "HUBSPOT_ACCESS_TOKEN is not set" in message
    assert "HUBSPOT_BASE_URL" in message
    assert "HUBSPOT_RATE_LIMIT_PER_10S" in message
    assert "pat-na1-pasted-here" not in message


def test_bad_options_name_the_key_path(mapping):
    bad = with_options(mapping, webhook_signatures=["v4"], surprise=1)
    with pytest.raises(ConnectorError) as caught:
        HubSpotConnector.from_env(bad, {"HUBSPOT_ACCESS_TOKEN": "t"})
    message = str(caught.value)
    assert "options.webhook_signatures[0]" in message
    assert "options.surprise: unknown key" in message


def test_query_planner_respects_hubspots_filter_limits():
    groups = [[{"propertyName": f"p{i}", "operator": "HAS_PROPERTY"}] * 3 for i in range(7)]
    queries = plan_queries(groups)
    for query in queries:
        assert len(query) <= 5
        assert sum(len(g) + 1 for g in query) <= 18  # +1: the id cursor filter in each group
    assert sum(len(q) for q in queries) == 7
    with pytest.raises(ValueError, match="HubSpot allows 6"):
        plan_queries([[{"propertyName": "p", "operator": "HAS_PROPERTY"}] * 6])
