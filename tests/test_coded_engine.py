"""The coded engine against the object engine (the reference): the same random streams and
policies must give the same final states and the same ledgers once decoded."""

from __future__ import annotations

import random
from datetime import timedelta
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_elasticity.core.coded import engine as coded
from crm_elasticity.core.coded.codes import NO_TIME, Names, coded_policies, to_us
from crm_elasticity.core.coded.decode import Texts, contact_state, decisions, stored_names
from crm_elasticity.core.engine import advance_owned, apply_owned
from crm_elasticity.core.models import Decision, Event
from crm_elasticity.core.policy import Decay, Policy
from crm_elasticity.core.sqlite_rows import decision_from_row, decision_row
from tests.experiments.helpers import mapping
from tests.helpers import T0

CONTACTS = ["c0", "c1", "c2", "c3"]


def as_stored(d: Decision) -> Decision:
    """A decision as the text ledger hands it out: through its row and back."""
    return decision_from_row(decision_row(d))


KINDS = [
    "open",
    "click",
    "high_intent_visit",
    "send",
    "send",
    "send",
    "send",
    "unsubscribe",
    "hard_bounce",
    "spam_complaint",
    "resubscribe",
    "enroll",
    "form_submit",
]
SEGMENTS = """
segments:
  - name: dach
    where: {country: [DE]}
    policy: {threshold: 30, decay: {factor: 0.8, floor: 5}, max_unanswered_sends: 2}
"""
CAPPED = "\neligibility:\n  frequency_cap: {max_sends: 1, window_days: 30}\n"


@cache
def program_policy(name: str) -> Policy:
    """A mapping's policy with its program: experiments and holdout, plus a frequency cap or
    a segment whose numbers differ."""
    extra = {"plain": "", "capped": CAPPED, "segmented": SEGMENTS}[name]
    return mapping(extra).policy


policies = st.one_of(
    st.sampled_from(["plain", "capped", "segmented"]).map(program_policy),
    st.builds(
        lambda threshold, sends, dormant, cooling, steps, wait, cycles, factor, floor, after, handoff: (  # noqa: E501
            Policy(
                points={"open": 5, "click": 10, "high_intent_visit": 15, "form_submit": 0},
                threshold=threshold,
                max_unanswered_sends=sends,
                dormant_after_days=dormant,
                cooling_days=cooling,
                reactivation_steps=steps,
                step_wait_days=wait,
                max_reactivation_cycles=cycles,
                handoff_on_engaged=handoff,
                version="prop",
                decay=Decay(factor=factor, floor=floor, after_days=after, every_days=7.5),
            )
        ),
        st.sampled_from([10, 20, 25]),
        st.integers(1, 4),
        st.sampled_from([20, 45.5, 90]),
        st.sampled_from([0, 10, 30]),
        st.integers(1, 3),
        st.sampled_from([3, 7]),
        st.integers(0, 2),
        st.sampled_from([0.5, 0.9, 1.0]),
        st.sampled_from([0, 1, 4]),
        st.sampled_from([0, 10, 30]),
        st.booleans(),
    ),
)

steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("event"),
            st.sampled_from(CONTACTS),
            st.sampled_from(KINDS),
            st.floats(0, 300, allow_nan=False),
        ),
        st.tuples(st.just("tick"), st.just(""), st.just(""), st.floats(0, 300, allow_nan=False)),
    ),
    min_size=1,
    max_size=60,
)


def _segment_of(policy: Policy, contact: str) -> str | None:
    program = policy.program
    if program is None or len(program.policies) < 2:
        return None
    return "dach" if contact in ("c1", "c3") else None


