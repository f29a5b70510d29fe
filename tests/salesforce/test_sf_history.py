"""`elasticity history` on Salesforce: field history of the mapped signal fields, against the
fake org (which keeps `ContactHistory` only for tracked fields, tells which are tracked through
`FieldDefinition`, and refuses filters on history values as Salesforce does)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connectors.base import ConnectorError
from connectors.cli import app
from connectors.history import checkpoint_path, export_history
from connectors.salesforce.history import FieldHistory
from tests.fakes.salesforce import FakeSalesforce, error
from tests.salesforce.sf_helpers import ROOT, build

SINCE = datetime(2026, 1, 1, tzinfo=UTC)
UNTIL = datetime(2026, 3, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 1, tzinfo=UTC)
TRACKED = ("Last_Email_Open_Date__c", "Last_Email_Click_Date__c", "HasOptedOutOfEmail",
           "EmailBouncedReason")  # fmt: skip


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def seed(fake: FakeSalesforce) -> tuple[str, str]:
    fake.track_history("Contact", *TRACKED)
    ada = fake.add("Contact", LastName="Lovelace", Email="ada@example.com")
    bob = fake.add("Contact", LastName="Byron", Email="bob@example.com")
    fake.change("Contact", ada, "Last_Email_Open_Date__c", "2026-01-05T09:59:00Z",
                "2026-01-05T10:00:00Z")  # fmt: skip
    fake.change("Contact", ada, "Last_Email_Click_Date__c", "2026-01-06T08:00:00Z",
                "2026-01-06T08:01:00Z")  # fmt: skip
    fake.change("Contact", ada, "Last_Email_Send_Date__c", "2026-01-04T08:00:00Z",
                "2026-01-04T08:00:00Z")  # fmt: skip  (not tracked: no history)
    fake.change("Contact", bob, "HasOptedOutOfEmail", True, "2026-01-07T12:00:00Z")
    fake.change("Contact", bob, "HasOptedOutOfEmail", False, "2026-01-08T12:00:00Z")
    fake.change("Contact", bob, "EmailBouncedReason", "550 5.1.1 user unknown",
                "2026-01-09T12:00:00Z")  # fmt: skip
    fake.change("Contact", bob, "EmailBouncedReason", None, "2026-01-10T12:00:00Z")  # cleared
    fake.change("Contact", ada, "Last_Email_Open_Date__c", "2026-04-01T00:00:00Z",
                "2026-04-01T00:00:00Z")  # fmt: skip  (after --until)
    return ada, bob


def test_tracked_signal_fields_become_events_and_untracked_ones_are_reported(
    fake, connector, tmp_path
):
    ada, bob = seed(fake)
    out = tmp_path / "events.jsonl"

    result = export_history(connector, out, SINCE, UNTIL, NOW)

    got = sorted((e["occurred_at"][:16], e["contact_id"], e["type"]) for e in read_events(out))
    assert got == [
        ("2026-01-05T09:59", ada, "open"),  # when the open happened, not when it was stamped
        ("2026-01-06T08:00", ada, "click"),
        ("2026-01-07T12:00", bob, "unsubscribe"),
        ("2026-01-08T12:00", bob, "resubscribe"),  # opted back in
        ("2026-01-09T12:00", bob, "hard_bounce"),  # no instant in the value: the change's
    ]
    history = next(s for name, s in result.sources.items() if name.startswith("ContactHistory ("))
    assert history.available and history.read == 6 and sum(history.skipped.values()) == 1
    untracked = {n for n, s in result.sources.items() if not s.available}
    assert {"ContactHistory.Last_Email_Send_Date__c", "ContactHistory.pi__url__c"} <= untracked
    assert "tracking is off" in result.sources["ContactHistory.pi__url__c"].notes[0]
    assert "EmailMessage / Task" in untracked and "CampaignMember" in untracked


def test_the_command_reports_each_source_and_a_rerun_appends_nothing(
    env, fake, mapping, monkeypatch, tmp_path
):
    fake.provision_mapping(mapping)
    seed(fake)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "events.jsonl"
    args = ["history", str(ROOT / "mappings" / "salesforce.yaml"), "--out", str(out),
            "--since", "2026-01-01T00:00:00Z", "--until", "2026-03-01T00:00:00Z"]  # fmt: skip

    first = CliRunner().invoke(app, args)

    assert first.exit_code == 0, first.output
    assert "ContactHistory.pi__url__c: not available: field history tracking is off" in (
        first.output
    )
    assert "CampaignMember: not read" in first.output
    assert "5 events appended" in first.output
    before = out.read_text()

    again = CliRunner().invoke(app, args)

    assert again.exit_code == 0, again.output
    assert "0 events appended" in again.output and "5 already there" in again.output
    assert out.read_text() == before


def test_an_export_stopped_by_the_api_reserve_resumes_without_duplicates(env, fake, mapping,
                                                                         tmp_path):  # fmt: skip
    fake.provision_mapping(mapping)
    fake.track_history("Contact", "Last_Email_Open_Date__c")
    contacts = [fake.add("Contact", LastName=f"R{n}") for n in range(50)]
    for day in range(1, 11):
        for cid in contacts:
            stamp = f"2026-01-{day:02d}T10:00:00Z"
            fake.change("Contact", cid, "Last_Email_Open_Date__c", stamp, stamp)
    small_pages = mapping.model_copy(update={"options": {**mapping.options, "page_size": 200}})
    fake.daily_total = 1000
    fake.daily_used = 1000 - 100 - 3  # 10% is kept in reserve: a few calls are left
    out = tmp_path / "events.jsonl"

    stopped = export_history(build(small_pages, env, fake), out, SINCE, UNTIL, NOW)

    assert stopped.stopped and "daily API allowance" in stopped.stopped
    written = len(read_events(out))
    assert 0 < written < 500 and checkpoint_path(out).exists()
    fake.daily_used = 0

    resumed = export_history(build(small_pages, env, fake), out, SINCE, UNTIL, NOW)

    assert resumed.resumed and resumed.stopped is None
    events = read_events(out)
    assert len(events) == 500 and len({e["event_id"] for e in events}) == 500
    history = next(s for name, s in resumed.sources.items() if name.startswith("ContactHistory ("))
    assert history.read == 500 - written  # from the checkpoint on, nothing read twice
    assert not checkpoint_path(out).exists()


def test_an_export_broken_by_an_outage_resumes_after_the_last_page_written(env, fake, mapping,
                                                                          tmp_path):  # fmt: skip
    fake.provision_mapping(mapping)
    fake.track_history("Contact", "Last_Email_Open_Date__c")
    contacts = [fake.add("Contact", LastName=f"R{n}") for n in range(50)]
    for day in range(1, 11):
        for cid in contacts:
            stamp = f"2026-01-{day:02d}T10:00:00Z"
            fake.change("Contact", cid, "Last_Email_Open_Date__c", stamp, stamp)
    small_pages = mapping.model_copy(update={"options": {**mapping.options, "page_size": 200}})
    route, queries = fake.route, []

    def down_after_two_pages(method, rel, query, body, headers):  # noqa: ANN001, ANN202
        if rel.startswith("query"):
            queries.append(rel)
            if len(queries) > 3:  # which fields keep history, then two pages of rows
                return error(503, "SERVER_UNAVAILABLE", "Server unavailable")
        return route(method, rel, query, body, headers)

    fake.route = down_after_two_pages
    out = tmp_path / "events.jsonl"

    with pytest.raises(ConnectorError):
        export_history(build(small_pages, env, fake), out, SINCE, UNTIL, NOW)

    assert len(read_events(out)) == 400 and checkpoint_path(out).exists()
    fake.route = route

    resumed = export_history(build(small_pages, env, fake), out, SINCE, UNTIL, NOW)

    events = read_events(out)
    assert len(events) == 500 and len({e["event_id"] for e in events}) == 500
    history = next(s for name, s in resumed.sources.items() if name.startswith("ContactHistory ("))
    assert history.read == 100


def test_the_fake_refuses_a_filter_on_history_values(fake, connector):
    with pytest.raises(ConnectorError, match="can not be filtered"):
        connector.client.lookup("x", "SELECT Id FROM ContactHistory WHERE NewValue = 'a'")


def test_a_lead_program_reads_lead_history(env, fake, mapping, tmp_path):
    leads = mapping.model_copy(update={"object": "Lead"})
    fake.provision_mapping(leads)
    fake.track_history("Lead", "Last_Email_Click_Date__c")
    lead = fake.add("Lead", LastName="Lee", Company="Acme")
    fake.change("Lead", lead, "Last_Email_Click_Date__c", "2026-02-02T02:02:00Z",
                "2026-02-02T02:03:00Z")  # fmt: skip
    connector = build(leads, env, fake)

    pages = list(FieldHistory(connector.client, leads, "Lead").export(SINCE, UNTIL, None))

    events = [e for p in pages for e in p.events]
    assert [(e.contact_id, e.type) for e in events] == [(lead, "click")]


def test_a_signal_field_the_org_does_not_have_is_named_as_such(env, fake, mapping, tmp_path):
    from core.mapping import Signal

    extra = mapping.model_copy(update={"signals": [
        *mapping.signals, Signal(property="Web_Visit__c", event="high_intent_visit")]})  # fmt: skip
    fake.provision_mapping(mapping)
    seed(fake)

    result = export_history(build(extra, env, fake), tmp_path / "e.jsonl", SINCE, UNTIL, NOW)

    assert result.sources["ContactHistory.Web_Visit__c"].notes == [
        "not available: Contact has no field Web_Visit__c"
    ]
    assert "tracking is off" in result.sources["ContactHistory.pi__url__c"].notes[0]
    assert result.written == 5
