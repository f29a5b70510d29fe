"""What a real org refuses, and the connector staying inside it: URI sizes, field-level security
per sObject, error shapes, and writes that time out after Salesforce applied them."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
import requests
from simple_salesforce.exceptions import SalesforceMalformedRequest
from simple_salesforce.format import format_soql

from crm_elasticity.connectors.base import ConnectorError, HandoffTask
from crm_elasticity.connectors.salesforce import SalesforceConnector, bulk
from crm_elasticity.connectors.salesforce.api_facts import QUERY_LINE_BUDGET
from crm_elasticity.connectors.salesforce.soql import in_chunks, request_line_bytes
from crm_elasticity.core.mapping import Mapping
from tests.fakes.salesforce import DATA, FakeSalesforce
from tests.helpers import writes
from tests.salesforce.sf_helpers import build

AT = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
BEARER = {"Authorization": "Bearer TOKEN-0"}


def seed(fake: FakeSalesforce, n: int) -> list[str]:
    return [fake.add("Contact", LastName=f"c{i}", Campaign_Status__c="Active") for i in range(n)]


def handoffs(contacts: list[str]) -> list[HandoffTask]:
    return [
        HandoffTask(
            key=f"task:elastic-newsletter:{cid}:engaged:2026-03-01T12:30:00+00:00",
            contact_id=cid,
            owner_id=None,
            subject="Follow up",
            body="Reached the threshold",
            priority="HIGH",
            due_at=AT,
        )
        for cid in contacts
    ]


def creates(method: str, path: str) -> bool:
    return method == "POST" and path.endswith("/composite/sobjects")


# ---- the fake refuses what Salesforce refuses ------------------------------------------------


def test_the_fake_refuses_a_uri_or_headers_over_16384_bytes(fake: FakeSalesforce) -> None:
    long_query = requests.get(f"{DATA}query/?q={'x' * 16_400}", headers=BEARER, timeout=5)
    assert long_query.status_code == 414
    big_headers = requests.get(
        f"{DATA}limits/", headers={**BEARER, "X-Padding": "y" * 16_300}, timeout=5
    )
    assert big_headers.status_code == 431
    assert requests.get(f"{DATA}limits/", headers=BEARER, timeout=5).status_code == 200


def test_limits_are_served_where_simple_salesforce_asks(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    fake.daily_used = 1234
    limits = connector.client.sf.limits()
    assert limits["DailyApiRequests"] == {"Max": fake.daily_total, "Remaining": 98_765}


def test_a_failed_collection_result_carries_no_id(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    ids = seed(fake, 2)
    fake.reject([ids[0]])
    body = {
        "allOrNone": False,
        "records": [{"attributes": {"type": "Contact"}, "id": i, "LastName": "y"} for i in ids],
    }
    failed, saved = connector.client.sf.restful("composite/sobjects", method="PATCH", json=body)
    assert "id" not in failed
    assert failed["success"] is False
    assert set(failed["errors"][0]) == {"statusCode", "message", "fields"}
    assert saved == {"id": ids[1], "success": True, "errors": []}


def test_a_single_record_error_has_the_documented_shape(connector: SalesforceConnector) -> None:
    with pytest.raises(SalesforceMalformedRequest) as refused:
        connector.client.sf.restful(
            "sobjects/Contact", method="POST", json={"LastName": "x", "Nope__c": 1}
        )
    (problem,) = refused.value.content
    assert set(problem) == {"message", "errorCode", "fields"}
    assert problem["errorCode"] == "INVALID_FIELD"


def test_activity_is_not_an_sobject_for_field_level_security(fake: FakeSalesforce) -> None:
    fake.define("Task", "Elastic_Handoff_Key__c", "Text")
    fake.granted.discard("Task.Elastic_Handoff_Key__c")
    fake.granted.add("Activity.Elastic_Handoff_Key__c")  # what the old provisioning granted
    assert "Elastic_Handoff_Key__c" not in fake.schema()["Task"]


# ---- every SOQL fits the URI limit -------------------------------------------------------------


def test_chunks_are_sized_by_encoded_bytes_and_keep_every_value_in_order() -> None:
    values = [f"clé-{i:05d}-" + "ü" * (i % 7) + "'" for i in range(3000)]
    fields = ", ".join(f"Field_{n}__c" for n in range(150))
    template = f"SELECT {fields} FROM Contact WHERE Name IN {{values}} ORDER BY Id"  # noqa: S608

    def render(chunk: list[str]) -> str:
        return format_soql(template, values=chunk)

    chunks = list(in_chunks(values, render, "62.0"))
    assert [v for chunk in chunks for v in chunk] == values
    assert len(chunks) > 1
    sizes = [request_line_bytes(render(chunk), "62.0") for chunk in chunks]
    assert max(sizes) <= QUERY_LINE_BUDGET
    assert min(sizes[:-1]) > QUERY_LINE_BUDGET - 200  # full chunks, not needlessly small


def test_reading_many_records_stays_under_the_uri_budget(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    ids = seed(fake, 2500)
    found = connector.read_records(ids)
    assert sorted(found) == sorted(ids)
    assert fake.longest_uri <= QUERY_LINE_BUDGET


def test_a_thousand_owed_hand_offs_are_looked_up_within_the_uri_limit(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    contacts = seed(fake, 1000)
    result = connector.create_tasks(handoffs(contacts))
    assert len(result.written) == 1000
    assert result.failed == {}
    assert len(fake.records["Task"]) == 1000
    assert fake.longest_uri <= QUERY_LINE_BUDGET


def test_a_query_that_cannot_fit_is_refused_before_it_is_sent(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    with pytest.raises(ConnectorError, match="bytes of URI"):
        connector.client.lookup("huge", "SELECT Id FROM Contact WHERE LastName = {}", "x" * 13_000)
    assert fake.count("GET", "/query") == 0


# ---- writes cut short after Salesforce applied them --------------------------------------------


def test_a_task_create_that_times_out_after_the_commit_is_not_sent_again(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    contacts = seed(fake, 250)  # two collection requests
    fake.time_out_after_commit(1, creates)
    result = connector.create_tasks(handoffs(contacts))
    assert len(result.written) == 250
    assert len(fake.records["Task"]) == 250
    keys = [t["Elastic_Handoff_Key__c"] for t in fake.records["Task"].values()]
    assert len(set(keys)) == 250


def test_only_the_tasks_that_did_not_land_are_sent_again(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    contacts = seed(fake, 3)
    fake.fail(1, requests.exceptions.ConnectionError("reset before sending"), creates)
    result = connector.create_tasks(handoffs(contacts))
    assert len(result.written) == 3
    assert len(fake.records["Task"]) == 3
    assert fake.count("POST", "composite/sobjects") == 2


def bulk_rows(fake: FakeSalesforce, mapping: Mapping, n: int) -> list[str]:
    fake.provision_mapping(mapping)
    return seed(fake, n)


def with_threshold(mapping: Mapping, env: dict, fake: FakeSalesforce, threshold: int):
    options = {**mapping.options, "bulk_threshold": threshold}
    return build(mapping.model_copy(update={"options": options}), env, fake)


def test_a_bulk_upload_cut_short_is_not_repeated_into_the_same_job(
    mapping: Mapping, env: dict, fake: FakeSalesforce
) -> None:
    ids = bulk_rows(fake, mapping, 10)
    connector = with_threshold(mapping, env, fake, 5)
    fake.time_out_after_commit(1, lambda m, p: m == "PUT" and p.endswith("/batches"))
    result = connector.write_records(writes({cid: {"campaign_status": "Dormant"} for cid in ids}))
    assert sorted(result.written) == sorted(ids)
    applied = [job for job in fake.jobs.values() if job.state == "JobComplete"]
    assert [job.processed for job in applied] == [10]  # no job held the rows twice
    assert [job.state for job in fake.jobs.values()].count("Aborted") == 1
    assert {fake.records["Contact"][c]["Campaign_Status__c"] for c in ids} == {"Dormant"}


def test_a_bulk_close_cut_short_is_checked_not_sent_twice(
    mapping: Mapping, env: dict, fake: FakeSalesforce
) -> None:
    ids = bulk_rows(fake, mapping, 10)
    connector = with_threshold(mapping, env, fake, 5)
    fake.time_out_after_commit(1, lambda m, p: m == "PATCH" and "/jobs/ingest/" in p)
    result = connector.write_records(writes({cid: {"campaign_status": "Dormant"} for cid in ids}))
    assert sorted(result.written) == sorted(ids)
    assert len(fake.jobs) == 1


# ---- Bulk CSV --------------------------------------------------------------------------------


def test_a_bare_carriage_return_is_quoted_and_arrives_intact(
    connector: SalesforceConnector, fake: FakeSalesforce
) -> None:
    ids = seed(fake, 3)
    rows = {cid: {"LastName": f"line one\rline two {i}"} for i, cid in enumerate(ids)}
    rows[ids[0]]["LastName"] += ', "quoted"\n'  # quoted by any writer; the rest only by ours
    outcome = connector.bulk.update("Contact", rows, ["LastName"])
    assert sorted(outcome.written) == sorted(ids)
    assert [fake.records["Contact"][c]["LastName"] for c in ids] == [
        rows[c]["LastName"] for c in ids
    ]


def test_uploads_are_split_by_utf8_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "BULK_MAX_BYTES", 400)
    rows = {f"003{i:012d}AAA": {"LastName": "é" * 20 + "\r"} for i in range(40)}
    uploads = list(bulk.build_csv(rows, ["LastName"]))
    assert len(uploads) > 1
    assert all(len(u) <= 400 for u in uploads)
    read = [
        row
        for upload in uploads
        for row in csv.DictReader(io.StringIO(upload.decode("utf-8"), newline=""))
    ]
    assert {r["Id"]: r["LastName"] for r in read} == {k: v["LastName"] for k, v in rows.items()}


# ---- the whole path --------------------------------------------------------------------------


@pytest.mark.parametrize("timeouts", [0, 3], ids=["clean", "timeouts-after-commit"])
def test_provision_sync_and_a_thousand_hand_offs_create_each_task_once(
    mapping: Mapping, env: dict, fake: FakeSalesforce, timeouts: int
) -> None:
    from crm_elasticity.connectors.runner import Runner
    from crm_elasticity.core.sqlite_store import SQLiteStore

    fake.provisioned_all = False  # a new org: provisioning creates and grants everything
    connector = build(mapping, env, fake)
    connector.provision()
    at = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    engaged = [
        fake.add(
            "Contact",
            LastName=f"e{i}",
            Campaign_Status__c="Active",
            Engagement_Score__c=0,
            Last_Email_Open_Date__c="2026-03-02T09:15:00.000Z",
            Last_Email_Click_Date__c="2026-03-02T09:16:30.000Z",
            pi__url__c="https://www.acme.example/pricing",
            SystemModstamp="2026-03-02T09:17:00Z",
        )
        for i in range(1000)
    ]
    fake.time_out_after_commit(timeouts, creates)  # Salesforce commits; the answer is lost
    summary = Runner(connector, SQLiteStore(":memory:"), clock=lambda: at).sync(at)
    assert summary.stopped is None
    assert summary.tasks_created == 1000
    tasks = list(fake.records["Task"].values())
    assert sorted(t["WhoId"] for t in tasks) == sorted(engaged)  # one each, none twice
    assert len({t["Elastic_Handoff_Key__c"] for t in tasks}) == len(tasks) == 1000
    assert fake.longest_uri <= QUERY_LINE_BUDGET
    assert fake.lost_answers == []  # every injected timeout happened
    print(  # the figures for the record: pytest -s shows them
        f"\n[{timeouts} timeouts after commit] requests={len(fake.api_calls)} "
        f"longest_uri={fake.longest_uri} bytes tasks={len(tasks)} "
        f"created_twice={len(tasks) - len({t['Elastic_Handoff_Key__c'] for t in tasks})}"
    )
