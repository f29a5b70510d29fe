"""Consent and segments decide in the Lambda worker as they do in `sync`: events through the
webhook function, SQS and the worker, against the in-memory CRM."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from crm_elasticity.connectors.aws import handlers
from tests.aws.harness import SECRET, FakeContext, Stack, api_event
from tests.fakes.memory_crm import MAPPING_PATH
from tests.governance_helpers import withheld_for

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def governed(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    data = yaml.safe_load(MAPPING_PATH.read_text())
    data["eligibility"] = {"consent_property": "email_consent", "consent_means": "opt_in"}
    data["segments"] = [
        {"name": "fast-market", "where": {"country": "DE"}, "policy": {"dormant_after_days": 30}}
    ]
    path = tmp_path / "memory-governed.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("ELASTICITY_MAPPINGS", str(path))
    handlers.reset_container()
    return stack


def post(events: list[dict]) -> None:
    event = api_event("/webhooks/memory", json.dumps(events), {"x-memory-secret": SECRET})
    assert handlers.webhook(event, FakeContext())["statusCode"] == 202


def send(eid: str, cid: str, at: datetime) -> dict:
    return {"event_id": eid, "contact_id": cid, "type": "send", "occurred_at": at.isoformat()}


def test_the_worker_withholds_a_due_step_from_a_contact_without_consent(governed: Stack):
    changed = NOW - timedelta(days=33)
    for cid, consent in (("never", None), ("agreed", "true")):
        governed.crm.values[cid] = {
            "campaign_status": "Dormant",
            "status_changed_at": changed,
            "engagement_score": 0,
            "reactivation_cycle": 0,
            "reactivation_step": 0,
            "unanswered_sends": 3,
            "last_engagement_date": changed - timedelta(days=90),
        }
        governed.crm.properties[cid] = {"email_consent": consent}
    # A newsletter send lands after cooling is over: the due step is decided first.
    post(
        [
            send("s1", "never", NOW - timedelta(hours=1)),
            send("s2", "agreed", NOW - timedelta(hours=1)),
        ]
    )
    governed.poller.drain()
    assert governed.crm.values["never"]["reactivation_step"] == 0
    assert governed.crm.values["agreed"]["reactivation_step"] == 1
    assert len(withheld_for(governed.store.ledger_for("never"), "no_consent")) == 1


def test_a_new_contact_joins_its_segment_in_the_worker(governed: Stack):
    governed.crm.values["de"] = {}
    governed.crm.properties["de"] = {"country": "DE", "email_consent": "true"}
    post(
        [
            {
                "event_id": "o1",
                "contact_id": "de",
                "type": "open",
                "occurred_at": (NOW - timedelta(hours=2)).isoformat(),
            }
        ]
    )
    governed.poller.drain()
    state = governed.store.get_contacts(["de"])["de"]
    assert state.segment == "fast-market"


def competing_programs(directory: Path) -> tuple[Path, Path]:
    """A low-priority program (the memory mapping) and a high-priority one for leads."""
    base = yaml.safe_load(MAPPING_PATH.read_text())
    base.pop("holdout", None)
    low = {**base, "program": "newsletter"}
    low["eligibility"] = {"priority": 1, "competing": ["promo.yaml"]}
    high = {**base, "program": "promo"}
    high["eligibility"] = {
        "priority": 5,
        "audience": {"lifecycle": "lead"},
        "competing": ["newsletter.yaml"],
    }
    paths = directory / "newsletter.yaml", directory / "promo.yaml"
    for path, data in zip(paths, (low, high), strict=True):
        path.write_text(yaml.safe_dump(data))
    return paths


def test_the_worker_withholds_a_step_from_a_contact_a_higher_priority_program_takes(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    newsletter, _ = competing_programs(tmp_path)
    monkeypatch.setenv("ELASTICITY_MAPPINGS", str(newsletter))
    handlers.reset_container()
    changed = NOW - timedelta(days=33)
    for cid, lifecycle in (("lead", "lead"), ("customer", "customer")):
        stack.crm.values[cid] = {
            "campaign_status": "Dormant",
            "status_changed_at": changed,
            "engagement_score": 0,
            "reactivation_cycle": 0,
            "reactivation_step": 0,
            "unanswered_sends": 3,
            "last_engagement_date": changed - timedelta(days=90),
        }
        stack.crm.properties[cid] = {"lifecycle": lifecycle}
    post(
        [
            send("s1", "lead", NOW - timedelta(hours=1)),
            send("s2", "customer", NOW - timedelta(hours=1)),
        ]
    )
    stack.poller.drain()
    assert stack.crm.values["lead"]["reactivation_step"] == 0
    assert stack.crm.values["customer"]["reactivation_step"] == 1
    assert len(withheld_for(stack.store.ledger_for("lead"), "other_program:promo")) == 1
    assert not withheld_for(stack.store.ledger_for("customer"), "other_program:promo")


def test_a_stage_refuses_two_programs_of_one_vendor(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from crm_elasticity.connectors.aws.container import Container
    from crm_elasticity.connectors.base import ConnectorError

    paths = competing_programs(tmp_path)
    env = {"ELASTICITY_MAPPINGS": ",".join(str(p) for p in paths)}
    with pytest.raises(ConnectorError, match="both memory programs"):
        Container(env=env)
