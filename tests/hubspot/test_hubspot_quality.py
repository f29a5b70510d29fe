"""A CRM value longer than a url keeps its event with the url cut, and the cut is counted where
`report` shows data quality: once per event however often it is delivered, on both stores."""

from __future__ import annotations

from datetime import datetime, timedelta

from crm_elasticity.connectors.runner import Runner
from crm_elasticity.core.mapping import load_mapping
from crm_elasticity.core.report import build
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.store import URLS_TRUNCATED
from tests.hubspot.hubspot_helpers import MAPPING, make_connector
from tests.hubspot.webhook_helpers import RECEIVED, ms, notification, signed

LONG = "https://acme.io/pricing?" + "q" * 5000


def visit(object_id: int, value: str, at: datetime, event_id: int) -> dict:
    return notification(
        objectId=object_id,
        propertyName="hs_analytics_last_url",
        propertyValue=value,
        occurredAt=ms(at),
        eventId=event_id,
    )


def test_serve_counts_each_cut_url_once_and_the_report_shows_it(fake, clock, tmp_path):
    connector = make_connector(fake, load_mapping(MAPPING), clock)
    connector.provision()
    cid = int(fake.add_contact({}))
    path = tmp_path / "elasticity.sqlite3"
    runner = Runner(connector, SQLiteStore(path), clock=lambda: RECEIVED)
    at = RECEIVED - timedelta(minutes=5)
    long_visit = signed([visit(cid, LONG, at, 1)], received_at=RECEIVED)
    for _ in range(2):  # HubSpot delivers it again: still one event, one cut
        runner.process(connector.parse_webhook(long_visit).events)
    later = signed(
        [
            visit(cid, LONG + "x", at + timedelta(minutes=1), 2),
            visit(cid, "https://acme.io/pricing", at + timedelta(minutes=2), 3),
        ],
        received_at=RECEIVED,
    )
    runner.process(connector.parse_webhook(later).events)
    assert runner.store.marked_counts() == {URLS_TRUNCATED: 2}
    report = build(path, None, None)
    assert report["data_quality"][URLS_TRUNCATED] == 2


def test_a_store_from_before_the_counter_counts_zero(tmp_path):
    store = SQLiteStore(tmp_path / "elasticity.sqlite3")
    store._db.execute("DROP TABLE quality")  # as an earlier release left it
    store.close()
    again = SQLiteStore(tmp_path / "elasticity.sqlite3")
    assert again.marked_counts() == {URLS_TRUNCATED: 0}
