from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from crm_elasticity.connectors.base import ConnectorError
from crm_elasticity.connectors.runner import Runner
from crm_elasticity.core.cursors import Cursors
from crm_elasticity.core.models import Event
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.fakes.hubspot_server import DROP, Fault
from tests.helpers import writes
from tests.hubspot.hubspot_helpers import make_connector
from tests.hubspot.webhook_helpers import ms, notification, signed

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def iso(at: datetime | None) -> str | None:
    return None if at is None else at.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def seed(
    fake,
    n: int,
    *,
    status: str = "active",
    last: datetime | None = None,
    score: float = 0,
    changed: datetime | None = None,
    **extra,
) -> list[str]:
    props = {
        "elastic_campaign_status": status,
        "elastic_engagement_score": str(score),
        "elastic_reactivation_cycle": "0",
        "elastic_unanswered_sends": "0",
        "elastic_reactivation_step": "0",
        "elastic_status_changed_at": iso(changed or NOW - timedelta(days=200)),
        "elastic_last_engagement_date": iso(last),
        **extra,
    }
    return [fake.add_contact(props) for _ in range(n)]


def silent(fake, n: int) -> list[str]:
    """Active contacts whose last engagement is 100 days old: dormancy is due."""
    return seed(fake, n, last=NOW - timedelta(days=100))


def fresh(fake, n: int) -> list[str]:
    """Engaged five days ago with no score left to decay: nothing is due."""
    return seed(fake, n, last=NOW - timedelta(days=5), changed=NOW - timedelta(days=5))


def runner_for(connector, store=None) -> Runner:
    return Runner(connector, store or SQLiteStore(":memory:"), clock=lambda: NOW)


def test_find_due_pages_past_the_10000_result_cap_without_losing_anyone(fake, provisioned):
    due = silent(fake, 10_450)
    fresh(fake, 300)
    fake.log.clear()
    found = [r.contact_id for page in provisioned.find_due(NOW, None) for r in page]
    assert found == due  # all of them, ascending, once
    assert fake.stats["error_400"] == 0  # never asked past 10,000 or over 200 a page
    # ceil(10450 / 200) pages, plus the one page of the second query
    assert fake.calls("/search") <= 53 + 1


def test_writes_during_a_scan_do_not_make_it_skip_records(fake, provisioned):
    due = silent(fake, 1000)
    found = []
    for page in provisioned.find_due(NOW, None):
        found += [r.contact_id for r in page]
        # the page's contacts stop matching the due filter, as after a real write-back
        provisioned.write_records(
            writes(
                {
                    r.contact_id: {"campaign_status": "Dormant", "status_changed_at": NOW}
                    for r in page
                }
            )
        )
    assert found == due


def test_due_filters_cover_every_time_rule_and_skip_the_rest(fake, provisioned):
    c = provisioned.mapping.policy.compiled
    expected = {
        *silent(fake, 2),
        # never engaged, enrolled dormant_after ago
        *seed(fake, 1, changed=NOW - c.dormant_after - timedelta(hours=1)),
        # a score to decay
        *seed(
            fake,
            1,
            status="engaged",
            score=25,
            last=NOW - c.decay_after - timedelta(hours=1),
            changed=NOW - timedelta(days=31),
        ),
        # dormant, cooling over
        *seed(fake, 1, status="dormant", changed=NOW - c.cooling - timedelta(hours=1)),
        # dormant at step 1, the wait is over
        *seed(
            fake,
            1,
            status="dormant",
            elastic_reactivation_step="1",
            changed=NOW - c.cooling - c.step_wait - timedelta(hours=1),
        ),
    }
    fresh(fake, 3)
    seed(fake, 1, status="dormant", changed=NOW - c.cooling + timedelta(hours=1))
    seed(
        fake,
        1,
        status="dormant",
        elastic_reactivation_step="1",
        changed=NOW - c.cooling - timedelta(days=1),
    )
    seed(fake, 2, status="suppressed", elastic_suppression_reason="unsubscribe")
    found = {r.contact_id for page in provisioned.find_due(NOW, None) for r in page}
    assert found == expected


