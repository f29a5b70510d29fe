"""Optional Campaign mirror, for teams that report on Campaigns: one Campaign per program,
member statuses named after the elastic states. Campaign membership is static in Salesforce,
so the connector keeps it: each written status change moves (or adds) the member."""

from __future__ import annotations

from typing import Any

from crm_elasticity.connectors.base import ConnectorError, PlanItem
from crm_elasticity.connectors.salesforce.client import SalesforceClient
from crm_elasticity.connectors.salesforce.composite import CollectionWriter
from crm_elasticity.connectors.salesforce.config import SalesforceOptions
from crm_elasticity.core.mapping import Mapping
from crm_elasticity.core.models import Status

RESPONDED = {Status.ENGAGED.value, Status.REACTIVATED.value}


class CampaignMirror:
    def __init__(
        self, client: SalesforceClient, mapping: Mapping, options: SalesforceOptions, sobject: str
    ) -> None:
        self.client = client
        self.name = options.campaign_name or mapping.program
        self.member_field = "ContactId" if sobject == "Contact" else "LeadId"
        self._campaign_id: str | None = None

    def _find_campaign(self) -> str | None:
        if self._campaign_id is None:
            rows = self.client.lookup(
                "find the mirror Campaign",
                "SELECT Id FROM Campaign WHERE Name = {} ORDER BY Id",
                self.name,
            )
            self._campaign_id = rows[0]["Id"] if rows else None
        return self._campaign_id

    def provision(self, dry_run: bool) -> list[PlanItem]:
        items: list[PlanItem] = []
        campaign_id = self._find_campaign()
        if campaign_id is None:
            items.append(PlanItem("campaign", self.name, "create", "mirror of elastic states"))
            if dry_run:
                return items + [
                    PlanItem("campaign", f"{self.name}: {s.value}", "create", "member status")
                    for s in Status
                ]
            body = {"Name": self.name, "IsActive": True, "Type": "Email"}
            created = self.client.call(
                "create the mirror Campaign",
                lambda sf: sf.restful("sobjects/Campaign", method="POST", json=body),
            )
            if not created or "id" not in created:
                raise ConnectorError(f"creating the mirror Campaign returned no id: {created!r}")
            campaign_id = self._campaign_id = created["id"]
        else:
            items.append(PlanItem("campaign", self.name, "unchanged", campaign_id))
        have = {
            row["Label"]
            for row in self.client.lookup(
                "read member statuses",
                "SELECT Id, Label FROM CampaignMemberStatus WHERE CampaignId = {} ORDER BY Id",
                campaign_id,
            )
        }
        missing = [s.value for s in Status if s.value not in have]
        for status in Status:
            action = "create" if status.value in missing else "unchanged"
            items.append(
                PlanItem("campaign", f"{self.name}: {status.value}", action, "member status")
            )
        if missing and not dry_run:
            rows = {
                label: {
                    "CampaignId": campaign_id,
                    "Label": label,
                    "HasResponded": label in RESPONDED,
                    "SortOrder": 10 + i,
                }
                for i, label in enumerate(missing)
            }
            self._writer().save("CampaignMemberStatus", rows, create=True)
        return items

    def _writer(self) -> CollectionWriter:
        return CollectionWriter(self.client)

    def mirror(self, statuses: dict[str, str]) -> dict[str, str]:
        """Move members to their new status (adding them when missing); return failures."""
        campaign_id = self._find_campaign()
        if campaign_id is None or not statuses:
            return {}
        members: dict[str, dict[str, Any]] = {}
        soql = (
            "SELECT Id, {member:literal}, Status FROM CampaignMember "
            "WHERE CampaignId = {campaign} AND {member:literal} IN {ids} ORDER BY Id"
        )
        for row in self.client.lookup_in(
            "read Campaign members",
            soql,
            sorted(statuses),
            "ids",
            member=self.member_field,
            campaign=campaign_id,
        ):
            members[row[self.member_field]] = row
        updates = {
            cid: {"id": members[cid]["Id"], "Status": status}
            for cid, status in statuses.items()
            if cid in members and members[cid]["Status"] != status
        }
        inserts = {
            cid: {"CampaignId": campaign_id, self.member_field: cid, "Status": status}
            for cid, status in statuses.items()
            if cid not in members
        }
        failed: dict[str, str] = {}
        if updates:
            failed.update(self._writer().save("CampaignMember", updates).failed)
        if inserts:
            failed.update(self._writer().save("CampaignMember", inserts, create=True).failed)
        return failed
