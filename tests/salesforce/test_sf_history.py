"""`elasticity history` on Salesforce: field history of the mapped signal fields, campaign
responses and opens of emails sent from Salesforce, against the fake org (which keeps
`ContactHistory` only for tracked fields, tells which are tracked through `FieldDefinition`,
refuses filters on history values, derives a campaign member's response from its status and
compares date fields with date literals only, as Salesforce does)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from typer.testing import CliRunner

from crm_elasticity.connectors.base import ConnectorError
from crm_elasticity.connectors.cli import app
from crm_elasticity.connectors.history import checkpoint_path, export_history
from crm_elasticity.connectors.salesforce.history import FieldHistory
from tests.fakes.salesforce import FakeSalesforce, error
from tests.salesforce.sf_helpers import ROOT, build

SINCE = datetime(2026, 1, 1, tzinfo=UTC)
UNTIL = datetime(2026, 3, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 1, tzinfo=UTC)
TRACKED = (
    "Last_Email_Open_Date__c",
    "Last_Email_Click_Date__c",
    "HasOptedOutOfEmail",
    "EmailBouncedReason",
)


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def seed(fake: FakeSalesforce) -> tuple[str, str]:
    fake.track_history("Contact", *TRACKED)
    ada = fake.add("Contact", LastName="Lovelace", Email="ada@example.com")
    bob = fake.add("Contact", LastName="Byron", Email="bob@example.com")
    fake.change(
        "Contact", ada, "Last_Email_Open_Date__c", "2026-01-05T09:59:00Z", "2026-01-05T10:00:00Z"
    )
    fake.change(
        "Contact", ada, "Last_Email_Click_Date__c", "2026-01-06T08:00:00Z", "2026-01-06T08:01:00Z"
    )
    fake.change(
        "Contact", ada, "Last_Email_Send_Date__c", "2026-01-04T08:00:00Z", "2026-01-04T08:00:00Z"
    )  # (not tracked: no history)
    fake.change("Contact", bob, "HasOptedOutOfEmail", True, "2026-01-07T12:00:00Z")
    fake.change("Contact", bob, "HasOptedOutOfEmail", False, "2026-01-08T12:00:00Z")
    fake.change(
        "Contact", bob, "EmailBouncedReason", "550 5.1.1 user unknown", "2026-01-09T12:00:00Z"
    )
    fake.change("Contact", bob, "EmailBouncedReason", None, "2026-01-10T12:00:00Z")  # cleared
    fake.change(
        "Contact", ada, "Last_Email_Open_Date__c", "2026-04-01T00:00:00Z", "2026-04-01T00:00:00Z"
    )  # (after --until)
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
    assert {"Task (TaskSubtype Email)", "EmailStatus (HTML email status)", "CampaignMember"} <= (
        untracked
    )
    assert result.sources["EmailMessage (opens, clicks)"].available  # the org has Enhanced Email


def test_the_command_reports_each_source_and_a_rerun_appends_nothing(
    env, fake, mapping, monkeypatch, tmp_path
):
    fake.provision_mapping(mapping)
    seed(fake)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "events.jsonl"
    args = [
        "history",
        str(ROOT / "mappings" / "salesforce.yaml"),
        "--out",
        str(out),
        "--since",
        "2026-01-01T00:00:00Z",
        "--until",
        "2026-03-01T00:00:00Z",
    ]

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


def test_an_export_stopped_by_the_api_reserve_resumes_without_duplicates(
    env, fake, mapping, tmp_path
):
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


def test_an_export_broken_by_an_outage_resumes_after_the_last_page_written(
    env, fake, mapping, tmp_path
):
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
    fake.change(
        "Lead", lead, "Last_Email_Click_Date__c", "2026-02-02T02:02:00Z", "2026-02-02T02:03:00Z"
    )
    connector = build(leads, env, fake)

    pages = list(FieldHistory(connector.client, leads, "Lead").export(SINCE, UNTIL, None))

    events = [e for p in pages for e in p.events]
    assert [(e.contact_id, e.type) for e in events] == [(lead, "click")]


def test_a_signal_field_the_org_does_not_have_is_named_as_such(env, fake, mapping, tmp_path):
    from crm_elasticity.core.mapping import Signal

    extra = mapping.model_copy(
        update={
            "signals": [
                *mapping.signals,
                Signal(property="Web_Visit__c", event="high_intent_visit"),
            ]
        }
    )
    fake.provision_mapping(mapping)
    seed(fake)

    result = export_history(build(extra, env, fake), tmp_path / "e.jsonl", SINCE, UNTIL, NOW)

    assert result.sources["ContactHistory.Web_Visit__c"].notes == [
        "not available: Contact has no field Web_Visit__c"
    ]
    assert "tracking is off" in result.sources["ContactHistory.pi__url__c"].notes[0]
    assert result.written == 5


# ---- campaign responses ------------------------------------------------------------------------


def with_campaigns(mapping, campaigns: dict[str, str]):  # noqa: ANN001, ANN201
    return mapping.model_copy(
        update={"options": {**mapping.options, "history_campaigns": campaigns}}
    )


def campaign(fake: FakeSalesforce, name: str) -> str:
    campaign_id = fake.add("Campaign", Name=name, IsActive=True, Type="Webinar")
    for label, responded in (("Sent", False), ("Registered", True), ("Attended", True)):
        fake.add(
            "CampaignMemberStatus",
            CampaignId=campaign_id,
            Label=label,
            HasResponded=responded,
            SortOrder=1,
            IsDefault=label == "Sent",
        )
    return campaign_id


def member(fake: FakeSalesforce, campaign_id: str, who: str, *moves: tuple[str, str]) -> str:
    field = "ContactId" if who.startswith("003") else "LeadId"
    member_id = fake.add("CampaignMember", CampaignId=campaign_id, Status="Sent", **{field: who})
    fake.set_member_status(member_id, "Sent", "2025-12-20")
    for status, day in moves:
        fake.set_member_status(member_id, status, day)
    return member_id


def test_responses_to_the_program_campaigns_become_the_events_the_option_names(
    env, fake, mapping, tmp_path
):
    program = with_campaigns(
        mapping, {"Spring webinar": "form_submit", "Gone": "form_submit", "Typo": "form_submitted"}
    )
    fake.provision_mapping(program)
    webinar, other = campaign(fake, "Spring webinar"), campaign(fake, "Not the program's")
    ada = fake.add("Contact", LastName="Lovelace")
    bob = fake.add("Contact", LastName="Byron")
    lead = fake.add("Lead", LastName="Lee", Company="Acme")
    answered = member(fake, webinar, ada, ("Registered", "2026-01-05"), ("Attended", "2026-01-20"))
    member(fake, webinar, bob)  # sent, never responded
    member(fake, webinar, lead, ("Registered", "2026-01-06"))  # a Lead: not this program's object
    member(fake, other, bob, ("Registered", "2026-01-07"))  # a campaign the option does not name
    late = fake.add("Contact", LastName="Late")
    member(fake, webinar, late, ("Registered", "2026-04-02"))  # after --until
    out = tmp_path / "events.jsonl"

    result = export_history(build(program, env, fake), out, SINCE, UNTIL, NOW)

    events = read_events(out)
    assert [(e["event_id"], e["contact_id"], e["type"], e["occurred_at"]) for e in events] == [
        (f"salesforce:campaign-response:{answered}", ada, "form_submit", "2026-01-05T00:00:00Z")
    ]  # its first response only: the member keeps no earlier statuses
    assert result.sources["CampaignMember (Spring webinar)"].read == 1
    assert result.sources["CampaignMember (Gone)"].notes == [
        "not available: the org has no Campaign named 'Gone'"
    ]
    assert (
        "'form_submitted' is not an event the policy knows"
        in (result.sources["CampaignMember (Typo)"].notes[0])
    )

    again = export_history(build(program, env, fake), out, SINCE, UNTIL, NOW)

    assert again.written == 0 and again.already_there == 1 and len(read_events(out)) == 1


def test_without_program_campaigns_the_export_says_how_to_name_them(env, fake, connector, tmp_path):
    result = export_history(connector, tmp_path / "e.jsonl", SINCE, UNTIL, NOW)

    assert "options.history_campaigns" in result.sources["CampaignMember"].notes[0]


def test_the_campaign_mirror_is_never_read_as_engagement(env, fake, mapping, tmp_path):
    program = with_campaigns(mapping, {"elastic-newsletter": "form_submit"})
    program = program.model_copy(update={"options": {**program.options, "campaign_mirror": True}})
    fake.provision_mapping(program)

    result = export_history(build(program, env, fake), tmp_path / "e.jsonl", SINCE, UNTIL, NOW)

    note = result.sources["CampaignMember (elastic-newsletter)"].notes[0]
    assert "campaign mirror holds this program's own decisions" in note


def test_the_fake_compares_date_fields_with_date_literals_only(fake, connector):
    with pytest.raises(ConnectorError, match="must be of type date and"):
        connector.client.lookup(
            "x", "SELECT Id FROM CampaignMember WHERE FirstRespondedDate >= 2026-01-01T00:00:00Z"
        )
    with pytest.raises(ConnectorError, match="must be of type dateTime"):
        connector.client.lookup("x", "SELECT Id FROM Contact WHERE CreatedDate >= 2026-01-01")


def test_the_fake_refuses_to_set_a_member_response_directly(fake, connector):
    webinar = campaign(fake, "Spring webinar")
    ada = fake.add("Contact", LastName="Lovelace")
    body = {"CampaignId": webinar, "ContactId": ada, "Status": "Sent", "HasResponded": True}
    result = fake.save_one("CampaignMember", body, create=True)
    assert result["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    del body["HasResponded"]
    created = fake.save_one("CampaignMember", {**body, "Status": "Registered"}, create=True)
    assert fake.records["CampaignMember"][created["id"]]["HasResponded"] is True


# ---- opens of emails sent from Salesforce ------------------------------------------------------


def test_opens_and_clicks_of_an_email_to_one_contact_are_its_events(env, fake, connector, tmp_path):
    ada = fake.add("Contact", LastName="Lovelace")
    bob = fake.add("Contact", LastName="Byron")
    lead = fake.add("Lead", LastName="Lee", Company="Acme")
    one = fake.add_email(
        [(ada, "ToAddress")],
        "2026-01-10T09:00:00Z",
        first_open="2026-01-10T10:00:00Z",
        last_open="2026-01-12T09:30:00Z",
        first_click="2026-01-10T10:01:00Z",
    )
    fake.add_email(
        [(ada, "ToAddress"), (bob, "CcAddress")],
        "2026-01-11T09:00:00Z",
        first_open="2026-01-11T10:00:00Z",
    )  # (who opened it?)
    fake.add_email(
        [(lead, "ToAddress")], "2026-01-11T09:00:00Z", first_open="2026-01-11T10:00:00Z"
    )  # (not a Contact)
    fake.add_email([(ada, "ToAddress")], "2026-01-13T09:00:00Z")  # never opened
    fake.add_email(
        [(ada, "FromAddress")],
        "2026-01-13T09:00:00Z",
        first_open="2026-01-13T10:00:00Z",
        incoming=True,
    )  # (received)
    fake.add_email(
        [(ada, "ToAddress")], "2025-11-01T09:00:00Z", first_open="2025-11-02T10:00:00Z"
    )  # (before --since)
    out = tmp_path / "events.jsonl"

    result = export_history(connector, out, SINCE, UNTIL, NOW)

    events = [
        (e["event_id"], e["contact_id"], e["type"], e["occurred_at"]) for e in read_events(out)
    ]
    assert events == [
        (f"salesforce:email-open:{one}:1768039200000", ada, "open", "2026-01-10T10:00:00Z"),
        (f"salesforce:email-open:{one}:1768210200000", ada, "open", "2026-01-12T09:30:00Z"),
        (f"salesforce:email-click:{one}:1768039260000", ada, "click", "2026-01-10T10:01:00Z"),
    ]
    source = result.sources["EmailMessage (opens, clicks)"]
    assert source.read == 3 and source.skipped == {
        "opens of emails to several recipients (Salesforce records that one of them opened, "
        "not which)": 1,
        "opens of emails to someone who is not a Contact": 1,
    }

    fake.records["EmailMessage"][one]["LastOpenedDate"] = "2026-01-20T08:00:00.000+0000"
    again = export_history(connector, out, SINCE, UNTIL, NOW)

    # Only the newer last open is new; the earlier one, no longer on the record, stays written.
    assert again.written == 1 and again.already_there == 2 and len(read_events(out)) == 4


def test_an_org_without_enhanced_email_says_so(env, fake, connector, tmp_path):
    fake.without("EmailMessage", "EmailMessageRelation")

    result = export_history(connector, tmp_path / "e.jsonl", SINCE, UNTIL, NOW)

    assert result.sources["EmailMessage"].notes == [
        "not available: the org has no EmailMessage (Enhanced Email is off and there is no "
        "Email-to-Case)"
    ]


def test_an_api_version_without_click_dates_exports_opens_only(env, fake, connector, tmp_path):
    del fake.fields["EmailMessage"]["FirstLinkClickedDate"]
    ada = fake.add("Contact", LastName="Lovelace")
    fake.add_email([(ada, "ToAddress")], "2026-01-10T09:00:00Z", first_open="2026-01-10T10:00:00Z")

    result = export_history(connector, tmp_path / "e.jsonl", SINCE, UNTIL, NOW)

    assert result.types == {"open": 1} and "EmailMessage (opens)" in result.sources


def test_an_email_export_broken_by_an_outage_resumes_without_duplicates(
    env, fake, mapping, tmp_path
):
    fake.provision_mapping(mapping)
    contacts = [fake.add("Contact", LastName=f"R{n}") for n in range(45)]
    for n in range(450):
        fake.add_email(
            [(contacts[n % 45], "ToAddress")],
            "2026-01-10T09:00:00Z",
            first_open=f"2026-01-{10 + n % 9:02d}T10:{n % 60:02d}:00Z",
        )
    small_pages = mapping.model_copy(update={"options": {**mapping.options, "page_size": 200}})
    route, state = fake.route, {"down": False}

    def down_after_one_page_of_emails(method, rel, query, body, headers):  # noqa: ANN001, ANN202
        if state["down"] and rel.startswith("query"):
            return error(503, "SERVER_UNAVAILABLE", "Server unavailable")
        answer = route(method, rel, query, body, headers)
        if "EmailMessageRelation" in " ".join(parse_qs(query).get("q", [])):
            state["down"] = True  # the first page's recipients were read; then an outage
        return answer

    fake.route = down_after_one_page_of_emails
    out = tmp_path / "events.jsonl"

    with pytest.raises(ConnectorError):
        export_history(build(small_pages, env, fake), out, SINCE, UNTIL, NOW)

    assert len(read_events(out)) == 200 and checkpoint_path(out).exists()
    fake.route = route

    resumed = export_history(build(small_pages, env, fake), out, SINCE, UNTIL, NOW)

    events = read_events(out)
    assert len(events) == 450 and len({e["event_id"] for e in events}) == 450
    assert resumed.sources["EmailMessage (opens, clicks)"].read == 250  # nothing read twice
    assert not checkpoint_path(out).exists()
