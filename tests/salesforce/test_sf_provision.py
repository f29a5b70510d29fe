"""Provisioning through the Metadata API: read, diff, create; drift reported, never clobbered."""

from __future__ import annotations

from datetime import UTC, datetime
from xml.etree import ElementTree as ET  # noqa: S405 - builds test input

import pytest

from crm_elasticity.connectors.base import ConnectorError, HandoffTask
from crm_elasticity.connectors.salesforce import SalesforceConnector
from crm_elasticity.core.mapping import Mapping
from tests.fakes.salesforce import MD_NS, XSI, FakeSalesforce
from tests.helpers import writes
from tests.salesforce.sf_helpers import build


@pytest.fixture
def fresh(mapping: Mapping, env: dict[str, str], fake: FakeSalesforce) -> SalesforceConnector:
    """A connector on an org where nothing was provisioned yet."""
    fake.provisioned_all = False
    return build(mapping, env, fake)


def actions(report) -> dict[str, str]:  # noqa: ANN001
    return {f"{i.kind}:{i.name}": i.action for i in report.items}


def existing_field(fake: FakeSalesforce, full_name: str, kind: str, values=()) -> None:  # noqa: ANN001
    item = ET.Element(f"{{{MD_NS}}}metadata", {f"{{{XSI}}}type": "CustomField"})
    ET.SubElement(item, f"{{{MD_NS}}}fullName").text = full_name
    ET.SubElement(item, f"{{{MD_NS}}}label").text = "Theirs"
    ET.SubElement(item, f"{{{MD_NS}}}type").text = kind
    if values:
        vs = ET.SubElement(
            ET.SubElement(item, f"{{{MD_NS}}}valueSet"), f"{{{MD_NS}}}valueSetDefinition"
        )
        for value in values:
            v = ET.SubElement(vs, f"{{{MD_NS}}}value")
            ET.SubElement(v, f"{{{MD_NS}}}fullName").text = value
            ET.SubElement(v, f"{{{MD_NS}}}default").text = "false"
    fake.metadata.setdefault("CustomField", {})[full_name] = item
    fake._apply_metadata("CustomField", full_name, item)


def test_dry_run_plans_and_changes_nothing(
    fresh: SalesforceConnector, fake: FakeSalesforce
) -> None:
    report = fresh.provision(dry_run=True)
    assert report.dry_run
    plan = actions(report)
    assert plan["field:Contact.Campaign_Status__c"] == "create"
    assert plan["field:Activity.Elastic_Handoff_Key__c"] == "create"
    assert plan["permission:Elasticity_Integration"] == "create"
    assert plan["list:Contact.Elastic_Engaged"] == "create"
    assert set(fake.metadata_calls) == {"readMetadata"}
    assert fake.records["PermissionSetAssignment"] == {}


def test_provision_creates_then_is_idempotent(
    fresh: SalesforceConnector, fake: FakeSalesforce
) -> None:
    first = fresh.provision()
    assert len(first.changes) == 12 + 1 + 1 + 4  # fields, permission set, assignment, lists
    picklist = fake.fields["Contact"]["Campaign_Status__c"]
    assert picklist == {
        "type": "Picklist",
        "values": ["Active", "Engaged", "Dormant", "Reactivated", "Suppressed"],
    }
    view = fake.metadata["ListView"]["Contact.Elastic_Suppressed_ads_audience"]
    filters = [
        (f.findtext(f"{{{MD_NS}}}field"), f.findtext(f"{{{MD_NS}}}value"))
        for f in view.findall(f"{{{MD_NS}}}filters")
    ]
    assert filters == [
        ("Campaign_Status__c", "Suppressed"),
        ("Elastic_Suppression_Reason__c", "no_response"),
    ]
    calls_before = list(fake.metadata_calls)
    second = fresh.provision()
    assert second.changes == []
    assert second.drift == []
    new_calls = fake.metadata_calls[len(calls_before) :]
    assert set(new_calls) == {"readMetadata"}
    assert "upsertMetadata" not in fake.metadata_calls


