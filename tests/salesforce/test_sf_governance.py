"""Consent and segments decide on the connected path: `sync` against the Salesforce fake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crm_elasticity.connectors.runner import Runner
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.fakes.salesforce import FakeSalesforce
from tests.governance_helpers import governed_mapping, withheld_for
from tests.salesforce.sf_helpers import build

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CONSENT = "Marketing_Consent__c"


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def dormant(fake: FakeSalesforce, **extra) -> str:
    """Dormant for 33 days: cooling (30) is over, reactivation step 1 is due."""
    changed = NOW - timedelta(days=33)
    return fake.add(
        "Contact",
        LastName="d",
        Campaign_Status__c="Dormant",
        Engagement_Score__c=0,
        Reactivation_Cycle__c=0,
        Elastic_Unanswered_Sends__c=3,
        Elastic_Status_Changed_At__c=iso(changed),
        Last_Engagement_Date__c=iso(changed - timedelta(days=90)),
        CreatedDate=iso(changed - timedelta(days=200)),
        **extra,
    )


def test_sync_withholds_reactivation_from_contacts_who_never_consented(env, fake):
    mapping = governed_mapping("salesforce", consent=CONSENT)
    fake.provision_mapping(mapping)
    fake.define("Contact", CONSENT, "boolean")
    connector = build(mapping, env, fake)
    never = [dormant(fake) for _ in range(5)]
    agreed = dormant(fake, **{CONSENT: True})
    store = SQLiteStore(":memory:")
    runner = Runner(connector, store, clock=lambda: NOW)
    runner.sync(NOW)
    for cid in never:
        assert fake.records["Contact"][cid].get("Elastic_Reactivation_Step__c") in (None, 0)
        assert len(withheld_for(store.ledger_for(cid), "no_consent")) == 1
    assert fake.records["Contact"][agreed]["Elastic_Reactivation_Step__c"] == 1
    assert runner.sync(NOW).decisions == 0


def test_sync_runs_a_segment_on_its_own_numbers(env, fake):
    mapping = governed_mapping("salesforce", segment_on="MailingCountry")
    fake.provision_mapping(mapping)
    fake.define("Contact", "MailingCountry", "string")
    connector = build(mapping, env, fake)
    last = NOW - timedelta(days=40)
    common = {
        "LastName": "s",
        "Campaign_Status__c": "Active",
        "Engagement_Score__c": 0,
        "Last_Engagement_Date__c": iso(last),
        "Elastic_Status_Changed_At__c": iso(last),
        "CreatedDate": iso(last - timedelta(days=100)),
    }
    german = [fake.add("Contact", MailingCountry="DE", **common) for _ in range(3)]
    french = fake.add("Contact", MailingCountry="FR", **common)
    store = SQLiteStore(":memory:")
    Runner(connector, store, clock=lambda: NOW).sync(NOW)
    for cid in german:
        assert fake.records["Contact"][cid]["Campaign_Status__c"] == "Dormant"
        assert store.get_contacts([cid])[cid].segment == "fast-market"
    assert fake.records["Contact"][french]["Campaign_Status__c"] == "Active"


def test_the_first_poll_makes_no_resubscribe_of_opt_outs_that_were_never_set(env, fake):
    mapping = governed_mapping("salesforce")
    fake.provision_mapping(mapping)
    connector = build(mapping, env, fake)
    for i in range(4):
        fake.add(
            "Contact",
            LastName=f"n{i}",
            HasOptedOutOfEmail=False,
            SystemModstamp=iso(NOW - timedelta(hours=1)),
        )
    summary = Runner(connector, SQLiteStore(":memory:"), clock=lambda: NOW).sync(NOW)
    assert summary.events_polled == 0


def test_the_poll_follows_unsubscribe_resubscribe_unsubscribe(env, fake):
    mapping = governed_mapping("salesforce")
    fake.provision_mapping(mapping)
    connector = build(mapping, env, fake)
    cid = fake.add(
        "Contact",
        LastName="u",
        HasOptedOutOfEmail=True,
        SystemModstamp=iso(NOW - timedelta(hours=1)),
    )
    store = SQLiteStore(":memory:")
    statuses = []
    for day, opted_out in enumerate((True, False, True)):
        at = NOW + timedelta(days=day)
        fake.records["Contact"][cid]["HasOptedOutOfEmail"] = opted_out
        fake.records["Contact"][cid]["SystemModstamp"] = iso(at - timedelta(minutes=5))
        Runner(connector, store, clock=lambda at=at: at).sync(at)
        statuses.append(fake.records["Contact"][cid]["Campaign_Status__c"])
    assert statuses == ["Suppressed", "Active", "Suppressed"]
