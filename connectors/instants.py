"""Instants as the CRMs send them: HubSpot's epoch milliseconds, ISO 8601 from Salesforce and
HubSpot's v3 APIs. Read by each vendor's records and history, by `connectors.signals` and by
the CLI's `--since`/`--until`."""

from __future__ import annotations

from datetime import UTC, datetime

from crm_elasticity.core.models import instant_problem


def parse_instant(value: str | None) -> datetime | None:
    """Epoch milliseconds (HubSpot) or ISO 8601 (Salesforce, HubSpot v3), as aware UTC; None
    for no instant, or one outside the range an event time may take (`core.models`)."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    try:
        if text.isdigit():
            parsed = datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        return None  # past year 9999 or otherwise no instant: not a date, not a crash
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None if instant_problem(parsed) else parsed
