"""What provisioning wants to exist, derived from the mapping (no I/O here)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from crm_elasticity.connectors.salesforce.config import SalesforceOptions
from crm_elasticity.core.mapping import ListSpec, Mapping
from crm_elasticity.core.models import Status, SuppressionReason

PICKLISTS = {
    "campaign_status": [s.value for s in Status],
    "suppression_reason": [r.value for r in SuppressionReason],
}
KINDS = {
    "datetime": "DateTime",
    "date": "Date",
    "number": "Number",
    "string": "Text",
    "bool": "Checkbox",
    "enumeration": "Picklist",
}
ACTIVITY = "Activity"
ACTIVITY_SOBJECTS = ("Task", "Event")
MANAGED = "Managed by crm-elasticity, program {program}. Edit the mapping file, not this field."


@dataclass(frozen=True)
class FieldWant:
    sobject: str
    name: str
    label: str
    kind: str
    values: tuple[str, ...] = ()
    scale: int = 0
    length: int = 0

    @property
    def full_name(self) -> str:
        return f"{self.sobject}.{self.name}"

    @property
    def permission_names(self) -> tuple[str, ...]:
        """Where field-level security for this field is granted and read back. Activity is
        where the Metadata API keeps a Task/Event custom field, but it is not an sObject:
        access is held per sObject, as `Task.<Field>` and `Event.<Field>`."""
        if self.sobject == ACTIVITY:
            return tuple(f"{sobject}.{self.name}" for sobject in ACTIVITY_SOBJECTS)
        return (self.full_name,)


@dataclass(frozen=True)
class ListViewWant:
    full_name: str
    label: str
    filters: tuple[tuple[str, str, str], ...]
    columns: tuple[str, ...] = field(default=())


def wanted_fields(mapping: Mapping, options: SalesforceOptions, sobject: str) -> list[FieldWant]:
    wants: list[FieldWant] = []
    for name, spec in mapping.fields.items():
        if spec.read_only:
            continue  # a vendor-native field: it exists already and we never write it
        kind = KINDS[spec.type]
        values = tuple(PICKLISTS.get(name, ()))
        if kind == "Picklist" and not values:
            kind = "Text"
        label = spec.label or spec.property.removesuffix("__c").replace("_", " ")
        wants.append(
            FieldWant(
                sobject,
                spec.property,
                label,
                kind,
                values,
                scale=2 if name == "engagement_score" else 0,
                length=255 if kind == "Text" else 0,
            )
        )
    for experiment in mapping.experiments:
        label = f"Elastic experiment: {experiment.name}"[:40]
        wants.append(FieldWant(sobject, experiment.property, label, "Text", length=80))
    if mapping.holdout and mapping.holdout.property:
        wants.append(FieldWant(sobject, mapping.holdout.property, "Elastic holdout", "Checkbox"))
    if mapping.handoff.enabled:
        # Tasks are Activities: the key that makes hand-offs exactly-once lives there.
        wants.append(
            FieldWant(
                ACTIVITY, options.handoff_key_field, "Elastic hand-off key", "Text", length=64
            )
        )
    unique: dict[str, FieldWant] = {}
    for want in wants:
        unique.setdefault(want.full_name, want)
    return list(unique.values())


def api_name(label: str) -> str:
    """A developer name: letters, digits, single underscores, starting with a letter."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")
    name = re.sub(r"_+", "_", name)
    if not name or not name[0].isalpha():
        name = f"Elastic_{name}"
    return name[:40].rstrip("_")


def wanted_list_views(mapping: Mapping, sobject: str) -> list[ListViewWant]:
    status = mapping.property_of("campaign_status")
    reason = mapping.property_of("suppression_reason")
    email = f"{sobject.upper()}.EMAIL"
    return [_list_view(spec, sobject, status, reason, email) for spec in mapping.lists]


def _list_view(spec: ListSpec, sobject: str, status: str, reason: str, email: str) -> ListViewWant:
    filters = [(status, "equals", ",".join(s.value for s in spec.statuses))]
    if spec.suppression_reasons:
        filters.append((reason, "equals", ",".join(spec.suppression_reasons)))
    columns = ("FULL_NAME", email, status, reason if spec.suppression_reasons else status)
    return ListViewWant(
        full_name=f"{sobject}.{api_name(spec.name)}",
        label=spec.name[:40],
        filters=tuple(filters),
        columns=tuple(dict.fromkeys(columns)),
    )