def test_sync_end_to_end_writes_changes_only_and_a_second_sync_writes_nothing(fake, provisioned):
    due = silent(fake, 250)
    fresh(fake, 50)
    runner = runner_for(provisioned)
    fake.log.clear()
    summary = runner.sync(NOW)
    assert summary.transitions == {"Active->Dormant": 250}
    assert summary.written == 250
    assert fake.calls("batch/update") == 3  # ceil(250 / 100)
    assert summary.api_calls == len(fake.log)
    stored = fake.contact(due[0])
    assert stored["elastic_campaign_status"] == "dormant"
    assert stored["elastic_status_changed_at"] == iso(NOW - timedelta(days=10))
    updated = fake.stats["records_updated"]
    again = runner.sync(NOW)
    assert again.written == 0
    assert fake.stats["records_updated"] == updated


def test_an_interrupted_sync_resumes_where_it_stopped(fake, provisioned):
    due = silent(fake, 1000)
    store = SQLiteStore(":memory:")
    # poll: 2 queries; due: first page of each of its 2 queries, then one more page; then down.
    fake.inject(Fault("/contacts/search", 500, skip=5, times=1000))
    with pytest.raises(ConnectorError):
        runner_for(provisioned, store).sync(NOW)
    cursor = store.get_cursor(Cursors.due_after)
    assert cursor == due[399]  # two pages of 200 decided and checkpointed
    fake.faults.clear()
    summary = runner_for(provisioned, store).sync(NOW)
    assert summary.transitions == {"Active->Dormant": 600}
    assert fake.stats["records_updated"] == 1000  # owed writes of the first run flushed once
    assert all(fake.contact(cid)["elastic_campaign_status"] == "dormant" for cid in due)
    assert sum(len(store.ledger_for(cid)) for cid in due) == 1000


def test_poll_finds_engagement_webhooks_missed_and_counts_it_once(fake, provisioned):
    (cid,) = fresh(fake, 1)
    opened = NOW - timedelta(hours=2)
    runner = runner_for(provisioned)
    runner.store.commit(
        __import__("crm_elasticity.core.store", fromlist=["Batch"]).Batch(
            cursors={Cursors.poll_since: (NOW - timedelta(days=1)).isoformat()}
        )
    )
    fake.set_contact(cid, {"hs_email_last_open_date": iso(opened)})
    summary = runner.sync(NOW)
    assert summary.events_polled == 1
    assert fake.contact(cid)["elastic_engagement_score"] == "5"
    # the same open then arrives by webhook: same event id, no second 5 points
    intake = provisioned.parse_webhook(
        signed(
            [
                notification(
                    propertyName="hs_email_last_open_date",
                    propertyValue=str(ms(opened)),
                    object_id=int(cid),
                )
            ],
            received_at=NOW,
        )
    )
    runner.record(intake.events)
    runner.drain_inbox()
    assert fake.contact(cid)["elastic_engagement_score"] == "5"


def test_webhook_to_engaged_creates_exactly_one_task_under_redelivery(fake, provisioned):
    (cid,) = seed(
        fake,
        1,
        score=15,
        last=NOW - timedelta(days=2),
        changed=NOW - timedelta(days=2),
        hubspot_owner_id="77",
    )
    runner = runner_for(provisioned)
    click = notification(
        propertyName="hs_email_last_click_date",
        propertyValue=str(ms(NOW - timedelta(minutes=5))),
        object_id=int(cid),
    )
    for attempt in range(3):
        intake = provisioned.parse_webhook(
            signed([{**click, "attemptNumber": attempt}], received_at=NOW)
        )
        runner.record(intake.events)
        runner.drain_inbox()
    runner.sync(NOW)
    stored = fake.contact(cid)
    assert stored["elastic_campaign_status"] == "engaged"
    assert stored["elastic_engagement_score"] == "25"
    (task,) = fake.tasks()
    assert task["contacts"] == [cid]
    assert task["hubspot_owner_id"] == "77"