def run_both(policy: Policy, ops, sort: bool):
    """Feed both engines the same operations (sorted by time, or as given: late events and
    ticks out of order), then advance both to a horizon after everything."""
    if sort:
        ops = sorted(ops, key=lambda op: op[3])
    names = Names()
    coded_by_segment = coded_policies(policy, names)
    program = policy.program
    object_states: dict = {}
    object_decisions: list = []
    coded_states: dict[int, coded.CodedState] = {}
    rows: list = []
    index = {cid: i for i, cid in enumerate(CONTACTS)}
    known = policy.compiled.known
    for n, (what, cid, kind, day) in enumerate(ops):
        at = T0 + timedelta(days=day)
        if what == "tick":
            for state in object_states.values():
                advance_owned(state, at, _object_policy(policy, state.segment), object_decisions)
            for s in coded_states.values():
                coded.advance(s, to_us(at), rows)
            continue
        if kind not in known:
            continue
        segment = _segment_of(policy, cid)
        event = Event(event_id=f"e{n}", contact_id=cid, type=kind, occurred_at=at)
        state = object_states.get(cid)
        seg_policy = _object_policy(policy, segment if state is None else state.segment)
        object_states[cid] = apply_owned(state, event, seg_policy, object_decisions)
        p = coded_by_segment[segment if program is not None else None]
        s = coded_states.get(index[cid])
        type_code = p.type_codes[kind]
        coded_states[index[cid]] = coded.apply(
            s, index[cid], type_code, to_us(at), f"e{n}", p, rows, cid
        )
    horizon = T0 + timedelta(days=400)
    for state in object_states.values():
        advance_owned(state, horizon, _object_policy(policy, state.segment), object_decisions)
    for s in coded_states.values():
        coded.advance(s, to_us(horizon), rows)
    return object_states, object_decisions, coded_states, rows, names


def _object_policy(policy: Policy, segment: str | None) -> Policy:
    return policy.for_contact(segment)


@given(policies, steps, st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_coded_engine_matches_the_object_engine(policy, ops, sort):
    object_states, object_decisions, coded_states, rows, names = run_both(policy, ops, sort)
    texts = Texts.of(stored_names(names.texts))
    assert sorted(object_states) == sorted(CONTACTS[i] for i in coded_states)
    for i, s in coded_states.items():
        cid = CONTACTS[i]
        expected = object_states[cid]
        assert contact_state(cid, s) == expected
        mine = decisions(
            cid,
            [r for r in rows if r[0] == i],
            texts,
            policy.version,
            expected.experiments,
            expected.segment,
        )
        # (decoded as the text ledger hands them out: `explain` reads no other form)
        theirs = [as_stored(d) for d in object_decisions if d.contact_id == cid]
        assert mine == theirs
        # The order of the changes is what `explain` prints.
        assert [list(d.changes) for d in mine] == [list(d.changes) for d in theirs]


def _compare(policy, ops, sort):
    object_states, object_decisions, coded_states, rows, names = run_both(policy, ops, sort)
    texts = Texts.of(stored_names(names.texts))
    for i, s in coded_states.items():
        cid = CONTACTS[i]
        expected = object_states[cid]
        assert contact_state(cid, s) == expected
        mine = decisions(
            cid,
            [r for r in rows if r[0] == i],
            texts,
            policy.version,
            expected.experiments,
            expected.segment,
        )
        assert mine == [as_stored(d) for d in object_decisions if d.contact_id == cid]
    return rows


@pytest.mark.parametrize("name", ["plain", "capped", "segmented"])
def test_long_seeded_streams_agree_through_caps_steps_and_holdout(name):
    """Long streams reach what short generated ones rarely do: capped and delayed steps,
    several reactivation cycles, holdout contacts withheld."""
    policy = program_policy(name)
    rows = []
    for seed in range(60):
        rng = random.Random(seed)
        ops = [
            ("event", rng.choice(CONTACTS), rng.choice(KINDS), rng.uniform(0, 300))
            for _ in range(80)
        ]
        ops += [("tick", "", "", rng.uniform(0, 300)) for _ in range(5)]
        rows += _compare(policy, ops, sort=seed % 3 != 0)
    assert sum(1 for row in rows if row[12] >= 0) > 50  # reactivation steps decided
    if name == "capped":
        assert any(row[13] != NO_TIME for row in rows)  # a step the cap held back
