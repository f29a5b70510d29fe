"""Secrets by name from SSM Parameter Store, handed to connectors as environment variables."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from moto import mock_aws

from crm_elasticity.connectors.aws.secrets import load_secrets

KEY = "-----BEGIN PRIVATE KEY-----\nMIIEvQ...\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def ssm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    parameters.clear_caches()
    with mock_aws():
        client = boto3.client("ssm", region_name="eu-west-1")
        client.put_parameter(
            Name="/app/prod/SALESFORCE_CONSUMER_KEY", Value="ck", Type="SecureString"
        )
        client.put_parameter(
            Name="/app/prod/SALESFORCE_PRIVATE_KEY_FILE", Value=KEY, Type="SecureString"
        )
        yield client
    parameters.clear_caches()


def test_named_secrets_become_variables_and_key_files(ssm: Any) -> None:
    env = {
        "SECRETS_PREFIX": "/app/prod/",
        "SECRET_NAMES": "SALESFORCE_CONSUMER_KEY, SALESFORCE_PRIVATE_KEY_FILE,SALESFORCE_ORG_ID",
    }
    found = load_secrets(env)
    assert found["SALESFORCE_CONSUMER_KEY"] == "ck"
    assert "SALESFORCE_ORG_ID" not in found  # not created: left for the connector to name
    key_file = Path(found["SALESFORCE_PRIVATE_KEY_FILE"])
    assert key_file.read_text() == KEY
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    key_file.unlink()


def test_secrets_are_cached_per_container_until_forced(ssm: Any) -> None:
    env = {"SECRETS_PREFIX": "/app/prod", "SECRET_NAMES": "SALESFORCE_CONSUMER_KEY"}
    assert load_secrets(env) == {"SALESFORCE_CONSUMER_KEY": "ck"}
    ssm.put_parameter(
        Name="/app/prod/SALESFORCE_CONSUMER_KEY",
        Value="rotated",
        Type="SecureString",
        Overwrite=True,
    )
    assert load_secrets(env) == {"SALESFORCE_CONSUMER_KEY": "ck"}  # no SSM call per request
    assert load_secrets(env, force=True) == {"SALESFORCE_CONSUMER_KEY": "rotated"}


def test_no_names_means_no_ssm_call() -> None:
    assert load_secrets({"SECRETS_PREFIX": "/app/prod"}) == {}


def test_in_lambda_the_shared_modules_log_json_lines() -> None:
    code = (
        "import logging, tests.fakes.memory_crm\n"
        "from crm_elasticity.connectors.aws import handlers\n"
        "runner_log = logging.getLogger('crm_elasticity.connectors.runner')\n"
        "runner_log.warning('CRM writes stay owed: %s', 'down')\n"
    )
    env = {
        **os.environ,
        "AWS_LAMBDA_FUNCTION_NAME": "crm-elasticity-test-worker",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "ELASTICITY_MAPPINGS": "tests/fakes/memory.yaml",
        "PYTHONPATH": str(Path.cwd()),
    }
    done = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["message"] == "CRM writes stay owed: down"
    assert line["level"] == "WARNING"
    assert line["name"] == "crm_elasticity.connectors.runner"
