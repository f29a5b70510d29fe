"""Canonical values <-> Salesforce field values, for JSON (REST) and CSV (Bulk 2.0)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

from crm_elasticity.connectors.base import CrmRecord, WriteRequest
from crm_elasticity.connectors.instants import parse_instant
from crm_elasticity.core.mapping import Mapping

INTEGER_FIELDS = frozenset({"reactivation_cycle", "unanswered_sends", "reactivation_step"})

_SF_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)$")


def sf_datetime(value: datetime) -> str:
    """The form both the REST and the Bulk 2.0 APIs accept: UTC with milliseconds and Z."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def signal_text(value: Any) -> str | None:
    """One spelling per value on every path: SOQL JSON (`true`, `...+0000`) and outbound
    messages (`true`, `...Z`) must give the same text, or one open would count twice."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if text in ("true", "false"):
        return text
    if _SF_DATETIME.match(text):
        parsed = parse_instant(text)
        return sf_datetime(parsed) if parsed else text
    if re.fullmatch(r"-?\d+\.0+", text):
        return text.split(".")[0]
    return text


class Codec:
    """Turns one mapping's canonical fields into Salesforce field values and back."""

    def __init__(self, mapping: Mapping) -> None:
        self.mapping = mapping
        self.fields = mapping.fields
        self.by_property = {spec.property: name for name, spec in self.fields.items()}
        self.signal_properties = list(dict.fromkeys(s.property for s in mapping.signals))
        program = mapping.policy.program
        # Consent, audience and segment fields: what eligibility decides by.
        self.governed = program.governance.properties if program is not None else ()

    def select_list(self) -> list[str]:
        """Only what the program needs: mapped fields, signals, and what hand-offs need."""
        wanted = ["Id", "OwnerId", "CreatedDate"]
        wanted += [spec.property for spec in self.fields.values()]
        wanted += self.signal_properties
        wanted += self.governed
        return list(dict.fromkeys(wanted))

    def record(self, raw: dict[str, Any]) -> CrmRecord:
        values = {
            name: self.decode(name, raw[spec.property])
            for name, spec in self.fields.items()
            if spec.property in raw
        }
        signals = {p: signal_text(raw.get(p)) for p in self.signal_properties if p in raw}
        owner = raw.get("OwnerId")
        return CrmRecord(
            contact_id=raw["Id"],
            values=values,
            signals=signals,
            owner_id=owner,
            created_at=parse_instant(raw.get("CreatedDate")),
            properties={name: raw.get(name) for name in self.governed},
        )

    def decode(self, name: str, value: Any) -> Any:
        if value is None or value == "":
            return None
        kind = self.fields[name].type
        if kind in ("datetime", "date"):
            return parse_instant(str(value))
        if kind == "number":
            number = float(value)
            return int(number) if name in INTEGER_FIELDS else number
        if kind == "bool":
            return value if isinstance(value, bool) else str(value).lower() == "true"
        return str(value)

    def encode(self, name: str, value: Any) -> Any:
        """A JSON value for REST writes; None clears the field."""
        if value is None:
            return None
        if isinstance(value, datetime):
            return sf_datetime(value)
        if isinstance(value, date):
            return value.isoformat()
        if self.fields[name].type == "number":
            number = float(value)
            return int(number) if name in INTEGER_FIELDS else round(number, 2)
        return value.value if hasattr(value, "value") else value

    def fields_for(self, request: WriteRequest) -> dict[str, Any]:
        """A write request -> {Salesforce field: JSON value}: its writable canonical fields
        encoded, then its raw properties (experiment variants, holdout flag) as they are."""
        row = {
            self.fields[name].property: self.encode(name, value)
            for name, value in request.fields.items()
            if name in self.fields and not self.fields[name].read_only
        }
        row.update(request.raw_properties)
        return row
