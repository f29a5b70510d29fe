"""`elasticity provision`: Metadata API read -> diff -> create.

Never a blind upsert: `upsertMetadata` would change a field's type and replace a picklist's
values. A field of another type is reported as drift and left alone; a picklist missing some
of our values gets them added next to its own. New fields are invisible to the integration
user until granted, so a permission set grants them and is assigned to that user.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from crm_elasticity.connectors.base import ConnectorError, PlanItem, ProvisionReport
from crm_elasticity.connectors.salesforce.api_facts import METADATA_BATCH
from crm_elasticity.connectors.salesforce.client import SalesforceClient
from crm_elasticity.connectors.salesforce.config import SalesforceOptions
from crm_elasticity.connectors.salesforce.metadata_specs import (
    ACTIVITY,
    MANAGED,
    FieldWant,
    ListViewWant,
    wanted_fields,
    wanted_list_views,
)
from crm_elasticity.core.mapping import Mapping


def _chunks(items: Sequence[Any], size: int = METADATA_BATCH) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _as_list(result: Any) -> list[Any]:
    if result is None:
        return []
    return list(result) if isinstance(result, list) else [result]


def _exists(record: Any) -> bool:
    return record is not None and getattr(record, "fullName", None) is not None


class Provisioner:
    def __init__(
        self, client: SalesforceClient, mapping: Mapping, options: SalesforceOptions, sobject: str
    ) -> None:
        self.client = client
        self.mapping = mapping
        self.options = options
        self.sobject = sobject
        self.items: list[PlanItem] = []

    def run(self, dry_run: bool) -> ProvisionReport:
        fields = wanted_fields(self.mapping, self.options, self.sobject)
        self._fields(fields, dry_run)
        self._permission_set(fields, dry_run)
        self._list_views(wanted_list_views(self.mapping, self.sobject), dry_run)
        self._signal_fields()
        if self.options.campaign_mirror:
            from crm_elasticity.connectors.salesforce.campaign import CampaignMirror

            self.items += CampaignMirror(
                self.client, self.mapping, self.options, self.sobject
            ).provision(dry_run)
        return ProvisionReport(self.items, dry_run)

    # ---- metadata plumbing -----------------------------------------------------------------

    def _md(self, what: str, fn: Callable[[Any], Any]) -> Any:
        def attempt(sf: Any) -> Any:
            md = self.client.metadata(sf)
            try:
                return fn(md)
            except Exception as exc:  # noqa: BLE001 - the SDK raises bare Exception on failed results
                if type(exc) is not Exception:
                    raise
                raise ConnectorError(f"{what}: Metadata API refused it:{exc}") from None

        return self.client.call(what, attempt)

    def _read(self, kind: str, names: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for chunk in _chunks(names):
            records = self._md(f"read {kind}", _metadata_call(kind, "read", list(chunk)))
            for record in _as_list(records):
                if _exists(record):
                    found[record.fullName] = record
        return found

    def _save(self, kind: str, verb: str, components: list[Any]) -> None:
        for chunk in _chunks(components):
            self._md(f"{verb} {kind}", _metadata_call(kind, verb, list(chunk)))

    # ---- custom fields ---------------------------------------------------------------------

    def _fields(self, wants: list[FieldWant], dry_run: bool) -> None:
        existing = self._read("CustomField", [w.full_name for w in wants])
        creates, updates = [], []
        for want in wants:
            record = existing.get(want.full_name)
            if record is None:
                creates.append(want)
                detail = want.kind + (f" ({', '.join(want.values)})" if want.values else "")
                self.items.append(PlanItem("field", want.full_name, "create", detail))
                continue
            item, updated = self._diff_field(want, record)
            self.items.append(item)
            if updated is not None:
                updates.append(updated)
        if dry_run:
            return
        self._save("CustomField", "create", [self._field(w) for w in creates])
        self._save("CustomField", "update", updates)

    def _diff_field(self, want: FieldWant, record: Any) -> tuple[PlanItem, Any]:
        kind = str(getattr(record, "type", None))
        if kind != want.kind:
            return PlanItem(
                "field",
                want.full_name,
                "drift",
                f"is {kind}, the mapping needs {want.kind}; left unchanged",
            ), None
        if not want.values:
            return PlanItem("field", want.full_name, "unchanged", kind), None
        definition = getattr(getattr(record, "valueSet", None), "valueSetDefinition", None)
        if definition is None:
            return PlanItem(
                "field", want.full_name, "drift", "uses a global value set; add the values there"
            ), None
        have = [v.fullName for v in (definition.value or [])]
        missing = [v for v in want.values if v not in have]
        if not missing:
            return PlanItem(
                "field", want.full_name, "unchanged", f"{kind} ({len(have)} values)"
            ), None
        md = self.client.metadata(self.client.sf)
        if definition.sorted is None:
            definition.sorted = False  # required on update, sometimes absent on read
        definition.value = list(definition.value or []) + [
            md.CustomValue(fullName=v, default=False, label=v) for v in missing
        ]
        return PlanItem(
            "field", want.full_name, "update", f"add picklist values {', '.join(missing)}"
        ), record

    def _field(self, want: FieldWant) -> Any:
        md = self.client.metadata(self.client.sf)
        spec: dict[str, Any] = {
            "fullName": want.full_name,
            "label": want.label,
            "type": md.FieldType(want.kind),
            "description": MANAGED.format(program=self.mapping.program),
        }
        if want.kind == "Number":
            spec.update(precision=18, scale=want.scale)
        elif want.kind == "Text":
            spec.update(length=want.length or 255)
        elif want.kind == "Checkbox":
            spec.update(defaultValue="false")
        elif want.kind == "Picklist":
            values = [md.CustomValue(fullName=v, default=False, label=v) for v in want.values]
            definition = md.ValueSetValuesDefinition(sorted=False, value=values)
            spec.update(valueSet=md.ValueSet(restricted=True, valueSetDefinition=definition))
        return md.CustomField(**spec)

    # ---- field-level security --------------------------------------------------------------

    def _permission_set(self, wants: list[FieldWant], dry_run: bool) -> None:
        name = self.options.permission_set
        fields = [grant for w in wants for grant in w.permission_names]
        existing = self._read("PermissionSet", [name]).get(name)
        md = self.client.metadata(self.client.sf)
        if existing is None:
            self.items.append(
                PlanItem("permission", name, "create", f"read/edit on {len(fields)} fields")
            )
            if not dry_run:
                grants = [self._grant(md, f) for f in fields]
                self._save(
                    "PermissionSet",
                    "create",
                    [
                        md.PermissionSet(
                            fullName=name,
                            label=name.replace("_", " "),
                            fieldPermissions=grants,
                            description=MANAGED.format(program=self.mapping.program),
                        )
                    ],
                )
        else:
            have = list(existing.fieldPermissions or [])
            granted = {p.field for p in have if p.editable}
            missing = [f for f in fields if f not in granted]
            # `Activity.` is not an sObject: such an entry (an earlier release wrote them) is
            # refused on save, so it is dropped while the Task/Event grants are added.
            stale = {str(p.field) for p in have if str(p.field).startswith(f"{ACTIVITY}.")}
            if missing or stale:
                changes = [f"grant read/edit on {', '.join(missing)}"] if missing else []
                changes += [f"drop {', '.join(sorted(stale))}"] if stale else []
                self.items.append(PlanItem("permission", name, "update", "; ".join(changes)))
                kept = [p for p in have if p.field not in missing and p.field not in stale]
                existing.fieldPermissions = kept + [self._grant(md, f) for f in missing]
                if not dry_run:
                    self._save("PermissionSet", "update", [existing])
            else:
                self.items.append(
                    PlanItem("permission", name, "unchanged", f"{len(fields)} fields granted")
                )
        self._assignment(name, dry_run)

    @staticmethod
    def _grant(md: Any, field_name: str) -> Any:
        return md.PermissionSetFieldPermissions(field=field_name, editable=True, readable=True)

    def _assignment(self, name: str, dry_run: bool) -> None:
        c = self.client
        user = c.call("identify the integration user", lambda sf: sf.oauth2("userinfo"))
        user_id = (user or {}).get("user_id")
        rows = c.lookup(
            "find the permission set", "SELECT Id FROM PermissionSet WHERE Name = {}", name
        )
        assigned = False
        if rows and user_id:
            found = c.lookup(
                "find the assignment",
                "SELECT Id FROM PermissionSetAssignment WHERE PermissionSetId = {} "
                "AND AssigneeId = {}",
                rows[0]["Id"],
                user_id,
            )
            assigned = bool(found)
        label = f"{name} -> {user_id or 'integration user'}"
        if assigned:
            self.items.append(PlanItem("permission", label, "unchanged", "assigned"))
            return
        self.items.append(PlanItem("permission", label, "create", "assign to the integration user"))
        if dry_run:
            return
        if not rows or not user_id:
            raise ConnectorError(
                f"permission set {name} or the integration user was not found "
                "after creating it; run provision again"
            )
        body = {"PermissionSetId": rows[0]["Id"], "AssigneeId": user_id}
        c.call(
            "assign the permission set",
            lambda sf: sf.restful("sobjects/PermissionSetAssignment", method="POST", json=body),
        )

    # ---- list views and signal fields ------------------------------------------------------

    def _list_views(self, wants: list[ListViewWant], dry_run: bool) -> None:
        existing = self._read("ListView", [w.full_name for w in wants])
        creates = []
        for want in wants:
            record = existing.get(want.full_name)
            if record is None:
                creates.append(want)
                where = " AND ".join(f"{f} {op} {v}" for f, op, v in want.filters)
                self.items.append(PlanItem("list", want.full_name, "create", where))
                continue
            have = {(f.field, str(f.operation), f.value or "") for f in (record.filters or [])}
            if have == set(want.filters):
                self.items.append(PlanItem("list", want.full_name, "unchanged", want.label))
            else:
                self.items.append(
                    PlanItem(
                        "list", want.full_name, "drift", "its filters were edited; left unchanged"
                    )
                )
        if dry_run or not creates:
            return
        md = self.client.metadata(self.client.sf)
        views = [
            md.ListView(
                fullName=w.full_name,
                label=w.label,
                filterScope=md.FilterScope("Everything"),
                columns=list(w.columns),
                filters=[
                    md.ListViewFilter(field=f, operation=md.FilterOperation(op), value=v)
                    for f, op, v in w.filters
                ],
            )
            for w in creates
        ]
        self._save("ListView", "create", views)

    def _signal_fields(self) -> None:
        """Signal fields are the org's own (Account Engagement, MC Connect, Flows): we only
        check they exist, because the SOQL catch-up fails on a missing one."""
        wanted = {s.property for s in self.mapping.signals}
        wanted |= {s.property for s in self.mapping.fields.values() if s.read_only}
        if not wanted:
            return
        described = self.client.call(
            f"describe {self.sobject}", lambda sf: sf.restful(f"sobjects/{self.sobject}/describe")
        )
        types = {f["name"]: f.get("type", "") for f in (described or {}).get("fields", [])}
        for prop in sorted(wanted):
            if prop in types:
                self.items.append(
                    PlanItem(
                        "signal", f"{self.sobject}.{prop}", "unchanged", f"exists ({types[prop]})"
                    )
                )
            else:
                self.items.append(
                    PlanItem(
                        "signal",
                        f"{self.sobject}.{prop}",
                        "drift",
                        "missing in the org: create it or remove the signal "
                        "from the mapping (the SOQL catch-up needs it)",
                    )
                )


def offline_plan(mapping: Mapping, options: SalesforceOptions, sobject: str) -> list[PlanItem]:
    """What `provision` would do in an org that has none of it, from the mapping alone (no
    credentials, no call): the same items and wording `Provisioner` reports for a fresh org."""
    wants = wanted_fields(mapping, options, sobject)
    items = [
        PlanItem(
            "field",
            w.full_name,
            "create",
            w.kind + (f" ({', '.join(w.values)})" if w.values else ""),
        )
        for w in wants
    ]
    grants = [grant for w in wants for grant in w.permission_names]
    items.append(
        PlanItem(
            "permission", options.permission_set, "create", f"read/edit on {len(grants)} fields"
        )
    )
    items.append(
        PlanItem(
            "permission",
            f"{options.permission_set} -> the integration user",
            "create",
            "assign to the integration user",
        )
    )
    for view in wanted_list_views(mapping, sobject):
        where = " AND ".join(f"{f} {op} {v}" for f, op, v in view.filters)
        items.append(PlanItem("list", view.full_name, "create", where))
    if options.campaign_mirror:
        name = options.campaign_name or mapping.program
        items.append(PlanItem("campaign", name, "create", "member statuses mirror the states"))
    return items


def _metadata_call(kind: str, verb: str, components: list[Any]) -> Callable[[Any], Any]:
    """`md.<kind>.<verb>(components)` on the Metadata API, for `_md` to send."""
    return lambda md: getattr(getattr(md, kind), verb)(components)
