"""Consent and segments decide on the connected path: `sync` against the HubSpot fake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crm_elasticity.connectors.runner import Runner
from crm_elasticity.core.models import Status
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.fakes.hubspot_server import prop
from tests.governance_helpers import governed_mapping, withheld_for
from tests.hubspot.hubspot_helpers import make_connector
from tests.hubspot.webhook_helpers import ms, notification, signed

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CONSENT = "marketing_email_consent"


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def dormant(fake, **extra) -> str:
    """Dormant for 33 days: cooling (30) is over, reactivation step 1 is due."""
    changed = NOW - timedelta(days=33)
    return fake.add_contact(
        {
            "elastic_campaign_status": "dormant",
            "elastic_engagement_score": "0",
            "elastic_reactivation_cycle": "0",
            "elastic_unanswered_sends": "3",
            "elastic_status_changed_at": iso(changed),
            "elastic_last_engagement_date": iso(changed - timedelta(days=90)),
            **extra,
        }
    )


def test_sync_withholds_reactivation_from_contacts_who_never_consented(fake, clock):
    fake.properties["contacts"][CONSENT] = prop(CONSENT, "bool", "booleancheckbox")
    connector = make_connector(fake, governed_mapping("hubspot", consent=CONSENT), clock)
    connector.provision()
    never = [dormant(fake) for _ in range(5)]
    agreed = dormant(fake, **{CONSENT: "true"})
    store = SQLiteStore(":memory:")
    runner = Runner(connector, store, clock=lambda: NOW)
    runner.sync(NOW)
    for cid in never:
        assert fake.contact(cid).get("elastic_reactivation_step") in (None, "", "0")
        assert fake.contact(cid)["elastic_campaign_status"] == "dormant"
        assert len(withheld_for(store.ledger_for(cid), "no_consent")) == 1
    assert fake.contact(agreed)["elastic_reactivation_step"] == "1"
    assert runner.sync(NOW).decisions == 0  # asked again only a step's wait later
    # Consent given: the next time the step is asked for, it goes out.
    fake.set_contact(never[0], {CONSENT: "true"})
    later = NOW + timedelta(days=8)
    Runner(connector, store, clock=lambda: later).sync(later)
    assert fake.contact(never[0])["elastic_reactivation_step"] == "1"
    assert fake.contact(never[1]).get("elastic_reactivation_step") in (None, "", "0")


def test_sync_runs_a_segment_on_its_own_numbers(fake, clock):
    fake.properties["contacts"]["country"] = prop("country", "string", "text")
    connector = make_connector(fake, governed_mapping("hubspot", segment_on="country"), clock)
    connector.provision()
    last = NOW - timedelta(days=40)
    common = {
        "elastic_campaign_status": "active",
        "elastic_engagement_score": "0",
        "elastic_reactivation_cycle": "0",
        "elastic_unanswered_sends": "0",
        "elastic_status_changed_at": iso(last),
        "elastic_last_engagement_date": iso(last),
    }
    german = [fake.add_contact({**common, "country": "DE"}) for _ in range(3)]
    french = fake.add_contact({**common, "country": "FR"})
    store = SQLiteStore(":memory:")
    Runner(connector, store, clock=lambda: NOW).sync(NOW)
    for cid in german:
        assert fake.contact(cid)["elastic_campaign_status"] == "dormant"
        assert store.get_contacts([cid])[cid].segment == "fast-market"
    assert fake.contact(french)["elastic_campaign_status"] == "active"
    assert store.get_contacts([french]).get(french) is None or (
        store.get_contacts([french])[french].campaign_status is Status.ACTIVE
    )


def test_a_step_held_back_by_the_frequency_cap_says_so_in_the_ledger(fake, clock):
    mapping = governed_mapping("hubspot", frequency_cap={"max_sends": 1, "window_days": 14})
    connector = make_connector(fake, mapping, clock)
    connector.provision()
    cid = dormant(fake)  # step 1 due three days ago ...
    store = SQLiteStore(":memory:")
    sent = NOW - timedelta(days=5)  # ... but a newsletter went out two days before that
    request = signed(
        [
            notification(
                objectId=int(cid),
                propertyName="hs_email_last_send_date",
                propertyValue=str(ms(sent)),
                occurredAt=ms(sent),
            )
        ],
        received_at=NOW,
    )
    runner = Runner(connector, store, clock=lambda: NOW)
    runner.process(connector.parse_webhook(request).events)
    runner.sync(NOW)
    assert fake.contact(cid).get("elastic_reactivation_step") in (None, "", "0")
    later = NOW + timedelta(days=10)  # the window has room from sent + 14 days
    Runner(connector, store, clock=lambda: later).sync(later)
    assert fake.contact(cid)["elastic_reactivation_step"] == "1"
    (step,) = [
        a for d in store.ledger_for(cid) for a in d.actions if a.kind == "reactivation_step_due"
    ]
    assert step.detail["delay_reason"] == "frequency_cap"
    assert step.detail["delayed_from"] == (NOW - timedelta(days=3)).isoformat()
