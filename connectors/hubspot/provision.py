"""`elasticity provision` for HubSpot: property groups, properties and DYNAMIC lists.

Read everything first, diff against the mapping, then change only what is missing: a second
run changes nothing. An enumeration missing options is PATCHed with the union (a PATCH replaces
the whole option list). A property that exists with another type is drift: reported, never
clobbered, since other workflows may depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crm_elasticity.connectors.base import PlanItem, ProvisionReport
from crm_elasticity.connectors.hubspot.client import HubSpotClient, HubSpotError
from crm_elasticity.connectors.hubspot.config import HubSpotOptions
from crm_elasticity.core.mapping import FieldSpec, ListSpec, Mapping
from crm_elasticity.core.models import Status, SuppressionReason

CONTACT_OBJECT_TYPE_ID = "0-1"
LIST_SEARCH_PAGE = 500
"""The most lists one `POST /crm/v3/lists/search` answers with."""
SCHEMA_SCOPE = "crm.schemas.contacts.write"
LISTS_SCOPE = "crm.lists.write"
FIELD_TYPES = {
    "enumeration": ("enumeration", "select"),
    "datetime": ("datetime", "date"),
    "date": ("date", "date"),
    "number": ("number", "number"),
    "string": ("string", "text"),
    "bool": ("bool", "booleancheckbox"),
}
ENUM_OPTIONS = {
    "campaign_status": [(s.value.lower(), s.value) for s in Status],
    "suppression_reason": [
        (r.value, r.value.replace("_", " ").capitalize()) for r in SuppressionReason
    ],
}


@dataclass
class Wanted:
    object_type: str
    name: str
    label: str
    type: str
    options: list[tuple[str, str]] = field(default_factory=list)
    must_exist_only: bool = False
    """A vendor-native property the mapping reads: check it is there, never create it."""

    def create_body(self, group: str) -> dict[str, Any]:
        hs_type, field_type = FIELD_TYPES[self.type]
        body: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "type": hs_type,
            "fieldType": field_type,
            "groupName": group,
        }
        if hs_type == "enumeration":
            body["options"] = [
                {"label": label, "value": value, "hidden": False, "displayOrder": i}
                for i, (value, label) in enumerate(self.options)
            ]
        elif hs_type == "bool":
            body["options"] = [
                {"label": "Yes", "value": "true", "hidden": False, "displayOrder": 0},
                {"label": "No", "value": "false", "hidden": False, "displayOrder": 1},
            ]
        return body


def wanted_properties(mapping: Mapping, options: HubSpotOptions) -> list[Wanted]:
    wanted: list[Wanted] = []
    for name, spec in mapping.fields.items():
        wanted.append(_from_field(name, spec))
    for exp in mapping.experiments:
        variants = [(v.name, v.name) for v in exp.variants]
        wanted.append(
            Wanted("contacts", exp.property, f"Experiment: {exp.name}", "enumeration", variants)
        )
    if mapping.holdout and mapping.holdout.property:
        wanted.append(Wanted("contacts", mapping.holdout.property, "Reactivation holdout", "bool"))
    if mapping.handoff.enabled:
        wanted.append(
            Wanted("tasks", options.handoff_key_property, "Elastic hand-off key", "string")
        )
    return wanted


def _from_field(name: str, spec: FieldSpec) -> Wanted:
    label = spec.label or name.replace("_", " ").capitalize()
    return Wanted(
        "contacts",
        spec.property,
        label,
        spec.type,
        ENUM_OPTIONS.get(name, []),
        must_exist_only=spec.read_only,
    )


def list_filter_branch(mapping: Mapping, spec: ListSpec) -> dict[str, Any]:
    """Root OR -> one AND branch -> property filters, the only shape Lists v3 accepts."""
    filters = [
        _enum_filter(
            mapping.property_of("campaign_status"), [s.value.lower() for s in spec.statuses]
        )
    ]
    if spec.suppression_reasons:
        filters.append(
            _enum_filter(mapping.property_of("suppression_reason"), list(spec.suppression_reasons))
        )
    return {
        "filterBranchType": "OR",
        "filterBranchOperator": "OR",
        "filters": [],
        "filterBranches": [
            {
                "filterBranchType": "AND",
                "filterBranchOperator": "AND",
                "filterBranches": [],
                "filters": filters,
            }
        ],
    }


def _enum_filter(prop: str, values: list[str]) -> dict[str, Any]:
    return {
        "filterType": "PROPERTY",
        "property": prop,
        "operation": {
            "operationType": "ENUMERATION",
            "operator": "IS_ANY_OF",
            "values": values,
            "includeObjectsWithNoValueSet": False,
        },
    }


def branch_meaning(branch: dict[str, Any] | None) -> frozenset:
    """What a filter branch selects, ignoring order and HubSpot's extra keys."""
    if not branch:
        return frozenset()
    meaning = []
    for sub in branch.get("filterBranches") or []:
        terms = []
        for f in sub.get("filters") or []:
            op = f.get("operation") or {}
            values = op.get("values") or ([op["value"]] if "value" in op else [])
            terms.append(
                (
                    f.get("property"),
                    op.get("operationType"),
                    op.get("operator"),
                    tuple(sorted(str(v).lower() for v in values)),
                )
            )
        meaning.append(frozenset(terms))
    return frozenset(meaning)