def test_the_task_field_is_granted_per_sobject_and_hand_offs_work_after_provisioning(
    fresh: SalesforceConnector, fake: FakeSalesforce
) -> None:
    """Activity is where the field is defined, not an sObject: access is granted and read back
    as Task.<Field> and Event.<Field>, so hand-offs work and a second run grants nothing."""
    fresh.provision()
    assert {"Task.Elastic_Handoff_Key__c", "Event.Elastic_Handoff_Key__c"} <= fake.granted
    assert not any(name.startswith("Activity.") for name in fake.granted)
    cid = fake.add("Contact", LastName="x")
    task = HandoffTask(
        key="handoff:x",
        contact_id=cid,
        owner_id=None,
        subject="Call",
        body="b",
        priority="HIGH",
        due_at=datetime(2026, 3, 1, tzinfo=UTC),
    )
    assert fresh.create_tasks([task]).written == ["handoff:x"]
    assert len(fake.records["Task"]) == 1
    again = {i.name: i.action for i in fresh.provision().items if i.kind == "permission"}
    assert again["Elasticity_Integration"] == "unchanged"


def test_fields_are_usable_only_after_provisioning(
    fresh: SalesforceConnector, fake: FakeSalesforce
) -> None:
    cid = fake.add("Contact", LastName="x")
    with pytest.raises(ConnectorError, match="INVALID_FIELD"):
        fresh.read_records([cid])
    fresh.provision()
    assert fresh.read_records([cid])[cid].values["campaign_status"] is None
    assert fresh.write_records(writes({cid: {"campaign_status": "Active"}})).written == [cid]


def test_a_field_of_another_type_is_drift_and_left_alone(
    fresh: SalesforceConnector, fake: FakeSalesforce
) -> None:
    existing_field(fake, "Contact.Engagement_Score__c", "Text")
    report = fresh.provision()
    (drift,) = report.drift
    assert drift.name == "Contact.Engagement_Score__c"
    assert "is Text, the mapping needs Number" in drift.detail
    stored = fake.metadata["CustomField"]["Contact.Engagement_Score__c"]
    assert stored.findtext(f"{{{MD_NS}}}type") == "Text"
    assert stored.findtext(f"{{{MD_NS}}}label") == "Theirs"


def test_a_picklist_missing_values_gets_them_added_next_to_its_own(
    fresh: SalesforceConnector, fake: FakeSalesforce
) -> None:
    existing_field(fake, "Contact.Campaign_Status__c", "Picklist", ["Active", "VIP"])
    plan = {i.name: i for i in fresh.provision().items}
    item = plan["Contact.Campaign_Status__c"]
    assert item.action == "update"
    assert item.detail == "add picklist values Engaged, Dormant, Reactivated, Suppressed"
    assert fake.fields["Contact"]["Campaign_Status__c"]["values"] == [
        "Active",
        "VIP",
        "Engaged",
        "Dormant",
        "Reactivated",
        "Suppressed",
    ]


def test_an_edited_list_view_is_drift(fresh: SalesforceConnector, fake: FakeSalesforce) -> None:
    fresh.provision()
    view = fake.metadata["ListView"]["Contact.Elastic_Engaged"]
    view.find(f"{{{MD_NS}}}filters/{{{MD_NS}}}value").text = "Engaged,Active"
    plan = actions(fresh.provision())
    assert plan["list:Contact.Elastic_Engaged"] == "drift"
    assert view.find(f"{{{MD_NS}}}filters/{{{MD_NS}}}value").text == "Engaged,Active"


def test_a_permission_set_missing_grants_is_extended(
    fresh: SalesforceConnector, fake: FakeSalesforce, mapping: Mapping, env: dict
) -> None:
    fresh.provision()
    options = {**mapping.options, "handoff_key_field": "Elastic_Handoff_Key_V2__c"}
    changed = build(mapping.model_copy(update={"options": options}), env, fake)
    plan = {i.name: i for i in changed.provision().items}
    assert plan["Elasticity_Integration"].action == "update"
    assert "Task.Elastic_Handoff_Key_V2__c" in plan["Elasticity_Integration"].detail
    assert {"Task.Elastic_Handoff_Key_V2__c", "Event.Elastic_Handoff_Key_V2__c"} <= fake.granted
    assert "Contact.Campaign_Status__c" in fake.granted  # earlier grants kept


