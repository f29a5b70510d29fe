"""`simulate` on the coded path against the object pipeline: the same seed, the same run."""

from __future__ import annotations

import json
import sqlite3

import pytest

from crm_elasticity.core.explain import explain_contact
from crm_elasticity.core.report import render_report
from crm_elasticity.core.simulate import SimulationConfig, run_simulation
from tests.experiments.helpers import mapping


def _rows(path, sql):
    db = sqlite3.connect(path)
    try:
        return sorted(db.execute(sql).fetchall())
    finally:
        db.close()


@pytest.mark.parametrize("programmed", [False, True])
def test_coded_simulation_is_the_object_simulation(tmp_path, programmed):
    from crm_elasticity.core.policy import Policy

    points = {"open": 5, "click": 10, "high_intent_visit": 15, "form_submit": 12}
    policy = mapping().policy if programmed else Policy(version="sim", points=points)
    config = SimulationConfig(contacts=400, days=120, seed=3, batch_size=300)
    old = run_simulation(config, policy, tmp_path / "old.sqlite3", engine="object")
    new = run_simulation(config, policy, tmp_path / "new.sqlite3", engine="coded")
    assert new.daily == old.daily
    assert json.dumps(new.summary(), sort_keys=True) == json.dumps(old.summary(), sort_keys=True)
    assert new.summary()["transitions"].get("Dormant->Reactivated")  # the feedback loop ran
    if not programmed:
        assert new.summary()["events"].get("form_submit")
    for table in ("ledger_rollup", "contacts", "cursors"):
        sql = f"SELECT * FROM {table}"  # noqa: S608
        assert _rows(tmp_path / "new.sqlite3", sql) == _rows(tmp_path / "old.sqlite3", sql)
    for cid in ("c0000000", "c0000123", "c0000399"):
        assert explain_contact(tmp_path / "new.sqlite3", cid) == explain_contact(
            tmp_path / "old.sqlite3", cid
        )
    reports = [json.loads(render_report(tmp_path / f"{n}.sqlite3", "json")) for n in ("old", "new")]
    for report in reports:
        report.pop("store"), report.pop("generated_at")
    assert reports[0] == reports[1]