class Provisioner:
    def __init__(self, client: HubSpotClient, mapping: Mapping, options: HubSpotOptions) -> None:
        self.client = client
        self.mapping = mapping
        self.options = options
        self.items: list[PlanItem] = []

    def run(self, dry_run: bool) -> ProvisionReport:
        self.dry_run = dry_run
        wanted = wanted_properties(self.mapping, self.options)
        for object_type in dict.fromkeys(w.object_type for w in wanted):
            self._group(object_type)
            existing = self._properties(object_type)
            for item in (w for w in wanted if w.object_type == object_type):
                self._property(item, existing.get(item.name))
        if self.mapping.lists:
            found = self._lists_by_name()
            for spec in self.mapping.lists:
                self._list(spec, _named(found, spec.name))
        return ProvisionReport(self.items, dry_run)

    def _plan(self, kind: str, name: str, action: str, detail: str = "") -> None:
        self.items.append(PlanItem(kind, name, action, detail))

    def _call(
        self, api: str, method: str, *args: Any, what: str, scope: str = SCHEMA_SCOPE, **kwargs: Any
    ) -> Any:
        return self.client.call(api, method, *args, what=what, scope=scope, **kwargs).data

    # ---- groups and properties -------------------------------------------------------------

    def _group(self, object_type: str) -> None:
        name = self.options.property_group
        data = self._call(
            "properties.groups", "get_all", object_type, what=f"read {object_type} property groups"
        )
        if any(g.get("name") == name for g in (data or {}).get("results") or []):
            self._plan("group", f"{object_type}.{name}", "unchanged")
            return
        self._plan("group", f"{object_type}.{name}", "create", self.options.property_group_label)
        if not self.dry_run:
            body = {"name": name, "label": self.options.property_group_label}
            self._call(
                "properties.groups",
                "create",
                object_type,
                body,
                what=f"create property group {name}",
            )

    def _properties(self, object_type: str) -> dict[str, dict[str, Any]]:
        data = self._call(
            "properties.core",
            "get_all",
            object_type,
            archived=False,
            what=f"read {object_type} properties",
        )
        return {p["name"]: p for p in (data or {}).get("results") or []}

    def _property(self, want: Wanted, have: dict[str, Any] | None) -> None:
        label = f"{want.object_type}.{want.name}"
        hs_type, _ = FIELD_TYPES[want.type]
        if have is None and want.must_exist_only:
            self._plan(
                "property",
                label,
                "drift",
                "read-only property the mapping reads is missing in HubSpot",
            )
            return
        if have is None:
            self._plan("property", label, "create", f"{hs_type}")
            if not self.dry_run:
                self._create_property(want)
            return
        if have.get("type") != hs_type:
            self._plan(
                "property",
                label,
                "drift",
                f"exists as {have.get('type')}/{have.get('fieldType')}, mapping expects "
                f"{hs_type}; left unchanged",
            )
            return
        missing = [
            (v, lbl)
            for v, lbl in want.options
            if v not in {o.get("value") for o in have.get("options") or []}
        ]
        if hs_type != "enumeration" or not missing or want.must_exist_only:
            self._plan("property", label, "unchanged")
            return
        self._plan("property", label, "update", "add options " + ", ".join(v for v, _ in missing))
        if not self.dry_run:
            self._add_options(want, have, missing)

    def _create_property(self, want: Wanted) -> None:
        body = want.create_body(self.options.property_group)
        try:
            self._call(
                "properties.core",
                "create",
                want.object_type,
                body,
                what=f"create property {want.name}",
            )
        except HubSpotError as exc:
            if exc.status != 409:
                raise
            # Created meanwhile (another run): the next run will diff it like any other.
            self.items[-1].detail += " (already existed: created concurrently)"

    def _add_options(self, want: Wanted, have: dict[str, Any], missing: list) -> None:
        kept = [
            {k: o[k] for k in ("label", "value", "hidden", "displayOrder", "description") if k in o}
            for o in have.get("options") or []
        ]
        start = max((o.get("displayOrder") or 0 for o in kept), default=-1) + 1
        added = [
            {"label": lbl, "value": v, "hidden": False, "displayOrder": start + i}
            for i, (v, lbl) in enumerate(missing)
        ]
        self._call(
            "properties.core",
            "update",
            want.object_type,
            want.name,
            {"options": kept + added},
            what=f"add options to {want.name}",
        )

    # ---- lists -----------------------------------------------------------------------------

    def _list(self, spec: ListSpec, existing: dict[str, Any] | None) -> None:
        branch = list_filter_branch(self.mapping, spec)
        if existing is None:
            self._plan("list", spec.name, "create", "DYNAMIC, " + _describe(spec))
            if not self.dry_run:
                body = {
                    "name": spec.name,
                    "objectTypeId": CONTACT_OBJECT_TYPE_ID,
                    "processingType": "DYNAMIC",
                    "filterBranch": branch,
                }
                self._call(
                    "lists", "create", body, what=f"create list {spec.name!r}", scope=LISTS_SCOPE
                )
            return
        if existing.get("processingType") != "DYNAMIC":
            self._plan(
                "list",
                spec.name,
                "drift",
                f"exists as a {existing.get('processingType')} "
                "list; only a DYNAMIC list keeps itself up to date; left unchanged",
            )
            return
        existing = self._list_definition(str(existing["listId"]))
        if branch_meaning(existing.get("filterBranch")) == branch_meaning(branch):
            self._plan("list", spec.name, "unchanged")
            return
        # The mapping owns these lists' definitions: bring the filters back in line.
        self._plan("list", spec.name, "update", "filters set to " + _describe(spec))
        if not self.dry_run:
            self._call(
                "lists",
                "update_list_filters",
                str(existing["listId"]),
                {"filterBranch": branch},
                what=f"update filters of list {spec.name!r}",
                scope=LISTS_SCOPE,
            )

    def _lists_by_name(self) -> dict[str, dict[str, Any]]:
        """Every contact list, by name, from the lists search paged with an empty query.

        Looking a list up by name in a URL path would put names like "Suppressed / ads
        audience" through an encoded slash, which HubSpot does not document and common front
        servers reject; a 404 there would make us create a list that exists. The search takes
        the name nowhere near a path, and one page holds up to 500 lists.
        """
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            body = {
                "query": "",
                "offset": offset,
                "count": LIST_SEARCH_PAGE,
                "additionalProperties": [],
            }
            data = (
                self._call("lists", "do_search", body, what="search lists", scope="crm.lists.read")
                or {}
            )
            for item in data.get("lists") or []:
                if item.get("objectTypeId") == CONTACT_OBJECT_TYPE_ID and item.get("name"):
                    found.setdefault(item["name"], item)
            next_offset = data.get("offset")
            if not data.get("hasMore") or not isinstance(next_offset, int) or next_offset <= offset:
                return found
            offset = next_offset

    def _list_definition(self, list_id: str) -> dict[str, Any]:
        """A list with its filters (search results carry no filter definitions)."""
        data = self._call(
            "lists",
            "get_by_id",
            list_id,
            include_filters="true",
            what=f"read list {list_id}",
            scope="crm.lists.read",
        )
        return (data or {}).get("list") or {}


