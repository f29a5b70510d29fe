"""The pipeline changes states in place only when it owns them, and pauses the cyclic
collector only while a batch is decided."""

from __future__ import annotations

import gc
import threading

from crm_elasticity.core.engine import advance, apply_event
from crm_elasticity.core.gcpause import cyclic_gc_paused
from crm_elasticity.core.pipeline import Pipeline
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.helpers import T0, days


def test_states_a_caller_passes_are_not_changed(ev, policy):
    pipeline = Pipeline(SQLiteStore(":memory:"), policy)
    given, _ = apply_event(None, ev("enroll", 0), policy)
    before = given.copy()
    applied = pipeline.prepare_events([ev("open", 1), ev("send", 2)], states={"c1": given})
    assert given == before
    assert applied.changed["c1"] is not given
    assert applied.changed["c1"].engagement_score == 5.0
    ticked = pipeline.prepare_tick(["c1"], T0 + days(400), states={"c1": given})
    assert given == before and ticked.changed["c1"].campaign_status != before.campaign_status


def test_the_pure_engine_leaves_its_input_alone(ev, policy):
    state, _ = apply_event(None, ev("open", 0), policy)
    before = state.copy()
    apply_event(state, ev("click", 1), policy)
    advance(state, T0 + days(400), policy)
    assert state == before


def test_the_collector_is_paused_while_any_batch_runs_and_restored_after():
    assert gc.isenabled()
    inside = threading.Event()
    release = threading.Event()

    def other_batch():
        with cyclic_gc_paused():
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=other_batch)
    with cyclic_gc_paused():
        assert not gc.isenabled()
        worker.start()
        assert inside.wait(5)
    assert not gc.isenabled(), "the other batch is still running"
    release.set()
    worker.join(5)
    assert gc.isenabled()


def test_a_failing_batch_restores_the_collector():
    try:
        with cyclic_gc_paused():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert gc.isenabled()
