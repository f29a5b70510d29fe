"""End to end through the shared `connectors.runner.Runner` on an in-memory SQLite store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crm_elasticity.connectors.base import WebhookRequest
from crm_elasticity.connectors.intake import handle_webhook
from crm_elasticity.connectors.runner import Runner
from crm_elasticity.connectors.salesforce import SalesforceConnector
from crm_elasticity.core.cursors import Cursors
from crm_elasticity.core.mapping import Mapping
from crm_elasticity.core.models import Event
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.fakes.salesforce import FakeSalesforce
from tests.salesforce.sf_helpers import FIXTURES, OUTBOUND_QUERY, build

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def runner_for(connector: SalesforceConnector, at: datetime = NOW) -> Runner:
    return Runner(connector, SQLiteStore(":memory:"), clock=lambda: at)


def silent_contacts(fake: FakeSalesforce, n: int, days: int = 120) -> list[str]:
    """Active contacts whose last engagement is `days` old: due to go Dormant at 90."""
    last = NOW - timedelta(days=days)
    return [
        fake.add(
            "Contact",
            LastName=f"s{i}",
            Campaign_Status__c="Active",
            Last_Engagement_Date__c=iso(last),
            Engagement_Score__c=0,
            Elastic_Status_Changed_At__c=iso(last),
            CreatedDate=iso(last - timedelta(days=9)),
        )
        for i in range(n)
    ]


def test_sync_moves_silent_contacts_to_dormant_and_a_second_sync_writes_nothing(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    silent = silent_contacts(fake, 5)
    fresh = fake.add(
        "Contact",
        LastName="f",
        Campaign_Status__c="Active",
        Last_Engagement_Date__c=iso(NOW - timedelta(days=3)),
    )
    suppressed = fake.add(
        "Contact",
        LastName="x",
        Campaign_Status__c="Suppressed",
        Elastic_Suppression_Reason__c="unsubscribe",
    )
    runner = runner_for(connector)
    summary = runner.sync(NOW)
    assert summary.stopped is None
    assert summary.transitions["Active->Dormant"] == 5
    assert summary.written == 5
    assert {fake.records["Contact"][c]["Campaign_Status__c"] for c in silent} == {"Dormant"}
    assert fake.records["Contact"][fresh]["Campaign_Status__c"] == "Active"
    assert fake.records["Contact"][suppressed]["Campaign_Status__c"] == "Suppressed"
    again = runner.sync(NOW)
    assert (again.decisions, again.written) == (0, 0)


def test_due_query_skips_what_cannot_be_due(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    silent = silent_contacts(fake, 2)
    fake.add(
        "Contact",
        LastName="f",
        Campaign_Status__c="Active",
        Last_Engagement_Date__c=iso(NOW - timedelta(days=3)),
    )
    fake.add("Contact", LastName="x", Campaign_Status__c="Suppressed")
    fake.add(
        "Contact",
        LastName="d",
        Campaign_Status__c="Dormant",
        Elastic_Status_Changed_At__c=iso(NOW - timedelta(days=10)),
    )  # cooling not over
    found = [r.contact_id for page in connector.find_due(NOW, None) for r in page]
    assert found == sorted(silent)


def test_engagement_seen_by_outbound_message_and_by_poll_counts_once(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    cid = fake.add(
        "Contact",
        Id="003000000000101AAA",
        LastName="Black",
        Campaign_Status__c="Active",
        Engagement_Score__c=0,
        Last_Email_Open_Date__c="2026-03-02T09:15:00.000Z",
        Last_Email_Click_Date__c="2026-03-02T09:16:30.000Z",
        pi__url__c="https://www.acme.example/pricing",
        SystemModstamp="2026-03-02T09:17:00Z",
    )
    at = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    runner = runner_for(connector, at)
    body = (FIXTURES / "contact_notifications.xml").read_bytes()
    request = WebhookRequest(
        "POST", "/webhooks/salesforce", OUTBOUND_QUERY, {"content-type": "text/xml"}, body, at
    )
    answer = handle_webhook(connector, request, runner.record)
    # Six engagement values, and two opt-outs already false: a snapshot of those lifts nothing.
    assert answer.recorded == 8
    runner.drain_inbox()
    record = fake.records["Contact"][cid]
    assert record["Engagement_Score__c"] == 30  # open 5 + click 10 + pricing visit 15
    assert record["Campaign_Status__c"] == "Engaged"
    summary = runner.sync(at)  # the SOQL catch-up sees the same three values: seen already
    assert summary.events_polled == 0
    assert fake.records["Contact"][cid]["Engagement_Score__c"] == 30
    (task,) = fake.records["Task"].values()  # one hand-off, owned by the record's owner
    assert (task["WhoId"], task["OwnerId"]) == (cid, record["OwnerId"])


def test_poll_path_turns_new_values_into_events(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    cid = fake.add(
        "Contact",
        LastName="p",
        Campaign_Status__c="Active",
        Last_Email_Open_Date__c="2026-05-30T08:00:00Z",
        SystemModstamp="2026-05-30T08:00:00Z",
    )
    runner = runner_for(connector)
    runner.sync(NOW)
    assert fake.records["Contact"][cid]["Engagement_Score__c"] == 5
    fake.records["Contact"][cid]["Last_Email_Click_Date__c"] = "2026-06-01T12:20:00.000+0000"
    fake.records["Contact"][cid]["SystemModstamp"] = "2026-06-01T12:20:00.000+0000"
    later = NOW + timedelta(hours=1)
    runner.sync(later)
    assert fake.records["Contact"][cid]["Engagement_Score__c"] == 15


def test_a_big_sync_writes_through_one_bulk_job(
    mapping: Mapping, env: dict, fake: FakeSalesforce
) -> None:
    fake.provision_mapping(mapping)
    options = {**mapping.options, "bulk_threshold": 50, "page_size": 200}
    connector = build(mapping.model_copy(update={"options": options}), env, fake)
    silent = silent_contacts(fake, 300)
    summary = runner_for(connector).sync(NOW)
    assert summary.written == 300
    assert len(fake.jobs) == 1
    assert fake.count("PATCH", "composite/sobjects") == 0
    assert {fake.records["Contact"][c]["Campaign_Status__c"] for c in silent} == {"Dormant"}


def test_a_sync_stopped_by_the_daily_reserve_resumes_where_it_stopped(
    mapping: Mapping, env: dict, fake: FakeSalesforce
) -> None:
    fake.provision_mapping(mapping)
    options = {**mapping.options, "page_size": 200}
    connector = build(mapping.model_copy(update={"options": options}), env, fake)
    silent = silent_contacts(fake, 1000)
    store = SQLiteStore(":memory:")
    runner = Runner(connector, store, clock=lambda: NOW)
    fake.daily_used = int(fake.daily_total * 0.9) - 3  # a few calls left above the reserve
    first = runner.sync(NOW)
    assert first.stopped is not None
    assert "resumable" in first.stopped
    assert 0 < first.examined < 1000
    assert store.get_cursor(Cursors.due_after)  # checkpointed mid-way
    fake.daily_used = 0  # the rolling 24 hours moved on; the next scheduled run starts afresh
    runner = Runner(
        build(mapping.model_copy(update={"options": options}), env, fake), store, clock=lambda: NOW
    )
    second = runner.sync(NOW)
    assert second.stopped is None
    assert {fake.records["Contact"][c]["Campaign_Status__c"] for c in silent} == {"Dormant"}
    # Each went Dormant at 90 days and reached reactivation step 1 at 120: two decisions,
    # none repeated across the interruption.
    assert {len(store.ledger_for(c)) for c in silent} == {2}
    assert first.examined + second.examined < 1000 + 2 * 200


def test_an_unreachable_org_leaves_writes_owed(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    silent = silent_contacts(fake, 3)
    runner = runner_for(connector)
    fake.fail(5, (503, {}, "down"), lambda m, p: "composite" in p)
    summary = runner.sync(NOW)
    assert summary.written == 0
    assert "writes owed" in (summary.stopped or "")
    runner.flush()
    assert {fake.records["Contact"][c]["Campaign_Status__c"] for c in silent} == {"Dormant"}


@pytest.mark.parametrize("full", [False, True])
def test_dry_run_writes_nothing(
    connector: SalesforceConnector, fake: FakeSalesforce, full: bool
) -> None:
    silent_contacts(fake, 4)
    summary = runner_for(connector).sync(NOW, dry_run=True, full=full)
    assert summary.writes_owed == 4
    assert fake.count("PATCH", "composite") == 0
    assert len(fake.jobs) == 0


def test_experiment_variants_and_the_holdout_flag_reach_the_record(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    """Templates branch on these fields, so the write-back must carry them."""
    (cid,) = silent_contacts(fake, 1)
    runner = runner_for(connector)
    runner.process([Event(event_id="e1", contact_id=cid, type="open", occurred_at=NOW)])
    stored = fake.records["Contact"][cid]
    snapshot = runner.store.get_contacts([cid])[cid]
    assert stored["Elastic_Exp_Subject__c"] == snapshot.experiments["subject_line"]
    assert stored["Elastic_Exp_Subject__c"] in ("Curiosity", "Value")
    assert stored["Elastic_Holdout__c"] is (snapshot.experiments["holdout"] == "holdout")
