"""`serve mappings/hubspot.yaml mappings/salesforce.yaml`: one store, one worker, two runners.
Each vendor's events must reach only its own runner."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crm_elasticity.connectors.runner import Runner
from crm_elasticity.connectors.salesforce import SalesforceConnector
from crm_elasticity.connectors.server import build_server
from crm_elasticity.core.mapping import load_mapping
from crm_elasticity.core.models import Status
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.fakes.hubspot_server import FakeHubSpot
from tests.fakes.salesforce import FakeSalesforce
from tests.hubspot.hubspot_helpers import MAPPING as HUBSPOT_MAPPING
from tests.hubspot.hubspot_helpers import FakeClock, make_connector
from tests.salesforce.test_sf_webhooks import events_body, signed


@pytest.fixture
def hubspot() -> Iterator[FakeHubSpot]:
    server = FakeHubSpot(now=lambda: datetime(2025, 1, 1, tzinfo=UTC))
    server.url = server.start()
    yield server
    server.stop()


def test_a_salesforce_unsubscribe_is_decided_and_written_by_the_salesforce_runner_only(
    connector: SalesforceConnector, fake: FakeSalesforce, hubspot: FakeHubSpot, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    contact = fake.add(
        "Contact",
        LastName="u",
        Campaign_Status__c="Active",
        Engagement_Score__c=5,
        Last_Engagement_Date__c=(now - timedelta(days=3)).isoformat().replace("+00:00", "Z"),
    )
    hubspot_connector = make_connector(hubspot, load_mapping(HUBSPOT_MAPPING), FakeClock())
    hubspot_connector.provision()
    store = SQLiteStore.in_data_dir(tmp_path)
    # HubSpot's runner first: before partitions it drained the whole inbox, Salesforce's too.
    runners = [Runner(hubspot_connector, store), Runner(connector, store)]
    server, worker = build_server(runners, port=0)
    assert worker is not None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        body = events_body(
            event_id="sf-unsub-1",
            contact_id=contact,
            type="unsubscribe",
            occurred_at=(now - timedelta(minutes=1)).isoformat(),
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.server_address[1]}/webhooks/salesforce/events",
            data=body,
            headers=signed(body, at=now),
        )
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
            assert json.loads(answer.read())["new"] == 1
    finally:
        server.shutdown()
        server.server_close()
    hubspot_calls = len(hubspot.log)
    worker.drain_once()

    assert store.inbox_take(10) == []
    ledger = store.ledger_for(contact)
    assert ledger and ledger[-1].to_status is Status.SUPPRESSED
    assert {d.policy_version for d in ledger} == {runners[1].policy.version}
    record = fake.records["Contact"][contact]
    assert record["Campaign_Status__c"] == "Suppressed"
    assert record["Elastic_Suppression_Reason__c"] == "unsubscribe"
    assert len(hubspot.log) == hubspot_calls  # HubSpot was neither read nor written
