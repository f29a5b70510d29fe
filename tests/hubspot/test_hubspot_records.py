from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crm_elasticity.connectors.base import AuthError, ConnectorError, HandoffTask, QuotaExhausted
from tests.fakes.hubspot_server import TOKEN, Fault, RecordFailure
from tests.helpers import writes
from tests.hubspot.hubspot_helpers import make_connector

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _contacts(fake, n: int, **props) -> list[str]:
    return [fake.add_contact({"elastic_campaign_status": "active", **props}) for _ in range(n)]


def _bodies(fake, path: str) -> int:
    return fake.calls(path)


def test_read_decodes_values_in_batches_of_100_and_skips_missing_ids(fake, provisioned):
    ids = _contacts(
        fake,
        250,
        elastic_engagement_score="12.5",
        elastic_last_engagement_date="2026-02-01T10:00:00.000Z",
        elastic_reactivation_cycle="1",
        hubspot_owner_id="77",
        hs_email_last_open_date="2026-02-01T10:00:00.000Z",
    )
    before = fake.calls("batch/read")
    records = provisioned.read_records([*ids, "999999"])
    assert fake.calls("batch/read") - before == 3
    assert len(records) == 250
    record = records[ids[0]]
    assert record.values["campaign_status"] == "Active"
    assert record.values["engagement_score"] == 12.5
    assert record.values["reactivation_cycle"] == 1
    assert record.values["last_engagement_date"] == datetime(2026, 2, 1, 10, tzinfo=UTC)
    assert record.values["suppression_reason"] is None
    assert record.owner_id == "77"
    assert record.created_at is not None
    assert record.created_at.tzinfo is not None
    assert record.signals["hs_email_last_open_date"] == str(
        round(datetime(2026, 2, 1, 10, tzinfo=UTC).timestamp() * 1000)
    )


def test_write_batches_by_100_and_writes_only_given_fields(fake, provisioned):
    ids = _contacts(fake, 250, elastic_engagement_score="3")
    values = {cid: {"campaign_status": "Dormant", "status_changed_at": AT} for cid in ids}
    before = fake.calls("batch/update")
    result = provisioned.write_records(writes(values))
    assert fake.calls("batch/update") - before == 3
    assert sorted(result.written) == sorted(ids)
    assert result.failed == {}
    stored = fake.contact(ids[0])
    assert stored["elastic_campaign_status"] == "dormant"
    assert stored["elastic_status_changed_at"] == "2026-03-01T12:00:00.000Z"
    assert stored["elastic_engagement_score"] == "3"  # untouched


def test_partial_failure_retries_only_the_failed_records(fake, provisioned, clock):
    ids = _contacts(fake, 10)
    fake.fail_records(RecordFailure({ids[2], ids[7]}, "INTERNAL_ERROR", times=1))
    fake.log.clear()
    result = provisioned.write_records(writes({cid: {"engagement_score": 5} for cid in ids}))
    assert sorted(result.written) == sorted(ids)
    assert fake.calls("batch/update") == 2
    assert fake.stats["records_updated"] == 10  # 8 the first time, the 2 failed ones again
    assert provisioned.calls.retries == 1
    assert clock.sleeps  # backed off (on the fake clock) before retrying


def test_a_record_failing_for_a_passing_reason_on_every_attempt_stays_owed(fake, provisioned):
    """A retriable per-record error is no reason to drop the write: it is deferred, not
    failed, so the runner keeps it owed for the next flush."""
    ids = _contacts(fake, 4)
    fake.fail_records(RecordFailure({ids[1]}, "INTERNAL_ERROR", times=9))
    result = provisioned.write_records(writes({cid: {"engagement_score": 5} for cid in ids}))
    assert sorted(result.written) == sorted(set(ids) - {ids[1]})
    assert result.failed == {}
    assert list(result.deferred) == [ids[1]]


def test_permanent_per_record_failures_carry_hubspots_message(fake, provisioned):
    ids = _contacts(fake, 5)
    fake.fail_records(RecordFailure({ids[1]}, "VALIDATION_ERROR", "Email is invalid", times=9))
    values = {cid: {"engagement_score": 5} for cid in [*ids, "424242"]}
    result = provisioned.write_records(writes(values))
    assert sorted(result.written) == sorted(set(ids) - {ids[1]})
    assert result.failed[ids[1]] == "VALIDATION_ERROR: Email is invalid"
    assert result.failed["424242"].startswith("OBJECT_NOT_FOUND")


def test_a_bad_value_failing_the_whole_batch_is_bisected_to_its_record(fake, provisioned):
    ids = _contacts(fake, 100)
    values = {cid: {"engagement_score": 5} for cid in ids}
    values[ids[37]] = {"campaign_status": "Paused"}  # not an option: HubSpot 400s the batch
    result = provisioned.write_records(writes(values))
    assert list(result.failed) == [ids[37]]
    assert "VALIDATION_ERROR" in result.failed[ids[37]]
    assert "'paused' was not a valid enumeration" in result.failed[ids[37]]
    assert len(result.written) == 99
    assert fake.calls("batch/update") <= 1 + 2 * 7  # log2(100) levels, two halves each


def test_a_value_every_record_shares_fails_them_in_one_call(fake, provisioned):
    ids = _contacts(fake, 100)
    fake.log.clear()
    result = provisioned.write_records(writes({cid: {"campaign_status": "Paused"} for cid in ids}))
    assert sorted(result.failed) == sorted(ids)
    assert fake.calls("batch/update") == 1


