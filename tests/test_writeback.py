"""The pipeline returns what the CRM is owed with its decisions (`core.writeback`): the
runner persists it and does not work it out again."""

from __future__ import annotations

from pathlib import Path

from crm_elasticity.core.mapping import load_mapping
from crm_elasticity.core.pipeline import Pipeline
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.writeback import WriteBack

MAPPING = load_mapping(Path(__file__).resolve().parents[1] / "mappings" / "hubspot.yaml")


def test_a_batch_that_engages_a_contact_owes_its_fields_program_properties_and_a_task(ev):
    writeback = WriteBack.of(MAPPING)
    pipeline = Pipeline(SQLiteStore(":memory:"), MAPPING.policy, writeback=writeback)
    events = [ev("enroll", 0), ev("click", 1), ev("click", 2), ev("visit", 3)]
    applied = pipeline.prepare_events(events)
    [(cid, write)] = applied.writes.items()
    state = applied.changed[cid]
    assert write.fields["campaign_status"] is state.campaign_status
    assert set(write.fields) == set(writeback.fields)
    assert not any(MAPPING.fields[n].read_only for n in write.fields)
    assert set(write.properties) == {s.property for s in MAPPING.experiments} | (
        {MAPPING.holdout.property} if MAPPING.holdout and MAPPING.holdout.property else set()
    )
    assert [d.contact_id for d in applied.tasks] == [cid]
    assert any(a.kind == "handoff_task" for a in applied.tasks[0].actions)


def test_without_a_writeback_the_outcome_owes_nothing(ev, policy):
    applied = Pipeline(SQLiteStore(":memory:"), policy).prepare_events([ev("open", 0)])
    assert applied.changed and applied.writes == {} and applied.tasks == []