def _named(found: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The list with exactly this name; failing that one whose name differs only in case
    (HubSpot's own lookup by name ignores case, so that list is the one the mapping means)."""
    if name in found:
        return found[name]
    folded = name.casefold()
    return next((item for key, item in found.items() if key.casefold() == folded), None)


def _describe(spec: ListSpec) -> str:
    text = "status is any of " + ", ".join(s.value for s in spec.statuses)
    if spec.suppression_reasons:
        text += "; reason is any of " + ", ".join(spec.suppression_reasons)
    return text


def offline_plan(mapping: Mapping, options: HubSpotOptions) -> list[PlanItem]:
    """What `provision` would do in a portal that has none of it, from the mapping alone (no
    credentials, no call): the same items and wording `Provisioner` reports for a fresh portal."""
    items: list[PlanItem] = []
    wanted = wanted_properties(mapping, options)
    for object_type in dict.fromkeys(w.object_type for w in wanted):
        name = f"{object_type}.{options.property_group}"
        items.append(PlanItem("group", name, "create", options.property_group_label))
        for want in (w for w in wanted if w.object_type == object_type):
            label = f"{want.object_type}.{want.name}"
            if want.must_exist_only:
                detail = "read-only property the mapping reads; must exist"
                items.append(PlanItem("property", label, "check", detail))
            else:
                items.append(PlanItem("property", label, "create", FIELD_TYPES[want.type][0]))
    for spec in mapping.lists:
        items.append(PlanItem("list", spec.name, "create", "DYNAMIC, " + _describe(spec)))
    return items
