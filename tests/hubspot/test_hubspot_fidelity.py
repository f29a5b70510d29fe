"""Lists found without a name in the URL path, `date` properties at midnight UTC, and a fake
that refuses what HubSpot (or the server in front of it) refuses."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from crm_elasticity.connectors.base import WriteRequest
from crm_elasticity.core.mapping import Mapping
from tests.fakes.hubspot_server import TOKEN, FakeHubSpot
from tests.helpers import writes
from tests.hubspot.hubspot_helpers import make_connector

SLASHED = "Elastic – Suppressed / ads audience"


def _request(fake: FakeHubSpot, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    request = urllib.request.Request(
        fake.url + path,
        data=data,
        method=method,  # noqa: S310
        headers=headers,
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback fake
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode()


def _lists_named(fake: FakeHubSpot, name: str) -> list[dict]:
    return [i for i in fake.lists.values() if i["name"].casefold() == name.casefold()]


def _with_date_field(mapping: Mapping, name: str = "status_changed_at") -> Mapping:
    fields = dict(mapping.fields)
    fields[name] = fields[name].model_copy(update={"type": "date"})
    return mapping.model_copy(update={"fields": fields})


# ---- lists -----------------------------------------------------------------------------------


def test_a_list_named_with_a_slash_is_found_again_and_never_created_twice(fake, connector):
    connector.provision()
    second = connector.provision()
    actions = {i.name: i.action for i in second.items if i.kind == "list"}
    assert actions[SLASHED] == "unchanged"
    assert len(_lists_named(fake, SLASHED)) == 1
    assert fake.stats["encoded_slash_404"] == 0, "no request may carry an encoded slash"


def test_lists_are_found_past_the_first_search_page(fake, connector, mapping):
    for n in range(620):  # more than one 500-list search page of other lists first
        fake.lists[str(n + 1)] = {
            "listId": str(n + 1),
            "listVersion": 1,
            "name": f"Other {n}",
            "objectTypeId": "0-1",
            "processingType": "MANUAL",
            "processingStatus": "COMPLETE",
        }
    connector.provision()
    before = len(fake.lists)
    report = connector.provision()
    assert {i.action for i in report.items if i.kind == "list"} == {"unchanged"}
    assert len(fake.lists) == before
    assert fake.calls("/lists/search") >= 4  # two runs, two pages each


def test_a_list_whose_name_differs_only_in_case_is_the_same_list(fake, connector, mapping):
    connector.provision()
    dormant = _lists_named(fake, "Elastic – Dormant")[0]
    dormant["name"] = "ELASTIC – DORMANT"
    report = connector.provision()
    assert {i.name: i.action for i in report.items}["Elastic – Dormant"] == "unchanged"
    assert len(_lists_named(fake, "Elastic – Dormant")) == 1


def test_a_list_of_another_object_type_with_the_same_name_is_not_ours(fake, connector):
    fake.lists["900"] = {
        "listId": "900",
        "listVersion": 1,
        "name": "Elastic – Dormant",
        "objectTypeId": "0-2",
        "processingType": "MANUAL",
        "processingStatus": "COMPLETE",
    }
    report = connector.provision(dry_run=True)
    assert {i.name: i.action for i in report.items}["Elastic – Dormant"] == "create"


# ---- the fake refuses what HubSpot's front door refuses -----------------------------------------


def test_fake_refuses_an_encoded_slash_in_a_path_segment(fake, provisioned):
    name = urllib.parse.quote(SLASHED, safe="")
    assert "%2F" in name
    status, _ = _request(fake, "GET", f"/crm/v3/lists/object-type-id/0-1/name/{name}")
    assert status == 404
    plain = urllib.parse.quote("Elastic – Dormant", safe="")
    status, body = _request(fake, "GET", f"/crm/v3/lists/object-type-id/0-1/name/{plain}")
    assert status == 200 and body["list"]["name"] == "Elastic – Dormant"


def test_fake_answers_update_list_filters_with_updated_list(fake, provisioned, mapping):
    dormant = _lists_named(fake, "Elastic – Dormant")[0]
    branch = dormant["filterBranch"]
    status, body = _request(
        fake,
        "PUT",
        f"/crm/v3/lists/{dormant['listId']}/update-list-filters",
        {"filterBranch": branch},
    )
    assert status == 200
    assert set(body) == {"updatedList"}
    assert body["updatedList"]["listId"] == dormant["listId"]
    assert body["updatedList"]["listVersion"] == 2


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"query": "x", "additionalProperties": []}, "offset"),
        ({"query": "x", "offset": 0}, "additionalProperties"),
        ({"offset": 0, "additionalProperties": [], "count": 501}, "count"),
        ({"offset": 0, "additionalProperties": [], "count": "10"}, "count"),
        ({"offset": "0", "additionalProperties": []}, "offset"),
        ({"offset": 0, "additionalProperties": [], "processingTypes": ["LIVE"]}, "processingTypes"),
        ({"offset": 0, "additionalProperties": [], "name": "x"}, "name"),
        ([], "ListSearchRequest"),
    ],
)
def test_fake_validates_the_list_search_body_against_the_spec(fake, body, problem):
    status, answer = _request(fake, "POST", "/crm/v3/lists/search", body)
    assert status == 400
    assert answer["category"] == "VALIDATION_ERROR"
    assert problem in answer["message"]


def test_fake_list_search_pages_by_offset_and_omits_filters(fake, provisioned):
    seen: list[dict] = []
    offset = 0
    while True:
        status, body = _request(
            fake,
            "POST",
            "/crm/v3/lists/search",
            {"query": "elastic", "offset": offset, "count": 3, "additionalProperties": []},
        )
        assert status == 200
        assert set(body) == {"lists", "offset", "hasMore", "total"}
        assert body["total"] == 4
        seen += body["lists"]
        if not body["hasMore"]:
            break
        assert body["offset"] == offset + len(body["lists"])
        offset = body["offset"]
    assert len(seen) == 4 and len({i["listId"] for i in seen}) == 4
    assert all("filterBranch" not in i and "additionalProperties" in i for i in seen)
    status, body = _request(
        fake,
        "POST",
        "/crm/v3/lists/search",
        {"query": "no such list", "offset": 0, "additionalProperties": []},
    )
    assert (status, body["lists"], body["hasMore"]) == (200, [], False)


# ---- date properties -----------------------------------------------------------------------------


def test_a_date_field_is_provisioned_as_a_date_and_written_as_midnight_utc(fake, mapping, clock):
    dated = _with_date_field(mapping)
    connector = make_connector(fake, dated, clock)
    report = connector.provision()
    prop = fake.properties["contacts"]["elastic_status_changed_at"]
    assert (prop["type"], prop["fieldType"]) == ("date", "date")
    assert ("property", "contacts.elastic_status_changed_at", "create") in {
        (i.kind, i.name, i.action) for i in report.items
    }
    cid = fake.add_contact({})
    # 2026-03-04 23:30 UTC is 18:30 in New York: the UTC date is what HubSpot stores.
    late_evening_in_new_york = datetime(2026, 3, 4, 23, 30, tzinfo=UTC).astimezone(
        ZoneInfo("America/New_York")
    )
    result = connector.write_records(
        writes({cid: {"status_changed_at": late_evening_in_new_york, "engagement_score": 3}})
    )
    assert result.written == [cid] and result.failed == {}
    assert fake.contact(cid)["elastic_status_changed_at"] == "2026-03-04"
    record = connector.read_records([cid])[cid]
    assert record.values["status_changed_at"] == datetime(2026, 3, 4, tzinfo=UTC)


def test_a_date_field_accepts_a_plain_date_and_an_iso_string(fake, mapping, clock):
    connector = make_connector(fake, _with_date_field(mapping), clock)
    connector.provision()
    first, second = fake.add_contact({}), fake.add_contact({})
    result = connector.write_records(
        writes(
            {
                first: {"status_changed_at": date(2026, 1, 31)},
                second: {"status_changed_at": "2026-02-01T18:45:00Z"},
            }
        )
    )
    assert sorted(result.written) == sorted([first, second])
    assert fake.contact(first)["elastic_status_changed_at"] == "2026-01-31"
    assert fake.contact(second)["elastic_status_changed_at"] == "2026-02-01"


def test_a_datetime_field_keeps_its_time(fake, provisioned):
    cid = fake.add_contact({})
    at = datetime(2026, 3, 4, 23, 30, 15, 250000, tzinfo=UTC)
    provisioned.write_records(writes({cid: {"status_changed_at": at}}))
    assert provisioned.read_records([cid])[cid].values["status_changed_at"] == at


def test_fake_refuses_a_date_with_a_time_of_day_as_hubspot_does(fake, mapping, clock):
    make_connector(fake, _with_date_field(mapping), clock).provision()
    cid = fake.add_contact({})
    noon = str(int(datetime(2026, 3, 4, 12, 5, 7, 123000, tzinfo=UTC).timestamp() * 1000))
    status, body = _request(
        fake,
        "POST",
        "/crm/v3/objects/contacts/batch/update",
        {"inputs": [{"id": cid, "properties": {"elastic_status_changed_at": noon}}]},
    )
    assert status == 400
    assert body["category"] == "VALIDATION_ERROR"
    assert body["message"].startswith("Property values were not valid: [")
    detail = json.loads(body["message"].removeprefix("Property values were not valid: "))
    assert detail == [
        {
            "isValid": False,
            "error": "INVALID_DATE",
            "name": "elastic_status_changed_at",
            "message": f"{noon} is at 12:05:07.123 UTC, not midnight!",
        }
    ]
    midnight = str(int(datetime(2026, 3, 4, tzinfo=UTC).timestamp() * 1000))
    for accepted in (midnight, "2026-03-04"):
        status, _ = _request(
            fake,
            "POST",
            "/crm/v3/objects/contacts/batch/update",
            {"inputs": [{"id": cid, "properties": {"elastic_status_changed_at": accepted}}]},
        )
        assert status == 200


def test_old_style_write_of_a_time_to_a_date_property_is_a_per_record_failure(fake, mapping, clock):
    """What HubSpot does to a connector that sends the time: the write fails, and says why."""
    connector = make_connector(fake, _with_date_field(mapping), clock)
    connector.provision()
    cid = fake.add_contact({})
    other = fake.add_contact({})
    at = "2026-03-04T12:00:00.000Z"
    raw = WriteRequest(cid, raw_properties={"elastic_status_changed_at": at})
    result = connector.write_records([raw, *writes({other: {"engagement_score": 4}})])
    assert result.written == [other]
    assert "not midnight" in result.failed[cid]