def test_writing_before_provisioning_says_to_provision(fake, connector):
    ids = _contacts(fake, 3)
    with pytest.raises(ConnectorError, match="run `elasticity provision`"):
        connector.write_records(writes({cid: {"engagement_score": 5} for cid in ids}))


def test_429_honours_retry_after_and_policy(fake, provisioned, clock):
    ids = _contacts(fake, 3)
    body = {
        "status": "error",
        "message": "You have reached your ten_secondly_rolling limit.",
        "errorType": "RATE_LIMIT",
        "policyName": "TEN_SECONDLY_ROLLING",
    }
    fake.inject(Fault("batch/update", 429, body=body, headers={"Retry-After": "3"}))
    fake.inject(Fault("batch/update", 429, body=body))
    result = provisioned.write_records(writes({cid: {"engagement_score": 5} for cid in ids}))
    assert sorted(result.written) == sorted(ids)
    assert provisioned.calls.throttled == 2
    assert provisioned.calls.retries == 2
    assert 13 <= sum(clock.sleeps) < 20  # Retry-After 3 s, then TEN_SECONDLY's 10 s


def test_daily_limit_stops_resumably(fake, provisioned):
    ids = _contacts(fake, 3)
    body = {
        "status": "error",
        "message": "You have reached your daily limit.",
        "policyName": "DAILY",
        "errorType": "RATE_LIMIT",
    }
    fake.inject(Fault("batch/update", 429, body=body, times=5))
    with pytest.raises(QuotaExhausted):
        provisioned.write_records(writes({cid: {"engagement_score": 5} for cid in ids}))
    assert fake.calls("batch/update") == 1  # no retry storm against a daily limit


def test_5xx_retries_with_backoff_then_gives_up_bounded(fake, provisioned, clock):
    ids = _contacts(fake, 2)
    fake.inject(Fault("batch/update", 502, times=2))
    assert sorted(
        provisioned.write_records(writes({c: {"engagement_score": 1} for c in ids})).written
    ) == sorted(ids)
    fake.inject(Fault("batch/update", 503, times=100))
    with pytest.raises(ConnectorError) as caught:
        provisioned.write_records(writes({c: {"engagement_score": 2} for c in ids}))
    assert caught.value.retriable
    assert "gave up after 6 attempts" in str(caught.value)
    assert max(clock.sleeps) <= 120


def test_slow_answers_time_out_and_are_retried(fake, mapping, clock):
    connector = make_connector(fake, mapping, clock, timeout_seconds=0.2)
    connector.provision()
    ids = _contacts(fake, 2)
    fake.inject(Fault("batch/read", 0, delay=0.5))  # status 0: slow, then served normally
    assert len(connector.read_records(ids)) == 2
    assert connector.calls.retries == 1


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, "invalid, expired or revoked"),
        (403, "missing the scope crm.objects.contacts.write"),
    ],
)
def test_auth_failures_explain_themselves_without_secrets(fake, provisioned, status, expected):
    ids = _contacts(fake, 1)
    if status == 401:
        fake.token = "pat-na1-rotated"
    else:
        fake.denied_scopes[r"batch/update"] = "crm.objects.contacts.write"
    with pytest.raises(AuthError) as caught:
        provisioned.write_records(writes({ids[0]: {"engagement_score": 1}}))
    message = str(caught.value)
    assert expected in message
    assert TOKEN not in message
    assert TOKEN not in repr(provisioned.settings)
    assert caught.value.__suppress_context__  # the SDK exception (headers, body) stays out


def test_403_without_a_scope_in_the_body_names_the_scope_we_needed(fake, provisioned):
    fake.inject(
        Fault(
            "properties/contacts/groups",
            403,
            body={"status": "error", "message": "forbidden", "category": "MISSING_SCOPES"},
        )
    )
    with pytest.raises(AuthError, match="crm.schemas.contacts.write"):
        provisioned.provision()


def _task(key: str, contact: str, owner: str | None = "77") -> HandoffTask:
    return HandoffTask(
        key=key,
        contact_id=contact,
        owner_id=owner,
        subject="Follow up",
        body="Score 25",
        priority="HIGH",
        due_at=AT,
    )


def test_one_task_per_key_assigned_and_associated(fake, provisioned):
    (cid,) = _contacts(fake, 1)
    tasks = [_task("task:c:e1:2026-03-01T12:00:00+00:00", cid), _task("task:c:e2:x", cid, None)]
    first = provisioned.create_tasks(tasks)
    again = provisioned.create_tasks(tasks)  # a redelivered flush
    assert sorted(first.written) == sorted(t.key for t in tasks)
    assert sorted(again.written) == sorted(t.key for t in tasks)
    created = fake.tasks()
    assert len(created) == 2
    owned = next(t for t in created if t.get("hubspot_owner_id"))
    assert owned["hubspot_owner_id"] == "77"
    assert owned["contacts"] == [cid]
    assert owned["hs_task_priority"] == "HIGH"
    assert owned["hs_task_subject"] == "Follow up"


def test_a_task_create_that_timed_out_is_not_blindly_resent(fake, provisioned):
    (cid,) = _contacts(fake, 1)
    fake.inject(Fault("tasks/batch/create", 504))
    with pytest.raises(ConnectorError) as caught:
        provisioned.create_tasks([_task("k1", cid)])
    assert caught.value.retriable
    assert fake.calls("tasks/batch/create") == 1
    assert len(provisioned.create_tasks([_task("k1", cid)]).written) == 1
    assert len(fake.tasks()) == 1
