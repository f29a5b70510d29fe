"""Rebuild engine state from what the CRM shows.

The store keeps a full snapshot of every contact we decided on; the CRM holds only the
canonical fields. When the CRM agrees with the snapshot, the snapshot is used as it is. When it
does not (someone edited a property by hand, or the contact predates the program), the CRM's
values win and the engine's own bookkeeping is re-derived as of `now`, reading each CRM value as
true at `now` so that no decay or step already applied is applied twice.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from crm_elasticity.core.models import CANONICAL_FIELDS, ContactState, Status, SuppressionReason
from crm_elasticity.core.policy import Policy


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b or a == b
    if isinstance(a, datetime) and isinstance(b, datetime):
        return abs((a - b).total_seconds()) < 1.0  # CRMs keep seconds or milliseconds
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), abs_tol=0.005)
    return str(a) == str(b)


def differing_fields(state: ContactState, values: dict[str, Any]) -> dict[str, Any]:
    """Canonical fields whose CRM value (when the CRM has the field) differs from the state's."""
    return {
        name: getattr(state, name)
        for name in CANONICAL_FIELDS
        if not _same(getattr(state, name), values.get(name))
    }


def decays_due(policy: Policy, last_engagement: datetime, at: datetime) -> int:
    c = policy.compiled
    elapsed = at - (last_engagement + c.decay_after)
    if elapsed.total_seconds() < 0:
        return 0
    return 1 + int(elapsed / c.decay_every)


def state_from_crm(
    contact_id: str,
    values: dict[str, Any],
    snapshot: ContactState | None,
    policy: Policy,
    now: datetime,
    created_at: datetime | None = None,
) -> ContactState | None:
    """The state to decide on, or None for a contact the program does not know yet."""
    status = values.get("campaign_status")
    if status is None or status == "":
        return snapshot
    if snapshot is not None and not differing_fields(snapshot, values):
        return snapshot
    state = snapshot.copy() if snapshot is not None else None
    status = Status(status)
    changed_at = values.get("status_changed_at") or (
        state.status_changed_at if state and state.campaign_status is status else now
    )
    if state is None:
        start = created_at or changed_at
        state = ContactState(contact_id, status, start, now, changed_at, start)
    state.campaign_status = status
    state.status_changed_at = changed_at
    state.as_of = max(state.as_of, now)
    state.last_engagement_date = values.get("last_engagement_date")
    state.reactivation_cycle = int(values.get("reactivation_cycle") or 0)
    state.unanswered_sends = int(values.get("unanswered_sends") or 0)
    state.reactivation_step = int(values.get("reactivation_step") or 0)
    reason = values.get("suppression_reason")
    state.suppression_reason = SuppressionReason(reason) if reason else None
    if status is Status.SUPPRESSED and state.suppression_reason is None:
        state.suppression_reason = SuppressionReason.NO_RESPONSE
    _rederive_score(state, float(values.get("engagement_score") or 0.0), policy, now)
    _rederive_step_time(state, policy)
    return state


def _rederive_score(state: ContactState, score: float, policy: Policy, now: datetime) -> None:
    state.engagement_score = score
    if score <= 0 or state.last_engagement_date is None:
        state.base_score, state.decay_steps = score, 0
        return
    steps = decays_due(policy, state.last_engagement_date, now)
    state.decay_steps = steps
    state.base_score = score / (policy.decay.factor**steps)


def _rederive_step_time(state: ContactState, policy: Policy) -> None:
    if state.campaign_status is not Status.DORMANT or state.reactivation_step == 0:
        state.reactivation_step_at = None
        return
    c = policy.compiled
    state.reactivation_step_at = (
        state.status_changed_at + c.cooling + (state.reactivation_step - 1) * c.step_wait
    )
