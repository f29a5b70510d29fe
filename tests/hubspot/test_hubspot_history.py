"""`elasticity history` on HubSpot: the email events API and the events API's page views,
against the fake (which pages, limits and refuses as HubSpot documents), mapped to canonical
events and resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from crm_elasticity.connectors.base import ConnectorError
from crm_elasticity.connectors.cli import app
from crm_elasticity.connectors.history import checkpoint_path, export_history
from tests.fakes.hubspot_server import TOKEN, ApiError, Fault, Gate
from tests.hubspot.hubspot_helpers import MAPPING, make_connector

SINCE = datetime(2026, 1, 1, tzinfo=UTC)
UNTIL = datetime(2026, 3, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def at(day: int, minute: int = 0) -> datetime:
    return SINCE + timedelta(days=day, minutes=minute)


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def seed_many(fake, contacts: int, per_contact: int) -> list[str]:
    ids = []
    for n in range(contacts):
        email = f"reader{n}@example.com"
        ids.append(fake.add_contact({"email": email}))
        for k in range(per_contact):
            fake.add_email_event("OPEN", email, at(k % 50, n))
    return ids


def test_every_event_type_is_mapped_and_recipients_become_contacts(fake, connector, tmp_path):
    ada = fake.add_contact({"email": "ada@example.com"})
    bob = fake.add_contact({"email": "Bob@Example.com"})
    fake.add_email_event("SENT", "ada@example.com", at(1))
    delivered = fake.add_email_event("DELIVERED", "ada@example.com", at(1, 1))
    fake.add_email_event("OPEN", "ada@example.com", at(2))
    fake.add_email_event("CLICK", "ada@example.com", at(2, 5), url="https://example.com/pricing")
    fake.add_email_event("BOUNCE", "bob@example.com", at(3), category="MAILBOX_FULL")
    fake.add_email_event("BOUNCE", "bob@example.com", at(4), category="UNKNOWN_USER")
    fake.add_email_event("SPAMREPORT", "ada@example.com", at(5))
    fake.add_email_event(
        "STATUSCHANGE",
        "ada@example.com",
        at(6),
        portalSubscriptionStatus="UNSUBSCRIBED",
        subscriptions=[],
    )
    fake.add_email_event(
        "STATUSCHANGE",
        "ada@example.com",
        at(7),
        portalSubscriptionStatus="SUBSCRIBED",
        subscriptions=[{"id": 1, "status": "SUBSCRIBED"}],
    )
    fake.add_email_event("DEFERRED", "ada@example.com", at(8))
    fake.add_email_event("OPEN", "stranger@example.com", at(9))
    fake.add_email_event("OPEN", "ada@example.com", UNTIL + timedelta(days=1))  # after --until
    fake.add_email_event("UNBOUNCE", "", at(10))  # the one type that names no recipient
    fake.add_email_event("OPEN", "ada@example.com", at(11), filteredEvent=True)  # not reported
    out = tmp_path / "events.jsonl"

    result = export_history(connector, out, SINCE, UNTIL, NOW)

    events = read_events(out)
    got = sorted((e["occurred_at"][:16], e["contact_id"], e["type"]) for e in events)
    assert got == [
        ("2026-01-02T00:01", ada, "send"),
        ("2026-01-03T00:00", ada, "open"),
        ("2026-01-03T00:05", ada, "click"),
        ("2026-01-05T00:00", bob, "hard_bounce"),  # matched whatever the address's case
        ("2026-01-06T00:00", ada, "spam_complaint"),
        ("2026-01-07T00:00", ada, "unsubscribe"),
        ("2026-01-08T00:00", ada, "resubscribe"),
    ]
    click = next(e for e in events if e["type"] == "click")
    assert click["url"] == "https://example.com/pricing" and click["campaign"] == "1001"
    send = next(e for e in events if e["type"] == "send")
    assert delivered["id"] in send["event_id"]
    source = result.sources["HubSpot email events"]
    assert source.read == 12 and source.written == 7  # the one after --until is not asked for
    # SENT, the soft bounce, DEFERRED, a stranger's open, the event naming no recipient
    assert sum(source.skipped.values()) == 5
    assert result.sources["HubSpot page views"].available
    assert not checkpoint_path(out).exists()  # finished: nothing to resume


def test_pages_of_a_thousand_through_429s_and_a_rerun_appends_nothing(
    fake, connector, clock, tmp_path
):
    seed_many(fake, contacts=150, per_contact=17)  # 2,550 events, 150 recipients
    throttled = ApiError(
        429,
        "You have reached your ten_secondly_rolling limit.",
        "RATE_LIMITS",
        policyName="TEN_SECONDLY_ROLLING",
    ).body()
    fake.inject(
        Fault(path="^/email/public/v1/events$", status=429, times=2, skip=1, body=throttled)
    )
    out = tmp_path / "events.jsonl"

    first = export_history(connector, out, SINCE, UNTIL, NOW)

    assert first.written == 2550 and len(read_events(out)) == 2550
    assert fake.stats["email_event_pages"] == 3  # 1,000 a page: the endpoint's maximum
    assert fake.calls("batch/read") == 2  # 150 recipients, 100 a call, each looked up once
    assert connector.calls.throttled == 2 and clock.sleeps  # waited (on the injected clock)
    before = out.read_text()

    again = export_history(connector, out, SINCE, UNTIL, NOW)

    assert again.written == 0 and again.already_there == 2550
    assert out.read_text() == before


def test_an_export_cut_off_mid_way_resumes_after_the_last_page_written(
    fake, mapping, clock, tmp_path
):
    seed_many(fake, contacts=100, per_contact=30)  # 3,000 events: three pages
    fake.inject(Fault(path="^/email/public/v1/events$", status=503, times=50, skip=2))
    connector = make_connector(fake, mapping, clock, max_attempts=2)
    out = tmp_path / "events.jsonl"

    with pytest.raises(ConnectorError):
        export_history(connector, out, SINCE, UNTIL, NOW)

    assert len(read_events(out)) == 2000 and checkpoint_path(out).exists()
    fake.faults.clear()
    fake.email_offset_epoch += 1  # HubSpot's offset tokens are short-lived: none survives

    resumed = export_history(make_connector(fake, mapping, clock), out, SINCE, UNTIL, NOW)

    assert resumed.resumed
    events = read_events(out)
    assert len(events) == 3000 and len({e["event_id"] for e in events}) == 3000
    # It asked for the events up to the oldest one written, not for the whole window again:
    # only the event at that very instant is read twice (and found in the file).
    source = resumed.sources["HubSpot email events"]
    assert source.read == 1001 and source.already_there == 1
    assert not checkpoint_path(out).exists()


def test_the_fake_refuses_a_limit_over_1000_and_a_stale_offset(fake):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{fake.url}/email/public/v1/events"
    assert requests.get(url, params={"limit": 1001}, headers=headers, timeout=5).status_code == 400
    for n in range(3):
        fake.add_email_event("OPEN", "a@example.com", at(n))
    first = requests.get(url, params={"limit": 2}, headers=headers, timeout=5).json()
    assert len(first["events"]) == 2 and first["hasMore"]
    assert first["events"][0]["created"] > first["events"][1]["created"]  # newest first
    fake.email_offset_epoch += 1
    stale = requests.get(
        url, params={"limit": 2, "offset": first["offset"]}, headers=headers, timeout=5
    )
    assert stale.status_code == 400


def cli(fake, tmp_path: Path, *extra: str, reserve: int = 0):
    env = {
        "HUBSPOT_ACCESS_TOKEN": TOKEN,
        "HUBSPOT_BASE_URL": fake.url,
        "HUBSPOT_DAILY_RESERVE": str(reserve),
        "HUBSPOT_CLIENT_SECRET": "s",
    }
    args = [
        "history",
        str(MAPPING),
        "--out",
        str(tmp_path / "events.jsonl"),
        "--since",
        SINCE.isoformat(),
        "--until",
        UNTIL.isoformat(),
        *extra,
    ]
    return CliRunner().invoke(app, args, env=env)


def test_the_command_stops_at_the_daily_reserve_with_exit_3_and_resumes(fake, tmp_path):
    seed_many(fake, contacts=10, per_contact=300)  # 3,000 events: three pages
    fake.daily_remaining = 1003

    stopped = cli(fake, tmp_path, reserve=1000)

    assert stopped.exit_code == 3, stopped.output
    assert "run the same command again to resume" in stopped.output
    written = len(read_events(tmp_path / "events.jsonl"))
    assert 0 < written < 3000
    fake.daily_remaining = 100_000

    finished = cli(fake, tmp_path, reserve=1000)

    assert finished.exit_code == 0, finished.output
    assert "resumed from the checkpoint" in finished.output
    assert "page 1: 1,000 events appended so far" in stopped.output
    events = read_events(tmp_path / "events.jsonl")
    assert len(events) == 3000 and len({e["event_id"] for e in events}) == 3000


def test_a_missing_scope_is_reported_as_history_not_available(fake, tmp_path):
    fake.add_contact({"email": "ada@example.com"})
    fake.add_email_event("OPEN", "ada@example.com", at(1))
    fake.denied_scopes[r"^/email/public/v1/events"] = "content"

    result = cli(fake, tmp_path)

    assert result.exit_code == 0, result.output
    assert "HubSpot email events: not available" in result.output
    assert "'content'" in result.output
    assert "0 events appended" in result.output


def test_without_until_a_resumed_export_keeps_the_end_it_started_with(
    fake, mapping, clock, tmp_path
):
    seed_many(fake, contacts=40, per_contact=50)  # 2,000 events: two pages
    fake.inject(Fault(path="^/email/public/v1/events$", status=503, times=50, skip=1))
    out = tmp_path / "events.jsonl"
    with pytest.raises(ConnectorError):
        export_history(
            make_connector(fake, mapping, clock, max_attempts=1), out, SINCE, None, at(60)
        )
    fake.faults.clear()
    later = fake.add_contact({"email": "late@example.com"})
    fake.add_email_event("OPEN", "late@example.com", at(70))  # after the first run's "now"

    resumed = export_history(make_connector(fake, mapping, clock), out, SINCE, None, at(90))

    assert resumed.until == at(60)
    assert len(read_events(out)) == 2000
    assert later not in {e["contact_id"] for e in read_events(out)}


def test_a_checkpoint_whose_output_file_was_removed_starts_over(fake, mapping, clock, tmp_path):
    seed_many(fake, contacts=20, per_contact=100)  # 2,000 events: two pages
    fake.inject(Fault(path="^/email/public/v1/events$", status=503, times=50, skip=1))
    out = tmp_path / "events.jsonl"
    with pytest.raises(ConnectorError):
        export_history(make_connector(fake, mapping, clock, max_attempts=1), out, SINCE, UNTIL, NOW)
    fake.faults.clear()
    out.unlink()

    again = export_history(make_connector(fake, mapping, clock), out, SINCE, UNTIL, NOW)

    assert not again.resumed and len(read_events(out)) == 2000


def test_an_export_killed_mid_way_resumes_without_duplicates(fake, tmp_path):
    seed_many(fake, contacts=100, per_contact=30)  # 3,000 events: three pages
    held = Gate(path="^/email/public/v1/events$", skip=2)  # the third page's request
    fake.gates.append(held)
    out = tmp_path / "events.jsonl"
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "HUBSPOT_ACCESS_TOKEN": TOKEN,
        "HUBSPOT_BASE_URL": fake.url,
        "HUBSPOT_CLIENT_SECRET": "s",
    }
    command = [
        sys.executable,
        "-m",
        "crm_elasticity.connectors.cli",
        "history",
        str(MAPPING),
        "--out",
        str(out),
        "--since",
        SINCE.isoformat(),
        "--until",
        UNTIL.isoformat(),
    ]
    process = subprocess.Popen(
        command,
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,  # noqa: S603
        stderr=subprocess.DEVNULL,
    )
    try:
        assert held.arrived.wait(60), "the export never asked for its third page"
        process.kill()
        process.wait(30)
    finally:
        held.release.set()
        if process.poll() is None:
            process.kill()
    assert len(read_events(out)) == 2000 and checkpoint_path(out).exists()

    resumed = cli(fake, tmp_path)

    assert resumed.exit_code == 0, resumed.output
    assert "resumed from the checkpoint" in resumed.output
    events = read_events(out)
    assert len(events) == 3000 and len({e["event_id"] for e in events}) == 3000


def test_a_checkpoint_of_another_window_is_not_resumed(fake, mapping, clock, tmp_path):
    seed_many(fake, contacts=20, per_contact=100)  # 2,000 events over 50 days: two pages
    fake.inject(Fault(path="^/email/public/v1/events$", status=503, times=50, skip=1))
    out = tmp_path / "events.jsonl"
    with pytest.raises(ConnectorError):
        export_history(make_connector(fake, mapping, clock, max_attempts=1), out, SINCE, UNTIL, NOW)
    fake.faults.clear()

    later_start = export_history(make_connector(fake, mapping, clock), out, at(10), UNTIL, NOW)

    assert not later_start.resumed
    events = read_events(out)
    assert len({e["event_id"] for e in events}) == len(events)
    # The whole later window was read, not just what the other window's cursor had left.
    assert later_start.sources["HubSpot email events"].read == sum(
        1 for e in fake.email_events if e["created"] >= int(at(10).timestamp() * 1000)
    )


def test_more_events_without_an_offset_to_read_them_is_not_a_finished_export(
    fake, connector, tmp_path
):
    seed_many(fake, contacts=20, per_contact=100)  # 2,000 events: two pages
    broken = {"events": [], "hasMore": True}
    fake.inject(Fault(path="^/email/public/v1/events$", status=200, skip=1, body=broken))
    out = tmp_path / "events.jsonl"

    with pytest.raises(ConnectorError, match="no new offset"):
        export_history(connector, out, SINCE, UNTIL, NOW)

    assert len(read_events(out)) == 1000 and checkpoint_path(out).exists()


# ---- page views (events API) ------------------------------------------------------------------


def test_page_views_become_what_the_last_url_signal_says(fake, connector, tmp_path):
    ada = fake.add_contact({"email": "ada@example.com"})
    bob = fake.add_contact({"email": "bob@example.com"})
    pricing = fake.add_page_view(ada, "https://example.com/pricing?plan=pro", at(1))
    fake.add_page_view(ada, "https://example.com/blog/post", at(2))  # not a high-intent page
    demo = fake.add_page_view(bob, "https://example.com/demo", at(3))
    fake.add_page_view(ada, "https://example.com/pricing", UNTIL + timedelta(days=1))  # later
    fake.event_occurrences.append({**demo, "id": "broken", "properties": {}})  # no URL
    out = tmp_path / "events.jsonl"

    result = export_history(connector, out, SINCE, UNTIL, NOW)

    events = [
        (e["event_id"], e["contact_id"], e["type"], e["occurred_at"][:16]) for e in read_events(out)
    ]
    assert events == [
        (f"hubspot:pageview:{pricing['id']}", ada, "high_intent_visit", "2026-01-02T00:00"),
        (f"hubspot:pageview:{demo['id']}", bob, "high_intent_visit", "2026-01-04T00:00"),
    ]
    views = result.sources["HubSpot page views"]
    assert views.read == 4 and views.skipped == {
        "views of pages the signals do not match": 1,
        "views without an id, a time, a contact or a URL": 1,
    }

    again = export_history(connector, out, SINCE, UNTIL, NOW)

    assert again.written == 0 and again.already_there == 2


def test_a_page_view_export_cut_off_mid_way_resumes_from_the_latest_view_written(
    fake, mapping, clock, tmp_path
):
    contacts = [fake.add_contact({"email": f"v{n}@example.com"}) for n in range(25)]
    for n in range(250):
        fake.add_page_view(contacts[n % 25], "https://example.com/demo", at(n // 10, n))
    fake.inject(Fault(path="^/events/v3/events", status=503, times=50, skip=2))
    connector = make_connector(fake, mapping, clock, max_attempts=2)
    out = tmp_path / "events.jsonl"

    with pytest.raises(ConnectorError):
        export_history(connector, out, SINCE, UNTIL, NOW)

    assert len(read_events(out)) == 200 and checkpoint_path(out).exists()
    fake.faults.clear()

    resumed = export_history(make_connector(fake, mapping, clock), out, SINCE, UNTIL, NOW)

    events = read_events(out)
    assert len(events) == 250 and len({e["event_id"] for e in events}) == 250
    views = resumed.sources["HubSpot page views"]
    assert views.read == 51 and views.already_there == 1  # from the latest instant written
    assert not checkpoint_path(out).exists()


def test_page_views_without_enterprise_access_are_reported_and_email_events_still_read(
    fake, tmp_path
):
    fake.add_contact({"email": "ada@example.com"})
    fake.add_email_event("OPEN", "ada@example.com", at(1))
    fake.denied_scopes[r"^/events/v3/events"] = "behavioral_events.event_definitions.read_write"

    result = cli(fake, tmp_path)

    assert result.exit_code == 0, result.output
    assert "HubSpot page views: not available: HubSpot refused the events API" in result.output
    assert "1 events appended" in result.output or "1 event appended" in result.output


def test_without_a_last_url_signal_page_views_are_not_read(fake, mapping, clock, tmp_path):
    plain = mapping.model_copy(
        update={"signals": [s for s in mapping.signals if s.property != "hs_analytics_last_url"]}
    )
    fake.add_page_view(fake.add_contact({"email": "a@example.com"}), "https://x/demo", at(1))

    result = export_history(
        make_connector(fake, plain, clock), tmp_path / "e.jsonl", SINCE, UNTIL, NOW
    )

    assert result.sources["HubSpot page views"].notes == [
        "not read: the mapping has no signal on hs_analytics_last_url (the page a view sets) for "
        "an event the policy knows"
    ]
    assert fake.stats["event_occurrence_pages"] == 0


def test_the_fake_events_api_refuses_an_object_id_without_a_type_and_a_bad_cursor(fake):
    url = f"{fake.url}/events/v3/events/"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for params in (
        {"objectId": "1"},
        {"after": "forged:1"},
        {"sort": "SIDEWAYS"},
        {"occurredAfter": "2026-01-01 00:00"},
    ):
        assert requests.get(url, params=params, headers=headers, timeout=5).status_code == 400
