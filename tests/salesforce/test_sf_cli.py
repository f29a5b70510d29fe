"""The shared command line drives the Salesforce connector (provision --dry-run, sync)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crm_elasticity.connectors.cli import app
from tests.fakes.salesforce import FakeSalesforce
from tests.salesforce.sf_helpers import ROOT

MAPPING = str(ROOT / "mappings" / "salesforce.yaml")


@pytest.fixture
def environment(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ELASTICITY_DATA_DIR", str(tmp_path / "data"))


def test_provision_dry_run_prints_the_plan(environment: None, fake: FakeSalesforce) -> None:
    fake.provisioned_all = False
    result = CliRunner().invoke(app, ["provision", MAPPING, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "18 item(s) would change; 0 drift(s) reported." in result.output
    assert set(fake.metadata_calls) == {"readMetadata"}


def test_sync_prints_the_summary(environment: None, fake: FakeSalesforce, mapping) -> None:  # noqa: ANN001
    fake.provision_mapping(mapping)
    fake.add(
        "Contact",
        LastName="s",
        Campaign_Status__c="Active",
        Last_Engagement_Date__c="2026-01-01T00:00:00Z",
        CreatedDate="2025-12-01T00:00:00Z",
    )
    result = CliRunner().invoke(app, ["sync", MAPPING, "--now", "2026-06-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "wrote 1 record (0 failures)" in result.output
    assert "Active->Dormant 1" in result.output


def test_sync_json_prints_one_object(environment: None, fake: FakeSalesforce, mapping) -> None:  # noqa: ANN001
    fake.provision_mapping(mapping)
    fake.add(
        "Contact",
        LastName="s",
        Campaign_Status__c="Active",
        Last_Engagement_Date__c="2026-01-01T00:00:00Z",
        CreatedDate="2025-12-01T00:00:00Z",
    )
    result = CliRunner().invoke(app, ["sync", MAPPING, "--now", "2026-06-01T00:00:00Z", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["written"] == 1
    assert summary["transitions"]["Active->Dormant"] == 1
    assert summary["stopped"] is None
