"""A stand-in for the AWS services around the functions: API Gateway v2 events, the Lambda SQS
poller (receive, invoke, delete what succeeded, make failures visible again), a context, and
the `Stack` the `stack` fixture (conftest.py) builds under moto."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from crm_elasticity.core.dynamodb_store import DynamoDBStore
from tests.fakes.memory_crm import MemoryCrm

MAX_RECEIVES = 3


@dataclass
class FakeContext:
    function_name: str = "crm-elasticity-test-fn"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:test"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def api_event(path: str, body: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An HTTP API (payload format 2.0) POST as API Gateway hands it to Lambda."""
    return {
        "version": "2.0",
        "routeKey": f"POST {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "host": "abc.execute-api.aws",
            "x-forwarded-proto": "https",
            **(headers or {}),
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc",
            "domainName": "abc.execute-api.aws",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.9",
                "userAgent": "test",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": f"POST {path}",
            "stage": "$default",
            "time": "01/Mar/2024:09:30:00 +0000",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": body,
        "isBase64Encoded": False,
    }


def receive(sqs: Any, queue_url: str, limit: int = 10) -> list[dict[str, Any]]:
    answer = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=limit,
        AttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
        VisibilityTimeout=30,
    )
    return answer.get("Messages", [])


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The event the Lambda SQS poller builds from received messages."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "eu-west-1",
            }
            for m in messages
        ]
    }


@dataclass
class Delivery:
    messages: list[dict[str, Any]]
    response: dict[str, Any]

    @property
    def failed_ids(self) -> list[str]:
        return [f["itemIdentifier"] for f in self.response.get("batchItemFailures", [])]

    def bodies(self, ids: list[str]) -> list[dict[str, Any]]:
        return [json.loads(m["Body"]) for m in self.messages if m["MessageId"] in ids]


class Poller:
    """Lambda's event source mapping for SQS with ReportBatchItemFailures, minus the waiting:
    failed messages are made visible again at once instead of after the visibility timeout."""

    def __init__(self, sqs: Any, queue_url: str, queue_arn: str, handler: Any) -> None:
        self.sqs, self.url, self.arn, self.handler = sqs, queue_url, queue_arn, handler

    def deliver(self, crash_after_invoke: bool = False) -> Delivery | None:
        messages = receive(self.sqs, self.url)
        if not messages:
            return None
        response = self.handler(sqs_event(messages, self.arn), FakeContext())
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        for m in messages:
            if m["MessageId"] in failed or crash_after_invoke:
                # The poller never deletes these; they come back (here: right away).
                self.sqs.change_message_visibility(
                    QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
                )
            else:
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"])
        return Delivery(messages, response)

    def drain(self, rounds: int = 10) -> list[Delivery]:
        deliveries = []
        for _ in range(rounds):
            delivery = self.deliver()
            if delivery is None:
                break
            deliveries.append(delivery)
        return deliveries


class SqsWithLimits:
    """An SQS client (moto's) that also refuses what SQS refuses and moto lets through: more
    than 10 entries in a SendMessageBatch call, a message over 256 KiB, and a batch whose
    messages add up to more than 256 KiB (the whole call fails, as SQS's BatchRequestTooLong).
    Everything else goes to the wrapped client."""

    MAX_BYTES = 262_144
    MAX_ENTRIES = 10

    def __init__(self, client: Any) -> None:
        self.client = client
        self.batch_calls: list[list[int]] = []
        """The message sizes of every accepted SendMessageBatch call."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    @staticmethod
    def _refuse(code: str, message: str, operation: str) -> Exception:
        from botocore.exceptions import ClientError

        error = {"Error": {"Code": code, "Message": message}}
        return ClientError(error, operation)  # type: ignore[arg-type]

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        if len(kwargs["MessageBody"].encode()) > self.MAX_BYTES:
            raise self._refuse(
                "InvalidParameterValue",
                "One or more parameters are invalid. "
                "Reason: Message must be shorter than 262144 bytes.",
                "SendMessage",
            )
        return self.client.send_message(**kwargs)

    def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        entries = kwargs["Entries"]
        if not entries:
            raise self._refuse(
                "EmptyBatchRequest",
                "There should be at least one SendMessageBatchRequestEntry in the request.",
                "SendMessageBatch",
            )
        if len(entries) > self.MAX_ENTRIES:
            raise self._refuse(
                "TooManyEntriesInBatchRequest",
                f"Maximum number of entries per request are {self.MAX_ENTRIES}.",
                "SendMessageBatch",
            )
        sizes = [len(e["MessageBody"].encode()) for e in entries]
        if sum(sizes) > self.MAX_BYTES:
            raise self._refuse(
                "BatchRequestTooLong",
                "Batch requests cannot be longer than 262144 bytes.",
                "SendMessageBatch",
            )
        self.batch_calls.append(sizes)
        return self.client.send_message_batch(**kwargs)


REGION = "eu-west-1"
PREFIX = "/crm-elasticity/test"
SECRET = "s3cr3t-webhook-value"


@dataclass
class Stack:
    sqs: Any
    queue_url: str
    queue_arn: str
    dlq_url: str
    store: DynamoDBStore
    crm: MemoryCrm
    poller: Poller

    def queued(self, url: str | None = None) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )
