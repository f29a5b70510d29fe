"""The rules of `core.engine` on integer-coded state.

Same rules, same order of checks, same float arithmetic; only the representation differs:
statuses, reasons and event types are small ints, times are epoch microseconds, and a decision
is one flat tuple (`Row`) instead of a `Decision` with a dict of changes and a list of actions.
What changed is a bit mask; the new values of the changeable fields ride along, and the old
ones are the previous row's (`core.coded.decode` folds them back into `Decision`s).
"""

from __future__ import annotations

from crm_elasticity.core.coded.codes import (
    ACTIVE,
    COOLING_DONE,
    DECAY,
    DORMANT,
    ENGAGED,
    ENROLL,
    INACTIVITY,
    M_ALT_ADD,
    M_ALT_REMOVE,
    M_CYCLE,
    M_ENROLL_EXPERIMENTS,
    M_ENROLL_SEGMENT,
    M_HANDOFF,
    M_LAST,
    M_REASON,
    M_SCORE,
    M_STATUS,
    M_STATUS_AT,
    M_STEP,
    M_STEP_ACTION,
    M_UNANSWERED,
    NEXT_STEP,
    NO_RESPONSE,
    NO_RESPONSE_RULE,
    NO_TIME,
    NONE,
    REACTIVATED,
    RESUBSCRIBE,
    SEND,
    SUPPRESSED,
    TIME_RULES,
    CodedPolicy,
)
from crm_elasticity.core.experiments import HELD_OUT, HOLDOUT

Row = tuple
"""(contact, at, what, from_status, to_status, event_type, mask, last_engagement, unanswered,
step, cycle, reason, action, delayed_from, score, cause): one decision, all ints but the
score (a float) and the cause (the event id, None for a time rule). `what` is the (rule,
reason) code, `action` the code of a reactivation step's action, `delayed_from` its planned
time when a frequency cap held it back. Absent values are `NONE` (-1) or `NO_TIME`."""


class CodedState:
    """One contact's state: the fields of `ContactState`, coded."""

    __slots__ = (
        "contact",
        "status",
        "enrolled_at",
        "as_of",
        "status_changed_at",
        "stream_entered_at",
        "score",
        "base_score",
        "last_engagement",
        "decay_steps",
        "cycle",
        "step",
        "step_at",
        "unanswered",
        "reason",
        "experiments",
        "arm",
        "send_times",
        "policy",
    )

    def __init__(self, contact: int, at: int, policy: CodedPolicy) -> None:
        self.contact = contact
        self.status = ACTIVE
        self.enrolled_at = self.as_of = self.status_changed_at = self.stream_entered_at = at
        self.score = self.base_score = 0.0
        self.last_engagement = NO_TIME
        self.decay_steps = self.cycle = self.step = self.unanswered = self.reason = 0
        self.step_at: int | None = None
        self.experiments: dict[str, str] = {}
        self.arm = -1
        self.send_times: tuple[int, ...] = ()
        self.policy = policy


def due(s: CodedState) -> tuple[int, int] | None:
    """(due time, time rule code) of the earliest time rule, as `core.engine._due`. (`apply`
    inlines the due time for every status but dormant: a change here changes it there.)"""
    p = s.policy
    status = s.status
    last = s.last_engagement
    if status in (ACTIVE, REACTIVATED):
        anchor = s.stream_entered_at
        if last > anchor:
            anchor = last
        at, rule = anchor + p.dormant_after, INACTIVITY
    elif status == DORMANT:
        if s.step == 0:
            at, rule = s.status_changed_at + p.cooling, COOLING_DONE
            sends = s.cycle < p.max_cycles
        else:
            sends = s.step < p.steps
            rule = NEXT_STEP if sends else NO_RESPONSE_RULE
            at = s.step_at + p.step_wait  # type: ignore[operator]
        cap = p.cap_max
        if sends and cap and len(s.send_times) >= cap:
            free_at = s.send_times[-cap] + p.cap_window
            if free_at > at:
                at = free_at
    else:
        at = -1
    if last != NO_TIME and s.score > 0:
        decay_at = last + p.decay_offset(s.decay_steps)
        if at < 0 or decay_at <= at:
            return decay_at, DECAY
    return None if at < 0 else (at, rule)


def advance(s: CodedState, now: int, out: list[Row]) -> None:
    """Fire every time rule due at or before `now`, each at its own due time."""
    made = len(out)
    _fire_due(s, due(s), now, out)
    if len(out) > made and now > s.as_of:
        s.as_of = now


def _fire_due(s: CodedState, next_rule: tuple[int, int] | None, now: int, out: list) -> None:
    while next_rule is not None and next_rule[0] <= now:
        s.as_of = next_rule[0]
        _fire(s, next_rule[0], next_rule[1], out)
        next_rule = due(s)


def apply(
    s: CodedState | None,
    contact: int,
    kind: int,
    at: int,
    cause: str,
    p: CodedPolicy,
    out: list,
    contact_id: str = "",
) -> CodedState:
    """One event for a contact, as `core.engine.apply_owned`. An unknown contact (`s` None)
    enrolls at the event's time under `p` (its segment's policy); `contact_id` is what its
    experiment assignments hash."""
    decided = False
    """Whether a row was made: the contact's clock then moves to the event's time."""
    if s is None:
        s = new_contact(contact, contact_id, at, kind, cause, p, out)
        if kind == ENROLL:
            return s
        decided = True
    elif kind == ENROLL:
        return s
    p = s.policy
    status = s.status
    if status == DORMANT:
        next_rule = due(s)
        if next_rule is not None and next_rule[0] <= at:
            made = len(out)
            _fire_due(s, next_rule, at, out)
            decided = decided or len(out) > made
    else:
        # `due` inlined for the statuses most events meet (one call and one tuple an event
        # less): only the due time, the rule is asked of `due` when one fires.
        last = s.last_engagement
        due_at = None
        if status in (ACTIVE, REACTIVATED):
            anchor = s.stream_entered_at
            if last > anchor:
                anchor = last
            due_at = anchor + p.dormant_after
            if due_at < 0:
                due_at = None
        if last != NO_TIME and s.score > 0:
            steps = s.decay_steps
            decay_at = last + (p.decay_offsets[steps] if steps < 64 else p.decay_offset(steps))
            if due_at is None or decay_at <= due_at:
                due_at = decay_at
        if due_at is not None and due_at <= at:
            made = len(out)
            _fire_due(s, due(s), at, out)
            decided = decided or len(out) > made
    occurred = at
    as_of = s.as_of
    late = at <= as_of
    if late:
        at = as_of  # a late event cannot rewind time rules already fired
    before = s.status
    mask = 0
    if kind == SEND:
        sent = s.unanswered + 1
        s.unanswered = sent
        mask = M_UNANSWERED
        what = p.what_send
        if before in (ACTIVE, REACTIVATED) and sent >= p.max_unanswered:
            mask |= _go_dormant(s, at)
            what = p.what_unanswered
        cap = p.cap_max
        if cap:
            # Only the latest `cap` sends can hold a step back.
            s.send_times = tuple(sorted((*s.send_times, occurred))[-cap:])
    elif kind < RESUBSCRIBE:  # unsubscribe, hard_bounce, spam_complaint: the reason's code
        current = s.reason
        if before == SUPPRESSED and current > NO_RESPONSE:
            # The latest compliance reason replaces the earlier one; status and clock stay.
            if current == kind:
                what = p.what_already
            else:
                s.reason = kind
                mask = M_REASON
                what = p.what_replaced
        else:
            if current == NO_RESPONSE:
                mask = M_ALT_REMOVE
            mask |= _suppress(s, at, kind)
            what = p.what_exit[kind]
    elif kind == RESUBSCRIBE:
        if before == SUPPRESSED and s.reason > NO_RESPONSE:
            mask = _set_status(s, ACTIVE, at) | M_REASON
            s.reason = 0
            if s.unanswered:
                s.unanswered = 0
                mask |= M_UNANSWERED
            s.stream_entered_at = at
        what = p.what_resubscribed
    else:
        mask, what = _engage(s, kind, occurred, at, p)
    if mask:
        out.append(
            (
                contact,
                at,
                what,
                before,
                s.status,
                kind,
                mask,
                s.last_engagement,
                s.unanswered,
                s.step,
                s.cycle,
                s.reason,
                NONE,
                NO_TIME,
                s.score,
                cause,
            )
        )
        decided = True
    if decided and not late:
        s.as_of = at
    return s


def new_contact(
    contact: int, contact_id: str, at: int, kind: int, cause: str, p: CodedPolicy, out: list
) -> CodedState:
    """An unknown contact enrolls at this event's time (with its program's assignments)."""
    s = CodedState(contact, at, p)
    mask = M_STATUS
    program = p.program
    if program is not None:
        s.arm = p.arm(program.assign(contact_id))
        s.experiments = p.arm_dicts[s.arm] if s.arm >= 0 else {}
        mask |= M_ENROLL_EXPERIMENTS
        if program.segment is not None:
            mask |= M_ENROLL_SEGMENT
    out.append(
        (
            contact,
            at,
            p.what_enrolled,
            NONE,
            ACTIVE,
            kind,
            mask,
            NO_TIME,
            0,
            0,
            0,
            0,
            NONE,
            NO_TIME,
            0.0,
            cause,
        )
    )
    return s


def _set_status(s: CodedState, status: int, at: int) -> int:
    mask = 0
    if s.status != status:
        s.status = status
        mask = M_STATUS
    if s.status_changed_at != at:
        s.status_changed_at = at
        mask |= M_STATUS_AT
    return mask


def _engage(s: CodedState, kind: int, occurred: int, at: int, p: CodedPolicy) -> tuple[int, int]:
    mask = 0
    old = s.score
    score = old + p.points[kind]
    if score != old:
        s.score = score
        mask = M_SCORE
    last = s.last_engagement
    newer = occurred > last  # (NO_TIME is before every time)
    if newer:
        s.last_engagement = occurred
        mask |= M_LAST
    if newer or score != old:  # a stale engagement worth no points restarts no decay
        s.base_score = score
        s.decay_steps = 0
    if s.unanswered:
        s.unanswered = 0
        mask |= M_UNANSWERED
    status = s.status
    if status in (ACTIVE, REACTIVATED) and score >= p.threshold:
        mask |= _set_status(s, ENGAGED, at)
        if p.handoff:
            mask |= M_HANDOFF
        return mask, p.what_engaged
    if status == DORMANT:
        mask |= _set_status(s, REACTIVATED, at)
        if s.step:
            s.step = 0
            mask |= M_STEP
        s.step_at = None
        return mask | _comeback_handoff(s, score, at, p), p.what_from_dormant
    if status == SUPPRESSED and s.reason == NO_RESPONSE:
        mask |= _set_status(s, REACTIVATED, at) | M_REASON | M_ALT_REMOVE
        s.reason = 0
        return mask | _comeback_handoff(s, score, at, p), p.what_from_alternate
    return mask, p.what_plain[kind]


def _comeback_handoff(s: CodedState, score: float, at: int, p: CodedPolicy) -> int:
    if score >= p.threshold:
        mask = _set_status(s, ENGAGED, at)
        return mask | M_HANDOFF if p.handoff else mask
    return 0


def _go_dormant(s: CodedState, at: int) -> int:
    mask = _set_status(s, DORMANT, at)
    if s.step:
        s.step = 0
        mask |= M_STEP
    s.step_at = None
    return mask


def _suppress(s: CodedState, at: int, reason: int) -> int:
    mask = _set_status(s, SUPPRESSED, at)
    if s.reason != reason:
        s.reason = reason
        mask |= M_REASON
    if s.step:
        s.step = 0
        mask |= M_STEP
    s.step_at = None
    return mask


def _fire(s: CodedState, at: int, rule: int, out: list) -> None:
    p = s.policy
    before = s.status
    action, delayed = NONE, NO_TIME
    if rule == DECAY:
        s.decay_steps += 1
        score = round(s.base_score * p.decay_factor**s.decay_steps, 4)
        if score < p.decay_floor:
            score = 0.0
        mask = 0
        if s.score != score:
            s.score = score
            mask = M_SCORE
        what = p.what_decayed
        if s.status == ENGAGED and s.score < p.threshold:
            mask |= _set_status(s, ACTIVE, at)
            what = p.what_decayed_below
    elif rule == INACTIVITY:
        mask = _go_dormant(s, at)
        what = p.what_inactivity
    elif rule == COOLING_DONE and s.cycle >= p.max_cycles:
        mask = _suppress(s, at, NO_RESPONSE) | M_ALT_ADD
        what = p.what_exhausted
    elif rule in (COOLING_DONE, NEXT_STEP):
        step = s.step
        mask = M_STEP | M_STEP_ACTION
        if step == 0:
            planned = s.status_changed_at + p.cooling
            s.cycle += 1
            mask |= M_CYCLE
        else:
            planned = s.step_at + p.step_wait  # type: ignore[operator]
        s.step = step + 1
        s.step_at = at
        action = _step_action(s, p)
        if at > planned:
            delayed = planned
        what = p.what_step[(TIME_RULES[rule], step + 1)]
    else:  # no_response after the last step
        mask = _suppress(s, at, NO_RESPONSE) | M_ALT_ADD
        what = p.what_no_response
    if mask:
        out.append(
            (
                s.contact,
                at,
                what,
                before,
                s.status,
                NONE,
                mask,
                s.last_engagement,
                s.unanswered,
                s.step,
                s.cycle,
                s.reason,
                action,
                delayed,
                s.score,
                None,
            )
        )


def _step_action(s: CodedState, p: CodedPolicy) -> int:
    """The code of the send a reactivation step triggers (or withholds, for a holdout
    contact): one per (assignment, step, cycle), computed once."""
    key = (s.arm, s.step, s.cycle)
    code = p.step_actions.get(key)
    if code is None:
        program = p.program
        if program is None:
            kind, detail = "reactivation_step_due", {"step": s.step, "cycle": s.cycle}
        else:
            view = _StepView(s)
            detail = program.step_detail(view, s.step)
            held = s.experiments.get(HOLDOUT) == HELD_OUT
            kind = "reactivation_step_withheld" if held else "reactivation_step_due"
        code = p.step_actions[key] = p.step_action(kind, detail)
    return code


class _StepView:
    """What `ProgramRules.step_detail` reads from a contact."""

    __slots__ = ("experiments", "reactivation_cycle")

    def __init__(self, s: CodedState) -> None:
        self.experiments = s.experiments
        self.reactivation_cycle = s.cycle
