"""Sessions, re-grants, retries and the daily reserve, through real connector calls."""

from __future__ import annotations

import pytest
import requests
import responses

from crm_elasticity.connectors.base import AuthError, ConnectorError, QuotaExhausted
from crm_elasticity.connectors.salesforce import SalesforceConnector
from crm_elasticity.connectors.salesforce.config import credentials_from_env
from crm_elasticity.connectors.salesforce.http import SalesforceSession, parse_limit_info
from crm_elasticity.core.mapping import Mapping
from tests.fakes.salesforce import INSTANCE, FakeSalesforce, error
from tests.salesforce.sf_helpers import build


def contacts(fake: FakeSalesforce, n: int = 3) -> list[str]:
    return [fake.add("Contact", LastName=f"c{i}", Campaign_Status__c="Active") for i in range(n)]


def test_jwt_grant_then_reads(connector: SalesforceConnector, fake: FakeSalesforce) -> None:
    ids = contacts(fake)
    assert set(connector.read_records(ids)) == set(ids)
    assert fake.grants == 1


def test_expired_session_regrants_once_and_retries(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    ids = contacts(fake)
    connector.read_records(ids)
    fake.expire_sessions()
    assert set(connector.read_records(ids)) == set(ids)
    assert fake.grants == 2
    assert connector.client.grants == 2


def test_a_session_refused_right_after_a_grant_is_an_auth_error(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    ids = contacts(fake)
    connector.read_records(ids)
    fake.fail(5, error(401, "INVALID_SESSION_ID", "Session expired or invalid"))
    with pytest.raises(AuthError, match="freshly granted"):
        connector.read_records(ids)
    assert fake.grants == 2  # one re-grant, not a loop


def test_an_expired_ready_token_says_what_to_do(mapping: Mapping, fake: FakeSalesforce) -> None:
    fake.provision_mapping(mapping)
    env = {"SALESFORCE_ACCESS_TOKEN": "TOKEN-0", "SALESFORCE_INSTANCE_URL": f"https://{INSTANCE}"}
    connector = build(mapping, env, fake)
    ids = contacts(fake)
    assert set(connector.read_records(ids)) == set(ids)
    fake.expire_sessions()
    with pytest.raises(AuthError) as caught:
        connector.read_records(ids)
    assert "SALESFORCE_ACCESS_TOKEN" in str(caught.value)
    assert "TOKEN-0" not in str(caught.value)


def test_password_login_works_and_warns_that_soap_login_is_retiring(
    mapping: Mapping, fake: FakeSalesforce, caplog: pytest.LogCaptureFixture
) -> None:
    fake.provision_mapping(mapping)
    env = {
        "SALESFORCE_USERNAME": fake.username,
        "SALESFORCE_PASSWORD": fake.password,
        "SALESFORCE_SECURITY_TOKEN": "sectok",
    }
    ids = contacts(fake)
    with caplog.at_level("WARNING", logger="crm_elasticity.connectors.salesforce.client"):
        assert set(build(mapping, env, fake).read_records(ids)) == set(ids)
    assert "JWT" in caplog.text
    assert fake.password not in caplog.text


def test_refused_jwt_grant_explains_without_secrets(
    mapping: Mapping, env: dict[str, str], fake: FakeSalesforce
) -> None:
    fake.consumer_key = "another-app"
    connector = build(mapping, env, fake)
    with pytest.raises(AuthError) as caught:
        connector.read_records(["003000000000001AAA"])
    message = str(caught.value)
    assert "invalid_client_id" in message
    assert "BEGIN PRIVATE KEY" not in message
    assert env["SALESFORCE_CONSUMER_KEY"] not in message


def test_5xx_and_timeouts_are_retried(connector: SalesforceConnector, fake: FakeSalesforce) -> None:
    ids = contacts(fake)
    fake.fail(1, (503, {}, "Service Unavailable"))
    fake.fail(1, requests.ConnectTimeout("connect timed out"))
    slept_before = fake.clock
    assert set(connector.read_records(ids)) == set(ids)
    assert connector.calls.retries == 2
    assert fake.clock > slept_before  # backed off through the injected sleep


def test_retries_stop_after_max_attempts(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    fake.fail(10, (503, {}, "Service Unavailable"))
    with pytest.raises(ConnectorError, match="gave up after 5 attempts") as caught:
        connector.read_records(contacts(fake))
    assert caught.value.retriable


def test_concurrency_limit_backs_off_and_reports_usage(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    ids = contacts(fake)
    connector.read_records(ids)  # a usage reading now exists, far below the daily total
    fake.limit_exceeded(times=2)
    assert set(connector.read_records(ids)) == set(ids)
    assert connector.calls.throttled == 2
    assert fake.clock >= 5 * 0.75  # throttling waits longer than a 5xx retry


def test_daily_limit_stops_with_quota_exhausted(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    ids = contacts(fake)
    fake.limit_exceeded(times=1, daily=True)
    with pytest.raises(QuotaExhausted, match="daily API allowance"):
        connector.read_records(ids)


def test_limit_without_a_usage_header_reads_limits(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    fake.daily_used = fake.daily_total  # /limits will say the day is spent
    fake.fail(
        1,
        (
            403,
            {"Content-Type": "application/json"},
            '[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]',
        ),
        lambda m, p: "/query" in p,
        usage_header=False,
    )
    connector.client.session.usage = None
    with pytest.raises(QuotaExhausted):
        connector.read_records(contacts(fake))
    assert fake.count("GET", "/limits") == 1


def test_reserve_stops_before_the_allowance_is_spent(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    ids = contacts(fake)
    fake.daily_used = int(fake.daily_total * 0.95)  # 5% left; the reserve is 10%
    with pytest.raises(QuotaExhausted, match="10% of the org's daily API allowance"):
        connector.read_records(ids)  # the first answer's Sforce-Limit-Info shows 5% left
    calls = len(fake.api_calls)
    with pytest.raises(QuotaExhausted):
        connector.read_records(ids)
    assert len(fake.api_calls) == calls  # refused before sending anything


def test_session_sets_default_timeouts_and_rewrites_to_loopback() -> None:
    seen: dict[str, object] = {}

    def record(request):  # noqa: ANN001
        seen["url"] = request.url
        return 200, {"Sforce-Limit-Info": "api-usage=7/100"}, "{}"

    session = SalesforceSession(timeout=30, rewrite_to="http://127.0.0.1:8999")
    with responses.RequestsMock() as rsps:
        rsps.add_callback("GET", "http://127.0.0.1:8999/services/data/v62.0/limits", record)
        original = requests.Session.send
        captured: dict[str, object] = {}

        def spy(self, request, **kwargs):  # noqa: ANN001
            captured.update(kwargs)
            return original(self, request, **kwargs)

        requests.Session.send = spy  # type: ignore[method-assign]
        try:
            session.get(f"https://{INSTANCE}/services/data/v62.0/limits")
        finally:
            requests.Session.send = original  # type: ignore[method-assign]
    assert seen["url"] == "http://127.0.0.1:8999/services/data/v62.0/limits"
    assert captured["timeout"] == (10.0, 30)
    assert session.usage == parse_limit_info("api-usage=7/100")


def test_metadata_calls_use_our_session(connector: SalesforceConnector) -> None:
    md = connector.client.metadata(connector.client.sf)
    assert md._client.transport.session is connector.client.session


def test_api_calls_are_counted_but_token_grants_are_not(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    connector.read_records(contacts(fake))
    assert connector.calls.api_calls == len(fake.api_calls) == 1


def test_credentials_are_built_from_env(env: dict[str, str]) -> None:
    assert credentials_from_env(env).username == "integration@acme.example"


def test_a_stale_reserve_reading_is_refreshed_from_limits(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    ids = contacts(fake)
    fake.daily_used = int(fake.daily_total * 0.95)
    with pytest.raises(QuotaExhausted):
        connector.read_records(ids)
    fake.daily_used = 10  # hours later, in a long-running server
    connector.client.session.usage_at -= 3600
    assert set(connector.read_records(ids)) == set(ids)
    assert fake.count("GET", "/limits") == 1


def test_a_failed_page_resumes_after_the_last_record_read(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    ids = sorted(contacts(fake, 4500))
    fake.fail(1, (503, {}, "Service Unavailable"), lambda m, p: "/query/01gFAKE" in p)
    seen = [r.contact_id for page in connector.iter_all(None) for r in page]
    assert seen == ids  # every record once, in order, despite the lost second page
    queries = [p for m, p in fake.api_calls if m == "GET" and p.rstrip("/").endswith("/query")]
    assert len(queries) == 2  # the first query, then one re-issued from the last id seen


def test_a_lookup_whose_page_fails_returns_each_row_once(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    ids = sorted(contacts(fake, 4500))
    fake.fail(1, (503, {}, "Service Unavailable"), lambda m, p: "/query/01gFAKE" in p)
    rows = connector.client.lookup("contacts", "SELECT Id FROM Contact ORDER BY Id")
    # The lookup's query cannot resume from an id: it is read again whole, not appended to.
    assert [row["Id"] for row in rows] == ids
