"""Withheld reactivation steps keep the time-rule invariants: the same outcome however often
the scheduler runs, and a second tick at the same time decides nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import yaml

from crm_elasticity.core.mapping import Mapping, parse_mapping
from crm_elasticity.core.models import Event
from crm_elasticity.core.pipeline import Pipeline
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.helpers import T0


def mapping() -> Mapping:
    data = yaml.safe_load(Path("mappings/hubspot.yaml").read_text())
    data["eligibility"] = {"consent_property": "consent", "consent_means": "opt_in"}
    return parse_mapping(yaml.safe_dump(data).encode(), "governed.yaml")


def run(tick_every: timedelta | None, consent_from: datetime) -> tuple[list, object]:
    store = SQLiteStore(":memory:")
    properties: dict[str, dict] = {"c": {"consent": None}}
    pipeline = Pipeline(store, mapping().policy, properties=properties)
    pipeline.process([Event(event_id="e", contact_id="c", type="enroll", occurred_at=T0)])
    end = T0 + timedelta(days=200)
    times = []
    at = T0
    while tick_every is not None and at < end:
        at += tick_every
        times.append(at)
    times.append(end)
    for now in times:
        # Consent arrives at `consent_from`; a tick only knows what the CRM says at its time.
        properties["c"] = {"consent": "true" if now >= consent_from else None}
        pipeline.tick(now)
    assert pipeline.tick(end).decisions == 0
    ledger = [(d.at, d.rule, d.reason) for d in store.ledger_for("c")]
    return ledger, store.get_contacts(["c"])["c"]


def test_withheld_steps_do_not_depend_on_how_often_the_scheduler_runs():
    never = T0 + timedelta(days=1000)
    daily, state_daily = run(timedelta(days=1), never)
    hourly, state_hourly = run(timedelta(hours=6), never)
    once, state_once = run(None, never)
    assert daily == hourly == once
    assert state_daily.campaign_status.value == "Dormant"
    assert state_daily.reactivation_step == state_hourly.reactivation_step == 0
    assert state_once.reactivation_step == 0
    assert [reason for _, _, reason in daily].count("no_consent") >= 2


def test_a_step_withheld_goes_out_at_its_next_asking_once_consent_arrives():
    consent_at = T0 + timedelta(days=125)  # dormant at 90, step 1 asked at 120, then 127
    ledger, state = run(timedelta(days=1), consent_at)
    asked = [(at, reason) for at, rule, reason in ledger if rule.startswith("time:cooling")]
    assert asked[0] == (T0 + timedelta(days=120), "no_consent")
    assert asked[1] == (T0 + timedelta(days=127), "reactivation_step_1")
