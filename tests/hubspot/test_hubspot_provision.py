from __future__ import annotations

from tests.fakes.hubspot_server import FakeHubSpot


def _by_name(report) -> dict[str, tuple[str, str]]:
    return {i.name: (i.kind, i.action) for i in report.items}


def _writes(fake: FakeHubSpot) -> int:
    """Requests that may change something (a search is a POST that only reads)."""
    return sum(
        1 for method, path, _ in fake.log if method != "GET" and not path.endswith("/search")
    )


def test_first_run_creates_everything_second_run_changes_nothing(fake, connector, mapping):
    first = connector.provision()
    actions = _by_name(first)
    assert actions["contacts.elastic_campaign_status"] == ("property", "create")
    assert actions["contacts.elastic_program"] == ("group", "create")
    assert actions["Elastic – Dormant"] == ("list", "create")
    props = fake.properties["contacts"]
    status = props["elastic_campaign_status"]
    assert (status["type"], status["fieldType"]) == ("enumeration", "select")
    assert [o["value"] for o in status["options"]] == [
        "active",
        "engaged",
        "dormant",
        "reactivated",
        "suppressed",
    ]
    assert (
        props["elastic_last_engagement_date"]["type"],
        props["elastic_engagement_score"]["type"],
    ) == ("datetime", "number")
    assert props["elastic_campaign_status"]["groupName"] == "elastic_program"
    assert props["elastic_exp_cta"]["type"] == "enumeration"
    assert "elastic_handoff_key" in fake.properties["tasks"]
    assert sorted(i["name"] for i in fake.lists.values()) == sorted(s.name for s in mapping.lists)
    assert {i["processingType"] for i in fake.lists.values()} == {"DYNAMIC"}

    writes = _writes(fake)
    second = connector.provision()
    assert second.changes == []
    assert second.drift == []
    assert _writes(fake) == writes, "a second run must not write anything"
    assert {i.action for i in second.items} == {"unchanged"}


def test_list_filters_are_or_of_and_branches_on_the_status_values(fake, connector):
    connector.provision()
    suppressed = next(i for i in fake.lists.values() if i["name"].startswith("Elastic – Supp"))
    branch = suppressed["filterBranch"]
    assert branch["filterBranchType"] == "OR"
    assert branch["filters"] == []
    (and_branch,) = branch["filterBranches"]
    ops = {f["property"]: f["operation"] for f in and_branch["filters"]}
    assert ops["elastic_campaign_status"]["values"] == ["suppressed"]
    assert ops["elastic_suppression_reason"]["values"] == ["no_response"]
    assert ops["elastic_campaign_status"]["operationType"] == "ENUMERATION"
    stream = next(i for i in fake.lists.values() if i["name"] == "Elastic – In send stream")
    values = stream["filterBranch"]["filterBranches"][0]["filters"][0]["operation"]["values"]
    assert sorted(values) == ["active", "reactivated"]


def test_dry_run_plans_without_writing(fake, connector):
    report = connector.provision(dry_run=True)
    assert report.dry_run
    assert len(report.changes) > 10
    assert _writes(fake) == 0
    assert "elastic_campaign_status" not in fake.properties["contacts"]


def test_type_drift_is_reported_and_not_clobbered(fake, connector):
    fake.properties["contacts"]["elastic_engagement_score"] = {
        "name": "elastic_engagement_score",
        "label": "Score",
        "type": "string",
        "fieldType": "text",
        "groupName": "contactinformation",
        "options": [],
    }
    report = connector.provision()
    (drift,) = report.drift
    assert drift.name == "contacts.elastic_engagement_score"
    assert "exists as string/text" in drift.detail
    assert "number" in drift.detail
    assert fake.properties["contacts"]["elastic_engagement_score"]["type"] == "string"


def test_missing_enum_option_is_added_keeping_existing_ones(fake, connector):
    connector.provision()
    status = fake.properties["contacts"]["elastic_campaign_status"]
    custom = {"label": "Paused by sales", "value": "paused", "hidden": False, "displayOrder": 9}
    status["options"] = [o for o in status["options"] if o["value"] != "dormant"] + [custom]
    report = connector.provision()
    assert [(i.name, i.action) for i in report.changes] == [
        ("contacts.elastic_campaign_status", "update")
    ]
    assert "dormant" in report.changes[0].detail
    values = [o["value"] for o in fake.properties["contacts"]["elastic_campaign_status"]["options"]]
    assert "paused" in values
    assert "dormant" in values
    assert connector.provision().changes == []


def test_list_with_another_processing_type_is_drift_changed_filters_are_restored(fake, connector):
    connector.provision()
    dormant = next(i for i in fake.lists.values() if i["name"] == "Elastic – Dormant")
    dormant["filterBranch"]["filterBranches"][0]["filters"][0]["operation"]["values"] = ["active"]
    manual = next(i for i in fake.lists.values() if i["name"] == "Elastic – In send stream")
    manual["processingType"] = "MANUAL"
    report = _by_name(connector.provision())
    assert report["Elastic – Dormant"] == ("list", "update")
    assert report["Elastic – In send stream"] == ("list", "drift")
    values = dormant["filterBranch"]["filterBranches"][0]["filters"][0]["operation"]["values"]
    assert values == ["dormant"]


def test_read_only_native_property_must_exist(fake, connector, mapping):
    fields = dict(mapping.fields)
    fields["unanswered_sends"] = fields["unanswered_sends"].model_copy(
        update={"property": "hs_email_sends_since_last_engagement", "read_only": True}
    )
    native = mapping.model_copy(update={"fields": fields})
    from tests.hubspot.hubspot_helpers import FakeClock, make_connector

    report = make_connector(fake, native, FakeClock()).provision()
    assert _by_name(report)["contacts.hs_email_sends_since_last_engagement"] == (
        "property",
        "unchanged",
    )
    del fake.properties["contacts"]["hs_email_sends_since_last_engagement"]
    report = make_connector(fake, native, FakeClock()).provision()
    assert _by_name(report)["contacts.hs_email_sends_since_last_engagement"][1] == "drift"


def test_the_offline_plan_is_what_a_dry_run_on_an_empty_portal_reports(connector, mapping):
    """`provision --dry-run` without credentials shows the plan a fresh portal would get."""
    from crm_elasticity.connectors.hubspot import HubSpotConnector

    offline = HubSpotConnector.offline_plan(mapping)
    online = connector.provision(dry_run=True)
    assert [(i.kind, i.name, i.action, i.detail) for i in offline.items] == [
        (i.kind, i.name, i.action, i.detail) for i in online.items
    ]