def test_a_missing_signal_field_is_reported(
    fresh: SalesforceConnector, fake: FakeSalesforce
) -> None:
    del fake.fields["Contact"]["pi__url__c"]  # no Account Engagement package in this org
    plan = {i.name: i for i in fresh.provision(dry_run=True).items}
    assert plan["Contact.pi__url__c"].action == "drift"
    assert "missing in the org" in plan["Contact.pi__url__c"].detail


def test_campaign_mirror_is_provisioned_once(
    mapping: Mapping, env: dict, fake: FakeSalesforce
) -> None:
    mirrored = mapping.model_copy(update={"options": {**mapping.options, "campaign_mirror": True}})
    connector = build(mirrored, env, fake)
    dry = actions(connector.provision(dry_run=True))
    assert dry["campaign:elastic-newsletter"] == "create"
    assert fake.records["Campaign"] == {}
    connector.provision()
    (campaign,) = fake.records["Campaign"].values()
    assert campaign["Name"] == "elastic-newsletter"
    responded = {
        s["Label"] for s in fake.records["CampaignMemberStatus"].values() if s["HasResponded"]
    }
    assert responded == {"Engaged", "Reactivated"}
    again = build(mirrored, env, fake).provision()
    assert [i for i in again.changes if i.kind == "campaign"] == []


def test_metadata_session_expiry_regrants(fresh: SalesforceConnector, fake: FakeSalesforce) -> None:
    fresh.provision(dry_run=True)
    fake.expire_sessions()
    report = fresh.provision(dry_run=True)
    assert report.items
    assert fake.grants == 2


def test_an_activity_grant_left_by_an_earlier_release_is_replaced_by_task_and_event(
    fresh: SalesforceConnector, fake: FakeSalesforce
) -> None:
    fresh.provision()
    stored = fake.metadata["PermissionSet"]["Elasticity_Integration"]
    for perm in stored.findall(f"{{{MD_NS}}}fieldPermissions"):
        if perm.findtext(f"{{{MD_NS}}}field", "").startswith(("Task.", "Event.")):
            stored.remove(perm)
    old = ET.SubElement(stored, f"{{{MD_NS}}}fieldPermissions")
    ET.SubElement(old, f"{{{MD_NS}}}editable").text = "true"
    ET.SubElement(old, f"{{{MD_NS}}}field").text = "Activity.Elastic_Handoff_Key__c"
    ET.SubElement(old, f"{{{MD_NS}}}readable").text = "true"
    plan = {i.name: i for i in fresh.provision().items}
    assert plan["Elasticity_Integration"].action == "update"
    assert "drop Activity.Elastic_Handoff_Key__c" in plan["Elasticity_Integration"].detail
    fields = {
        p.findtext(f"{{{MD_NS}}}field")
        for p in fake.metadata["PermissionSet"]["Elasticity_Integration"].findall(
            f"{{{MD_NS}}}fieldPermissions"
        )
    }
    assert {"Task.Elastic_Handoff_Key__c", "Event.Elastic_Handoff_Key__c"} <= fields
    assert "Activity.Elastic_Handoff_Key__c" not in fields
    assert fresh.provision().changes == []


def test_the_offline_plan_is_what_a_dry_run_on_an_empty_org_reports(fresh, mapping):
    """`provision --dry-run` without credentials shows the plan a fresh org would get."""
    offline = SalesforceConnector.offline_plan(mapping)
    online = fresh.provision(dry_run=True)
    signal_checks = [i for i in online.items if i.kind not in ("field", "permission", "list")]
    online_items = [i for i in online.items if i not in signal_checks]

    def rows(items):  # the offline plan cannot know the integration user's id
        return [(i.kind, i.name.split(" -> ")[0], i.action, i.detail) for i in items]

    assert rows(offline.items) == rows(online_items)
