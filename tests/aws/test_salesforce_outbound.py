"""Salesforce Outbound Messages through the webhook function: the token comes from SSM like the
other secrets; without it the function still starts and refuses every message."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from crm_elasticity.connectors.aws import handlers
from crm_elasticity.connectors.salesforce.api_facts import OUTBOUND_ACK
from tests.aws.harness import PREFIX, REGION, FakeContext, Stack, api_event, receive
from tests.fakes.memory_crm import MAPPING_PATH

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "salesforce" / "fixtures" / "contact_notifications.xml"
TOKEN = "lambda-outbound-token-0123456789abcdef"
SSM = {
    "SALESFORCE_ACCESS_TOKEN": "00Dfake!session",
    "SALESFORCE_INSTANCE_URL": "https://acme.my.salesforce.com",
    "SALESFORCE_ORG_ID": "00D5g000004ABCD",
}


def with_salesforce(stack: Stack, monkeypatch: pytest.MonkeyPatch, token: str | None) -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    values = {**SSM, **({"SALESFORCE_OUTBOUND_TOKEN": token} if token else {})}
    for name, value in values.items():
        ssm.put_parameter(Name=f"{PREFIX}/{name}", Value=value, Type="SecureString")
    names = ["MEMORY_SECRET", *SSM, "SALESFORCE_OUTBOUND_TOKEN"]
    monkeypatch.setenv("SECRET_NAMES", ",".join(names))
    monkeypatch.setenv(
        "ELASTICITY_MAPPINGS", f"{MAPPING_PATH},{ROOT / 'mappings' / 'salesforce.yaml'}"
    )
    handlers.reset_container()


def outbound(query: str) -> dict:
    event = api_event("/webhooks/salesforce", FIXTURE.read_text(), {"content-type": "text/xml"})
    event["rawQueryString"] = query
    return handlers.webhook(event, FakeContext())


def test_a_tokened_message_is_acked_once_queued_and_a_forged_one_is_not(
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with_salesforce(stack, monkeypatch, TOKEN)
    forged = outbound("")  # the org id alone
    assert forged["statusCode"] == 401
    assert "<Ack>" not in forged["body"]
    assert stack.queued() == 0
    with caplog.at_level("DEBUG"):
        answer = outbound(f"token={TOKEN}")
    printed = capsys.readouterr()
    assert TOKEN not in caplog.text + printed.out + printed.err
    assert answer["statusCode"] == 200
    assert answer["body"].encode() == OUTBOUND_ACK
    assert len(receive(stack.sqs, stack.queue_url)) == 8  # opt-out false is a resubscribe event too


def test_without_the_token_the_function_starts_and_refuses_saying_why_once(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with_salesforce(stack, monkeypatch, None)
    with caplog.at_level("WARNING"):
        answers = [outbound(f"token={TOKEN}") for _ in range(2)]
    assert [a["statusCode"] for a in answers] == [403, 403]
    assert all("<Ack>" not in a["body"] for a in answers)
    assert stack.queued() == 0
    said = [r for r in caplog.records if "SALESFORCE_OUTBOUND_TOKEN is not set" in r.getMessage()]
    assert len(said) == 1