def test_crm_down_at_intake_time_loses_nothing(fake, provisioned):
    (cid,) = fresh(fake, 1)
    runner = runner_for(provisioned)
    fake.inject(Fault("/contacts/", 503, times=1000))
    click = notification(
        propertyName="hs_email_last_click_date",
        propertyValue=str(ms(NOW - timedelta(minutes=1))),
        object_id=int(cid),
    )
    intake = provisioned.parse_webhook(signed([click], received_at=NOW))
    assert runner.record(intake.events) == 1  # acknowledged: recorded without the CRM
    with pytest.raises(ConnectorError):
        runner.drain_inbox()
    fake.faults.clear()
    runner.drain_inbox()
    assert fake.contact(cid)["elastic_engagement_score"] == "10"


def test_full_sync_reads_everyone_through_the_list_endpoint_and_resumes(fake, provisioned):
    ids = fresh(fake, 230) + silent(fake, 20)
    pages = list(provisioned.iter_all(None))
    assert [r.contact_id for p in pages for r in p] == ids
    assert fake.calls("/objects/contacts/search") == 0
    resumed = [r.contact_id for p in provisioned.iter_all(ids[119]) for r in p]
    assert resumed == ids[120:]
    summary = runner_for(provisioned).sync(NOW, full=True)
    assert summary.transitions["Active->Dormant"] == 20


def test_prefetch_keeps_order_and_surfaces_errors(fake, mapping, clock):
    connector = make_connector(fake, mapping, clock, prefetch_pages=3)
    connector.provision()
    due = silent(fake, 900)
    assert [r.contact_id for p in connector.find_due(NOW, None) for r in p] == due
    fake.inject(
        Fault(
            "/contacts/search",
            400,
            skip=3,
            body={"status": "error", "message": "boom", "category": "VALIDATION_ERROR"},
        )
    )
    with pytest.raises(ConnectorError, match="boom"):
        for _ in connector.find_due(NOW, None):
            pass


def test_experiment_variants_and_the_holdout_flag_reach_the_contact(fake, provisioned):
    """Templates branch on these properties, so the write-back must carry them."""
    (cid,) = fresh(fake, 1)
    runner = runner_for(provisioned)
    runner.process([Event(event_id="e1", contact_id=cid, type="open", occurred_at=NOW)])
    stored = fake.contact(cid)
    assert stored["elastic_exp_subject"] in ("Curiosity", "Value")
    assert stored["elastic_exp_cta"] in ("Book Demo", "Talk to Sales")
    assert stored["elastic_holdout"] in ("true", "false")
    snapshot = runner.store.get_contacts([cid])[cid]
    assert stored["elastic_exp_subject"] == snapshot.experiments["subject_line"]
    assert (stored["elastic_holdout"] == "true") is (snapshot.experiments["holdout"] == "holdout")


def test_a_thousand_hand_offs_in_one_flush_are_created_once_though_an_answer_is_lost(
    fake, provisioned
):
    """Provision, sync, hand off: 1,000 contacts reach Engaged in one sync; the answer to the
    fourth task batch is lost after HubSpot created its tasks. The next flush looks the keys
    up first and creates only what is missing."""
    two_days_ago, opened = NOW - timedelta(days=2), NOW - timedelta(hours=1)
    engaged = seed(
        fake,
        1000,
        score=15,
        last=two_days_ago,
        changed=two_days_ago,
        hs_email_last_open_date=iso(opened),
    )
    fake.inject(Fault("/tasks/batch/create", DROP, method="POST", skip=3, after_commit=True))
    runner = runner_for(provisioned)
    runner.sync(NOW)
    assert fake.stats["fault_after_commit_-1"] == 1, "the answer to a committed batch was lost"
    runner.sync(NOW)
    per_contact = Counter(c for task in fake.tasks() for c in task["contacts"])
    assert per_contact == dict.fromkeys(engaged, 1)
    assert {fake.contact(c)["elastic_campaign_status"] for c in engaged} == {"engaged"}
