"""Between HubSpot's property strings and canonical Python values, in both directions."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

from crm_elasticity.connectors.base import CrmRecord
from crm_elasticity.connectors.instants import parse_instant
from crm_elasticity.core.mapping import FieldSpec, Mapping, Signal
from crm_elasticity.core.models import Status

_STATUS_BY_LOWER = {s.value.lower(): s.value for s in Status}


def decode(spec: FieldSpec, raw: str | None) -> Any:
    """A HubSpot property value as the canonical field's Python value (None when unset)."""
    if raw is None or raw == "":
        return None
    if spec.type in ("datetime", "date"):
        return parse_instant(raw)
    if spec.type == "number":
        try:
            number = float(raw)
        except ValueError:
            return None
        return int(number) if number.is_integer() else number
    if spec.type == "bool":
        return raw.strip().lower() == "true"
    text = raw.strip()
    # Someone may have provisioned lowercase option values; the engine speaks `Active`.
    return _STATUS_BY_LOWER.get(text.lower(), text)


def encode(spec: FieldSpec, value: Any) -> str:
    """A canonical value as HubSpot accepts it; '' clears the property."""
    if value is None:
        return ""
    if spec.type == "date":
        day = utc_date(value)
        if day is not None:
            return midnight_ms(day)
    if isinstance(value, datetime):
        return iso_ms(value)
    if spec.type in ("datetime", "date") and isinstance(value, str):
        parsed = parse_instant(value)
        return iso_ms(parsed) if parsed else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 6)).removesuffix(".0")
    text = str(getattr(value, "value", value))
    # Option values are provisioned lowercase (search IN filters only match lowercase).
    return text.lower() if spec.type == "enumeration" else text


def encode_raw(value: Any) -> str:
    """An experiment variant or holdout flag: enumeration option names and a checkbox."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def iso_ms(value: datetime) -> str:
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def utc_date(value: Any) -> date | None:
    """The UTC calendar date of an instant (a naive one is UTC), a date, or a string of one."""
    if isinstance(value, str):
        value = parse_instant(value)
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).date()
    return value if isinstance(value, date) else None


def midnight_ms(day: date) -> str:
    """A HubSpot `date` value: epoch milliseconds at midnight UTC. HubSpot refuses any other
    time of day for a `date` property (a `datetime` one keeps its time)."""
    return epoch_ms(datetime.combine(day, time(0), tzinfo=UTC))


def epoch_ms(value: datetime) -> str:
    return str(round(value.timestamp() * 1000))


def normalize_signal(signal: Signal, value: Any) -> str | None:
    """One spelling per signal value on every path (webhooks send epoch ms, search answers
    ISO 8601), so the event id built from it is the same wherever it was seen."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip()
    if not signal.patterns and not signal.values:
        instant = parse_instant(text)
        if instant is not None:
            return epoch_ms(instant)
    return text


def record_from_properties(mapping: Mapping, contact_id: str, props: dict[str, Any]) -> CrmRecord:
    values = {
        name: decode(spec, props.get(spec.property))
        for name, spec in mapping.fields.items()
        if spec.property in props
    }
    signals: dict[str, str | None] = {}
    for signal in mapping.signals:
        if signal.property in props:
            signals[signal.property] = normalize_signal(signal, props.get(signal.property))
    owner = props.get("hubspot_owner_id") or None
    governed = governed_properties(mapping)
    return CrmRecord(
        contact_id=str(contact_id),
        values=values,
        signals=signals,
        owner_id=str(owner) if owner else None,
        created_at=parse_instant(props.get("createdate")),
        # Asked for by name, so an unset one is unset, not unknown.
        properties={name: props.get(name) for name in governed},
    )


def governed_properties(mapping: Mapping) -> tuple[str, ...]:
    """Consent, audience and segment properties: what eligibility decides by."""
    program = mapping.policy.program
    return program.governance.properties if program is not None else ()


def read_properties(mapping: Mapping, extra: list[str] | None = None) -> list[str]:
    """Every property a record needs, requested once per call."""
    names = [spec.property for spec in mapping.fields.values()]
    names += [s.property for s in mapping.signals]
    names += governed_properties(mapping)
    names += ["hubspot_owner_id", "createdate", *(extra or [])]
    return list(dict.fromkeys(names))
