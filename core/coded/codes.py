"""Integer codes for statuses, suppression reasons, event types and (rule, reason) pairs, and
the policy numbers in microseconds.

Times are microseconds since the Unix epoch (UTC): a `datetime` holds microseconds, so every
comparison and every addition of a policy period gives exactly what the object engine's
datetime arithmetic gives.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_elasticity.core.models import COMPLIANCE_EVENTS, Reason, Rule, Status, SuppressionReason
from crm_elasticity.core.policy import Policy

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NO_TIME = -(1 << 63)
"""An absent time (a contact that never engaged): earlier than every time."""
NONE = -1
"""An absent code (no status before enrollment, no event type for a time rule, no action)."""
ONE_US = timedelta(microseconds=1)

STATUSES = (Status.ACTIVE, Status.ENGAGED, Status.DORMANT, Status.REACTIVATED, Status.SUPPRESSED)
ACTIVE, ENGAGED, DORMANT, REACTIVATED, SUPPRESSED = range(5)
STATUS_CODE = {status: code for code, status in enumerate(STATUSES)}

REASONS = (
    None,
    SuppressionReason.NO_RESPONSE,
    SuppressionReason.UNSUBSCRIBE,
    SuppressionReason.HARD_BOUNCE,
    SuppressionReason.SPAM_COMPLAINT,
)
"""Suppression reason codes; a compliance exit event's type code equals its reason's code."""
NO_RESPONSE = 1
REASON_CODE = {reason: code for code, reason in enumerate(REASONS)}

FIXED_TYPES = ("enroll", "send", "unsubscribe", "hard_bounce", "spam_complaint", "resubscribe")
ENROLL, SEND, UNSUBSCRIBE, HARD_BOUNCE, SPAM_COMPLAINT, RESUBSCRIBE = range(6)
FIRST_ENGAGEMENT = 6
assert set(FIXED_TYPES) >= COMPLIANCE_EVENTS

# Time rules, by code.
DECAY, INACTIVITY, COOLING_DONE, NEXT_STEP, NO_RESPONSE_RULE = range(5)
TIME_RULES = (
    Rule.TIME_DECAY,
    Rule.TIME_INACTIVITY,
    Rule.TIME_COOLING_DONE,
    Rule.TIME_NEXT_STEP,
    Rule.TIME_NO_RESPONSE,
)

# Bits of a decision's `mask`: which fields it changed, and which actions it carries.
M_STATUS = 1
"""campaign_status changed (from_status -> to_status)."""
M_STATUS_AT = 2
M_SCORE = 4
M_LAST = 8
M_UNANSWERED = 16
M_STEP = 32
M_CYCLE = 64
M_REASON = 128
M_HANDOFF = 512
M_ALT_REMOVE = 1024
M_ALT_ADD = 2048
M_STEP_ACTION = 4096
M_ENROLL_SEGMENT = 8192
M_ENROLL_EXPERIMENTS = 16384

CHANGE_ORDER = {
    "engagement": (
        "engagement_score",
        "last_engagement_date",
        "unanswered_sends",
        "campaign_status",
        "status_changed_at",
        "reactivation_step",
        "suppression_reason",
    ),
    "send": ("unanswered_sends", "campaign_status", "status_changed_at", "reactivation_step"),
    "exit": ("campaign_status", "status_changed_at", "suppression_reason", "reactivation_step"),
    "resubscribe": (
        "campaign_status",
        "status_changed_at",
        "suppression_reason",
        "unanswered_sends",
    ),
    "decay": ("engagement_score", "campaign_status", "status_changed_at"),
    "dormant": ("campaign_status", "status_changed_at", "reactivation_step"),
    "step": ("reactivation_cycle", "reactivation_step"),
}
"""The order in which each kind of decision records its changes (what `explain` prints)."""
FIELD_BIT = {
    "campaign_status": M_STATUS,
    "status_changed_at": M_STATUS_AT,
    "engagement_score": M_SCORE,
    "last_engagement_date": M_LAST,
    "unanswered_sends": M_UNANSWERED,
    "reactivation_step": M_STEP,
    "reactivation_cycle": M_CYCLE,
    "suppression_reason": M_REASON,
}


def to_us(value: datetime) -> int:
    return (value - EPOCH) // ONE_US


def from_us(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def _us(period: timedelta) -> int:
    return period // ONE_US


class Names:
    """Interned texts by code: (rule, reason) pairs, event types, experiment assignments and
    reactivation-step actions. Codes of the fixed parts depend only on the policy, so every
    shard of a run numbers them alike; interned texts are merged by text."""

    def __init__(self) -> None:
        self.texts: dict[str, list[str]] = {"what": [], "type": [], "arm": [], "action": []}
        self._codes: dict[str, dict[str, int]] = {k: {} for k in self.texts}

    def code(self, kind: str, text: str) -> int:
        codes = self._codes[kind]
        found = codes.get(text)
        if found is None:
            found = codes[text] = len(self.texts[kind])
            self.texts[kind].append(text)
        return found

    def what(self, rule: Rule, reason: str) -> int:
        """The code of a (rule, reason) pair; `reason` is a `Reason` or data (an event type, a
        suppression reason)."""
        return self.code("what", json.dumps([rule, reason]))


class CodedPolicy:
    """A policy's numbers in microseconds and codes, for one segment of a program."""

    __slots__ = (
        "policy",
        "points",
        "threshold",
        "max_unanswered",
        "dormant_after",
        "cooling",
        "steps",
        "step_wait",
        "max_cycles",
        "decay_factor",
        "decay_after",
        "decay_every",
        "decay_floor",
        "decay_offsets",
        "handoff",
        "program",
        "cap_max",
        "cap_window",
        "version",
        "segment",
        "names",
        "what_enrolled",
        "what_send",
        "what_unanswered",
        "what_exit",
        "what_already",
        "what_replaced",
        "what_resubscribed",
        "what_engaged",
        "what_from_dormant",
        "what_from_alternate",
        "what_plain",
        "what_decayed",
        "what_decayed_below",
        "what_inactivity",
        "what_exhausted",
        "what_step",
        "what_no_response",
        "type_codes",
        "arms",
        "arm_dicts",
        "step_actions",
    )

    def __init__(self, policy: Policy, names: Names) -> None:
        c = policy.compiled
        self.policy = policy
        self.names = names
        self.version = c.version
        types = list(FIXED_TYPES) + sorted(c.known - set(FIXED_TYPES))
        self.type_codes = {name: names.code("type", name) for name in types}
        assert [self.type_codes[t] for t in FIXED_TYPES] == list(range(6))
        # Points by type code (0 for a type the policy knows but gives no points).
        self.points = [c.points.get(name, 0.0) for name in types]
        self.threshold = c.threshold
        self.max_unanswered = c.max_unanswered_sends
        self.dormant_after = _us(c.dormant_after)
        self.cooling = _us(c.cooling)
        self.steps = c.steps
        self.step_wait = _us(c.step_wait)
        self.max_cycles = c.max_cycles
        self.decay_factor = c.decay_factor
        self.decay_after = _us(c.decay_after)
        self.decay_every = _us(c.decay_every)
        self.decay_floor = c.decay_floor
        self.decay_offsets = tuple(_us(c.decay_offset(k)) for k in range(64))
        self.handoff = c.handoff
        self.program = c.program
        self.cap_max = c.cap_max
        self.cap_window = _us(c.cap_window)
        self.segment = self.program.segment if self.program is not None else None
        what = names.what
        self.what_enrolled = what(Rule.ENROLL, Reason.ENROLLED)
        self.what_send = what(Rule.SEND, Reason.SENT)
        self.what_unanswered = what(Rule.SEND, Reason.UNANSWERED_SENDS)
        self.what_exit = [what(Rule.COMPLIANCE, r.value) if r else -1 for r in REASONS]
        self.what_already = what(Rule.COMPLIANCE, Reason.ALREADY_SUPPRESSED)
        self.what_replaced = what(Rule.COMPLIANCE, Reason.SUPPRESSION_REASON_REPLACED)
        self.what_resubscribed = what(Rule.COMPLIANCE, Reason.RESUBSCRIBED)
        self.what_engaged = what(Rule.ENGAGEMENT, Reason.SCORE_REACHED_THRESHOLD)
        self.what_from_dormant = what(Rule.ENGAGEMENT, Reason.REACTIVATED_FROM_DORMANT)
        self.what_from_alternate = what(Rule.ENGAGEMENT, Reason.REACTIVATED_FROM_ALTERNATE_CHANNEL)
        self.what_plain = [what(Rule.ENGAGEMENT, name) for name in types]
        self.what_decayed = what(Rule.TIME_DECAY, Reason.SCORE_DECAYED)
        self.what_decayed_below = what(Rule.TIME_DECAY, Reason.SCORE_DECAYED_BELOW_THRESHOLD)
        self.what_inactivity = what(Rule.TIME_INACTIVITY, Reason.INACTIVITY)
        self.what_exhausted = what(Rule.TIME_COOLING_DONE, Reason.REACTIVATION_CYCLES_EXHAUSTED)
        self.what_step = {
            (rule, n): what(rule, Reason.step(n))
            for rule in (Rule.TIME_COOLING_DONE, Rule.TIME_NEXT_STEP)
            for n in range(1, self.steps + 1)
        }
        self.what_no_response = what(Rule.TIME_NO_RESPONSE, Reason.NO_RESPONSE)
        self.arms: dict[tuple, int] = {}
        self.arm_dicts: dict[int, dict[str, str]] = {}
        """One dict per distinct assignment, shared by its contacts (never changed in place)."""
        self.step_actions: dict[tuple, int] = {}

    def decay_offset(self, steps: int) -> int:
        if steps < 64:
            return self.decay_offsets[steps]
        return self.decay_after + steps * self.decay_every

    def arm(self, experiments: dict[str, str]) -> int:
        if not experiments:
            return NONE
        key = tuple(experiments.items())  # a handful of assignments: encode each once
        code = self.arms.get(key)
        if code is None:
            code = self.arms[key] = self.names.code("arm", json.dumps(experiments))
            self.arm_dicts[code] = experiments
        return code

    def step_action(self, kind: str, detail: dict[str, Any]) -> int:
        return self.names.code("action", json.dumps([kind, detail]))


def coded_policies(policy: Policy, names: Names) -> dict[str | None, CodedPolicy]:
    """The base policy and one per segment of the mapping's program, sharing one `Names`."""
    program = policy.program
    policies = program.policies if program is not None and program.policies else {None: policy}
    return {name: CodedPolicy(p, names) for name, p in policies.items()}
