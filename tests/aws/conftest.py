"""The deployed stack under moto: the DynamoDB table, the FIFO work queue with its dead-letter
queue, the SSM secret, and the environment serverless.yml gives the functions."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from moto import mock_aws

from crm_elasticity.connectors.aws import handlers
from crm_elasticity.core.dynamodb_store import DynamoDBStore
from tests.aws.harness import MAX_RECEIVES, PREFIX, REGION, SECRET, Poller, SqsWithLimits, Stack
from tests.fakes.memory_crm import MAPPING_PATH, MemoryCrm


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "STATE_TABLE": "crm-elasticity-test-state",
        "WORK_QUEUE_NAME": "crm-elasticity-test-work.fifo",
        "DEAD_LETTER_QUEUE_NAME": "crm-elasticity-test-work-dlq.fifo",
        "ELASTICITY_MAPPINGS": str(MAPPING_PATH),
        "SECRETS_PREFIX": PREFIX,
        "SECRET_NAMES": "MEMORY_SECRET",
        "MEMORY_CRM": "deployed",
        "MAX_RECEIVE_COUNT": str(MAX_RECEIVES),
        "POWERTOOLS_METRICS_NAMESPACE": "CrmElasticityTest",
        "POWERTOOLS_SERVICE_NAME": "crm-elasticity",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_LAMBDA_FUNCTION_NAME"):
        monkeypatch.delenv(name, raising=False)
    MemoryCrm.reset()
    handlers.reset_container()
    parameters.clear_caches()
    # The functions' queue client refuses what SQS refuses and moto does not (size, entries).
    client = boto3.client
    monkeypatch.setattr(
        "crm_elasticity.connectors.aws.queue.boto3.client",
        lambda name, **kw: SqsWithLimits(client(name, **kw)),
    )
    with mock_aws():
        store = DynamoDBStore(
            env["STATE_TABLE"], client=boto3.client("dynamodb", region_name=REGION)
        )
        store.create_table()
        sqs = boto3.client("sqs", region_name=REGION)
        dlq_url = sqs.create_queue(
            QueueName=env["DEAD_LETTER_QUEUE_NAME"], Attributes={"FifoQueue": "true"}
        )["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        queue_url = sqs.create_queue(
            QueueName=env["WORK_QUEUE_NAME"],
            Attributes={
                "FifoQueue": "true",
                "VisibilityTimeout": "360",
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVES}
                ),
            },
        )["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        boto3.client("ssm", region_name=REGION).put_parameter(
            Name=f"{PREFIX}/MEMORY_SECRET", Value=SECRET, Type="SecureString"
        )
        poller = Poller(sqs, queue_url, queue_arn, handlers.worker)
        yield Stack(sqs, queue_url, queue_arn, dlq_url, store, MemoryCrm.named("deployed"), poller)
    handlers.reset_container()
    parameters.clear_caches()
    MemoryCrm.reset()
