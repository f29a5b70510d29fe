"""Write-back: sObject Collections below the bulk threshold, one Bulk 2.0 job above it."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest

from crm_elasticity.connectors.base import ConnectorError, HandoffTask, WriteRequest
from crm_elasticity.connectors.salesforce import SalesforceConnector
from crm_elasticity.connectors.salesforce.bulk import poll_delays
from crm_elasticity.core.mapping import Mapping
from tests.fakes.salesforce import FakeSalesforce
from tests.helpers import writes
from tests.salesforce.sf_helpers import build

AT = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def seed(fake: FakeSalesforce, n: int) -> list[str]:
    return [fake.add("Contact", LastName=f"c{i}", Campaign_Status__c="Active") for i in range(n)]


def dormant(ids: list[str]) -> dict[str, dict]:
    return {
        cid: {
            "campaign_status": "Dormant",
            "status_changed_at": AT,
            "engagement_score": 2.5,
            "suppression_reason": None,
        }
        for cid in ids
    }


def with_threshold(mapping: Mapping, env: dict, fake: FakeSalesforce, threshold: int):
    options = {**mapping.options, "bulk_threshold": threshold}
    return build(mapping.model_copy(update={"options": options}), env, fake)


def test_collections_carry_at_most_200_records(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    ids = seed(fake, 450)
    result = connector.write_records(writes(dormant(ids)))
    assert sorted(result.written) == sorted(ids)
    assert fake.count("PATCH", "composite/sobjects") == 3
    record = fake.records["Contact"][ids[0]]
    assert record["Campaign_Status__c"] == "Dormant"
    assert record["Elastic_Status_Changed_At__c"] == "2026-03-01T12:30:00.000+0000"
    assert record["Engagement_Score__c"] == 2.5


def test_per_record_failures_carry_salesforce_message(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    ids = seed(fake, 5)
    fake.reject([ids[1]])
    result = connector.write_records(writes(dormant(ids)))
    assert set(result.written) == set(ids) - {ids[1]}
    assert result.failed == {
        ids[1]: "FIELD_CUSTOM_VALIDATION_EXCEPTION: Email programs need a valid address"
    }


def test_locked_rows_alone_are_retried_with_jitter(
    connector: SalesforceConnector, fake: FakeSalesforce, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = seed(fake, 4)
    fake.lock(ids[:2], times=2)
    bodies: list[list[str]] = []
    original = fake.collections

    def spy(method, body):  # noqa: ANN001
        bodies.append([r["id"] for r in body["records"]])
        return original(method, body)

    monkeypatch.setattr(fake, "collections", spy)
    result = connector.write_records(writes(dormant(ids)))
    assert sorted(result.written) == sorted(ids)
    assert bodies == [ids, ids[:2], ids[:2]]
    assert connector.calls.retries == 2
    assert fake.clock > 0


def test_rows_locked_for_good_stay_owed(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    ids = seed(fake, 3)
    fake.lock([ids[0]], times=99)
    with pytest.raises(ConnectorError, match="stayed locked") as caught:
        connector.write_records(writes(dormant(ids)))
    assert caught.value.retriable


def test_unwritable_field_is_refused_whole(
    mapping: Mapping, env: dict, fake: FakeSalesforce
) -> None:
    connector = build(mapping, env, fake)  # nothing provisioned: custom fields are invisible
    ids = seed(fake, 2)
    with pytest.raises(ConnectorError, match="INVALID_FIELD"):
        connector.write_records(writes(dormant(ids)))


def test_the_switch_to_bulk_is_above_the_threshold(
    mapping: Mapping, env: dict, fake: FakeSalesforce
) -> None:
    fake.provision_mapping(mapping)
    connector = with_threshold(mapping, env, fake, 100)
    at_threshold = seed(fake, 100)
    connector.write_records(writes(dormant(at_threshold)))
    assert (fake.count("PATCH", "composite/sobjects"), len(fake.jobs)) == (1, 0)
    above = seed(fake, 101)
    result = connector.write_records(writes(dormant(above)))
    assert (fake.count("PATCH", "composite/sobjects"), len(fake.jobs)) == (1, 1)
    assert sorted(result.written) == sorted(above)
    assert all(fake.records["Contact"][i]["Campaign_Status__c"] == "Dormant" for i in above)


def test_bulk_csv_has_stable_columns_and_nulls_with_na(
    mapping: Mapping, env: dict, fake: FakeSalesforce
) -> None:
    fake.provision_mapping(mapping)
    connector = with_threshold(mapping, env, fake, 10)
    ids = seed(fake, 20)
    for cid in ids:
        fake.records["Contact"][cid]["Elastic_Suppression_Reason__c"] = "no_response"
    connector.write_records(writes(dormant(ids)))
    (job,) = fake.jobs.values()
    header = job.csv.splitlines()[0].split(",")
    assert header == [
        "Id",
        "Campaign_Status__c",
        "Engagement_Score__c",
        "Elastic_Status_Changed_At__c",
        "Elastic_Suppression_Reason__c",
    ]
    first = next(csv.DictReader(io.StringIO(job.csv)))
    assert first["Elastic_Suppression_Reason__c"] == "#N/A"
    assert fake.records["Contact"][ids[0]]["Elastic_Suppression_Reason__c"] is None


def test_bulk_failures_are_matched_by_id_and_locks_retried(
    mapping: Mapping, env: dict, fake: FakeSalesforce
) -> None:
    fake.provision_mapping(mapping)
    connector = with_threshold(mapping, env, fake, 10)
    ids = seed(fake, 30)
    fake.reject([ids[3], ids[17]], "INVALID_EMAIL_ADDRESS", "Email: invalid email address")
    fake.lock([ids[5]], times=1)
    result = connector.write_records(writes(dormant(ids)))
    assert result.failed == {
        ids[3]: "INVALID_EMAIL_ADDRESS: Email: invalid email address",
        ids[17]: "INVALID_EMAIL_ADDRESS: Email: invalid email address",
    }
    assert sorted(result.written) == sorted(set(ids) - {ids[3], ids[17]})
    assert fake.count("GET", "failedResults") == 1
    # the locked row went through a collection call of its own
    assert fake.count("PATCH", "composite/sobjects") == 1
    assert fake.records["Contact"][ids[5]]["Campaign_Status__c"] == "Dormant"


def test_a_failed_bulk_job_leaves_the_writes_owed(
    mapping: Mapping, env: dict, fake: FakeSalesforce
) -> None:
    fake.provision_mapping(mapping)
    connector = with_threshold(mapping, env, fake, 10)
    ids = seed(fake, 20)
    fake.granted.discard("Contact.Engagement_Score__c")  # FLS revoked behind our back
    with pytest.raises(ConnectorError, match="ended Failed.*Field name not found") as caught:
        connector.write_records(writes(dormant(ids)))
    assert caught.value.retriable


@pytest.mark.parametrize("rows", [5_000, 50_000])
def test_bulk_calls_do_not_grow_with_records(
    mapping: Mapping, env: dict, fake: FakeSalesforce, rows: int
) -> None:
    fake.provision_mapping(mapping)
    connector = with_threshold(mapping, env, fake, 2000)
    ids = [f"003{i:012d}BBB" for i in range(rows)]
    for cid in ids:
        fake.records["Contact"][cid] = {"Id": cid, "Campaign_Status__c": "Active"}
    result = connector.write_records(writes({cid: {"campaign_status": "Dormant"} for cid in ids}))
    assert len(result.written) == rows
    # create, upload, close and at most two status polls
    assert 4 <= connector.calls.api_calls <= 5


def test_poll_schedule_backs_off_and_ends() -> None:
    delays = list(poll_delays(30_000, timeout_seconds=3600))
    assert delays[0] == 20.0  # when a job of 2,000 rows/s after a 5 s start would be done
    polls = [sum(delays[: i + 1]) for i in range(len(delays))]
    assert all(b >= 1.5 * a or b - a == 300 for a, b in zip(polls, polls[1:], strict=False))
    assert sum(delays) <= 3600
    assert len(delays) < 25


def task(key: str, contact: str, owner: str | None = "005000000000777AAA") -> HandoffTask:
    return HandoffTask(
        key=key,
        contact_id=contact,
        owner_id=owner,
        subject="Follow up",
        body="Reached 25",
        priority="HIGH",
        due_at=AT,
    )


def test_handoff_tasks_are_created_once_per_key(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    (cid,) = seed(fake, 1)
    first = connector.create_tasks([task("task:a:e1:t", cid), task("task:b:e2:t", cid, "00G1")])
    again = connector.create_tasks([task("task:a:e1:t", cid)])  # a crash made the runner retry
    assert sorted(first.written) == ["task:a:e1:t", "task:b:e2:t"]
    assert again.written == ["task:a:e1:t"]
    tasks = list(fake.records["Task"].values())
    assert len(tasks) == 2
    by_owner = {t.get("OwnerId") for t in tasks}
    assert "005000000000777AAA" in by_owner  # the record's owner gets the Task
    assert all(t["WhoId"] == cid and t["Priority"] == "High" for t in tasks)
    assert {t["ActivityDate"] for t in tasks} == {"2026-03-01"}


def test_campaign_mirror_moves_members(mapping: Mapping, env: dict, fake: FakeSalesforce) -> None:
    fake.provision_mapping(mapping)
    mirrored = mapping.model_copy(update={"options": {**mapping.options, "campaign_mirror": True}})
    connector = build(mirrored, env, fake)
    connector.provision()
    ids = seed(fake, 3)
    connector.write_records(writes({cid: {"campaign_status": "Active"} for cid in ids}))
    connector.write_records(writes({ids[0]: {"campaign_status": "Engaged"}}))
    members = {m["ContactId"]: m["Status"] for m in fake.records["CampaignMember"].values()}
    assert members == {ids[0]: "Engaged", ids[1]: "Active", ids[2]: "Active"}
    statuses = {s["Label"] for s in fake.records["CampaignMemberStatus"].values()}
    assert statuses == {"Active", "Engaged", "Dormant", "Reactivated", "Suppressed"}


def test_nothing_to_write_costs_no_call(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    result = connector.write_records(writes({"003000000000001AAA": {}}))
    assert result.written == ["003000000000001AAA"]
    assert fake.api_calls == []


def test_json_encoding_of_values(connector: SalesforceConnector) -> None:
    row = connector.codec.fields_for(
        WriteRequest(
            "003000000000001AAA",
            {"unanswered_sends": 3.0, "last_engagement_date": AT, "campaign_status": "Engaged"},
        )
    )
    assert json.loads(json.dumps(row)) == {
        "Elastic_Unanswered_Sends__c": 3,
        "Last_Engagement_Date__c": "2026-03-01T12:30:00.000Z",
        "Campaign_Status__c": "Engaged",
    }
