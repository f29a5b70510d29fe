"""`elasticity report|explain|experiments promote --store dynamodb://TABLE` from a laptop: the
same formats as on the embedded store, and a clear error (never a traceback) for a bad URL,
missing credentials, a missing table or a mid-day `--since`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from typer.testing import CliRunner

from crm_elasticity.connectors.cli import app
from crm_elasticity.core.dynamodb_store import DynamoDBStore, counter_key
from crm_elasticity.core.models import ContactState, Decision, Status
from crm_elasticity.core.store import Batch

REGION = "eu-west-1"
URL = f"dynamodb://state?region={REGION}"
HUBSPOT = Path(__file__).resolve().parents[2] / "mappings" / "hubspot.yaml"
T0 = datetime(2030, 1, 1, 9, tzinfo=UTC)
runner = CliRunner()


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoDBStore]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        store = DynamoDBStore("state", client=boto3.client("dynamodb", region_name=REGION))
        store.create_table()
        yield store


def seed(store: DynamoDBStore) -> None:
    state = ContactState("c1", Status.ENGAGED, T0, T0, T0, T0, engagement_score=25)
    store.commit(
        Batch(
            event_keys=["e1", "e2"],
            contacts=[state],
            next_due=[None],
            decisions=[
                Decision(
                    contact_id="c1",
                    at=T0,
                    rule="enroll",
                    reason="enrolled",
                    cause="e1",
                    from_status=None,
                    to_status=Status.ACTIVE,
                    changes={},
                    policy_version="v1",
                ),
                Decision(
                    contact_id="c1",
                    at=T0,
                    rule="engagement",
                    reason="click",
                    cause="e2",
                    from_status=Status.ACTIVE,
                    to_status=Status.ENGAGED,
                    changes={"engagement_score": (0, 25)},
                    policy_version="v1",
                    actions=[],
                    event_type="click",
                ),
            ],
        )
    )


def test_report_and_explain_read_a_dynamodb_store_in_every_format(
    table: DynamoDBStore,
) -> None:
    seed(table)
    answer = runner.invoke(app, ["report", "--store", URL, "--format", "json"])
    assert answer.exit_code == 0, answer.output
    report = json.loads(answer.output)
    assert report["store"] == URL
    assert report["overview"]["contacts_by_state"]["Engaged"] == 1
    assert report["overview"]["decisions"] == 2
    for fmt, marker in (("md", "# "), ("html", "<html")):
        answer = runner.invoke(app, ["report", "--store", URL, "--format", fmt])
        assert answer.exit_code == 0 and marker in answer.output
    answer = runner.invoke(app, ["explain", "c1", "--store", URL])
    assert answer.exit_code == 0, answer.output
    assert "engagement/click" in answer.output and "now Engaged" in answer.output
    missing = runner.invoke(app, ["explain", "nobody", "--store", URL])
    assert missing.exit_code == 1 and "no decisions" in missing.output


@pytest.mark.parametrize(
    "url",
    [
        "dynamodb://",
        "dynamodb://ab",
        "dynamodb://state/extra",
        "dynamodb://state?regoin=x",
        "dynamodb://state?region=",
        "dynamodb://bad name",
    ],
)
def test_a_malformed_dynamodb_url_is_a_usage_error(table: DynamoDBStore, url: str) -> None:
    for command in (["report", "--store", url], ["explain", "c1", "--store", url]):
        answer = runner.invoke(app, command)
        assert answer.exit_code == 2, answer.output
        assert "--store" in answer.output and "Traceback" not in answer.output


def test_a_missing_table_or_a_mid_day_since_is_said_plainly(table: DynamoDBStore) -> None:
    answer = runner.invoke(app, ["report", "--store", f"dynamodb://nothere?region={REGION}"])
    assert answer.exit_code == 1 and "'nothere' not found in eu-west-1" in answer.output
    answer = runner.invoke(app, ["report", "--store", URL, "--since", "2030-01-01T12:00:00Z"])
    assert answer.exit_code == 2 and "whole UTC days" in answer.output
    answer = runner.invoke(app, ["report", "--store", URL, "--since", "2030-01-01T00:00:00Z"])
    assert answer.exit_code == 0, answer.output


def test_no_credentials_is_said_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside moto, with no credentials anywhere: refused before any request leaves."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    answer = runner.invoke(app, ["report", "--store", URL])
    assert answer.exit_code == 1 and "no AWS credentials" in answer.output
    assert "Traceback" not in answer.output


def test_experiments_promote_works_from_a_dynamodb_store(
    table: DynamoDBStore, tmp_path: Path
) -> None:
    """Roll-up counters as the worker keeps them: Value opens twice as often as Curiosity."""
    mapping = tmp_path / "hubspot.yaml"
    shutil.copy(HUBSPOT, mapping)
    client = boto3.client("dynamodb", region_name=REGION)
    for variant, opens in (("Value", 400), ("Curiosity", 200)):
        arm = json.dumps({"subject_line": variant})
        for rule, event_type, n in (("send", "send", 1000), ("engagement", "open", opens)):
            reason = "sent" if rule == "send" else "open"
            dims = json.dumps(
                ["2030-01-01", rule, reason, "Active", "Active", "v1", event_type, arm, 0],
                separators=(",", ":"),
            )
            client.put_item(
                TableName="state",
                Item={**counter_key("rollup", dims, "03"), "dims": {"S": dims}, "n": {"N": str(n)}},
            )
    answer = runner.invoke(
        app, ["experiments", "promote", str(mapping), "subject_line", "--store", URL]
    )
    assert answer.exit_code == 0, answer.output
    assert "promoted 'Value'" in answer.output
    assert "default: Value" in mapping.read_text()
    notes = table.policy_notes()
    assert [json.loads(v)["default"] for k, v in notes.items() if k.startswith("changelog:")] == [
        "Value"
    ]
    report = json.loads(runner.invoke(app, ["report", "--store", URL, "--format", "json"]).output)
    assert [e["kind"] for e in report["change_log"]] == ["promotion"]
