"""Search filters for "whose time rules can be due" and "whose signals moved".

Both are supersets the engine narrows down: a contact found here but not due costs a slot in
a 200-record search page, a contact missed here would be a rule that never fires. So each
group below is derived from the engine's due times (`core.engine.next_due`) with the CRM's
copy of the canonical fields.
"""

from __future__ import annotations

from datetime import datetime

from crm_elasticity.connectors.hubspot.config import HubSpotOptions
from crm_elasticity.connectors.hubspot.search import Group, flt
from crm_elasticity.connectors.hubspot.values import epoch_ms
from crm_elasticity.core.eligibility import earliest_due
from crm_elasticity.core.mapping import Mapping, Signal
from crm_elasticity.core.models import Status

IN_STREAM = [Status.ACTIVE.value.lower(), Status.REACTIVATED.value.lower()]
DORMANT = Status.DORMANT.value.lower()

KNOWN_DATETIME_PROPERTIES = frozenset(
    {
        "hs_email_last_open_date",
        "hs_email_last_click_date",
        "hs_email_last_send_date",
        "hs_email_last_reply_date",
        "hs_analytics_last_visit_timestamp",
        "hs_analytics_last_timestamp",
        "hs_sales_email_last_opened",
        "hs_sales_email_last_clicked",
        "hs_sales_email_last_replied",
        "hs_last_sales_activity_timestamp",
        "recent_conversion_date",
        "notes_last_contacted",
    }
)


def due_groups(mapping: Mapping, now: datetime) -> list[Group]:
    p = mapping.property_of
    c = earliest_due(mapping).compiled  # segments may fall due sooner than the defaults
    status, last, changed = p("campaign_status"), p("last_engagement_date"), p("status_changed_at")
    step = p("reactivation_step")
    silent_since = epoch_ms(now - c.dormant_after)
    groups: list[Group] = [
        # Active/Reactivated, silent for dormant_after since the last engagement ...
        [flt(status, "IN", values=IN_STREAM), flt(last, "LTE", silent_since)],
        # ... or, never engaged, since they entered the stream.
        [
            flt(status, "IN", values=IN_STREAM),
            flt(last, "NOT_HAS_PROPERTY"),
            flt(changed, "LTE", silent_since),
        ],
        # A score to decay: the first decay is due decay_after past the last engagement.
        [flt(p("engagement_score"), "GT", 0), flt(last, "LTE", epoch_ms(now - c.decay_after))],
        # Dormant with no step yet recorded: cooling over.
        [
            flt(status, "EQ", DORMANT),
            flt(step, "NOT_HAS_PROPERTY"),
            flt(changed, "LTE", epoch_ms(now - c.cooling)),
        ],
    ]
    # Dormant at step k: the next step (or no_response) is due cooling + k waits after the
    # status changed.
    for k in range(c.steps + 1):
        due_before = now - c.cooling - k * c.step_wait
        groups.append(
            [
                flt(status, "EQ", DORMANT),
                flt(step, "EQ", k),
                flt(changed, "LTE", epoch_ms(due_before)),
            ]
        )
    return groups


def engaged_groups(
    mapping: Mapping, options: HubSpotOptions, since: datetime | None, datetimes: set[str]
) -> list[Group]:
    """Contacts whose signal properties may have moved since `since` (None: ever set)."""
    groups: list[Group] = []
    for signal in mapping.signals:
        groups.append(_signal_group(signal, options, since, datetimes))
    return groups


def _signal_group(
    signal: Signal, options: HubSpotOptions, since: datetime | None, datetimes: set[str]
) -> Group:
    prop = signal.property
    present = _present(signal)
    if since is None:
        return [present]
    after = epoch_ms(since)
    if prop in datetimes:
        return [flt(prop, "GT", after)]
    # A non-date property has no "changed at"; its companion timestamp (or, failing that, the
    # contact's last modification) says when it may have moved.
    moved_at = options.signal_timestamps.get(prop, "lastmodifieddate")
    return [flt(moved_at, "GT", after), present]


def _present(signal: Signal) -> dict:
    if signal.values:
        values = sorted({v.lower() for v in signal.values})
        return (
            flt(signal.property, "EQ", values[0])
            if len(values) == 1
            else flt(signal.property, "IN", values=values)
        )
    return flt(signal.property, "HAS_PROPERTY")
