"""The work queue between the webhook functions and the worker: SQS FIFO.

One message per canonical event. `MessageGroupId` is vendor + contact id, so one contact's
events are handled in order and never by two workers at once; `MessageDeduplicationId` is the
event id, so a redelivered webhook inside SQS's five-minute window is dropped by SQS itself
(outside it, the store's event claims drop it).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from crm_elasticity.core.models import Event
from crm_elasticity.core.store import StoreError

SEND_BATCH = 10  # SendMessageBatch's limit
MAX_MESSAGE_BYTES = 262_144
"""SQS refuses a message, and a SendMessageBatch call whose messages add up to, more than this.
(Queues created since August 2025 may take 1 MiB, and a queue's MaximumMessageSize may be set
lower: 256 KiB, the classic limit and the default of older queues, is what we rely on.) The
event model's field limits keep one event's message near 20 KB at most."""
_SQS_ID = re.compile(r"^[!-~]{1,128}$")  # printable ASCII, no spaces, at most 128


class QueueMessage(BaseModel):
    """The body of one work-queue message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vendor: str
    event: Event


def sqs_id(text: str) -> str:
    """`text` if SQS accepts it as a group or deduplication id, else a stable digest of it."""
    if _SQS_ID.match(text):
        return text
    return "h:" + hashlib.sha256(text.encode()).hexdigest()


def message_entry(vendor: str, event: Event, index: int) -> dict[str, Any]:
    return {
        "Id": str(index),
        "MessageBody": QueueMessage(vendor=vendor, event=event).model_dump_json(),
        "MessageGroupId": sqs_id(f"{vendor}:{event.contact_id}"),
        "MessageDeduplicationId": sqs_id(event.event_id),
    }


def message_bytes(entry: dict[str, Any]) -> int:
    """What SQS counts against its size limits: the body's UTF-8 bytes (we set no message
    attributes)."""
    return len(entry["MessageBody"].encode())


def send_batches(entries: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Entries in order, packed into SendMessageBatch calls SQS accepts: at most `SEND_BATCH`
    entries and `MAX_MESSAGE_BYTES` in all. A single message over the limit raises
    `StoreError` (the field limits at intake keep that from happening)."""
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        length = message_bytes(entry)
        if length > MAX_MESSAGE_BYTES:
            raise StoreError(
                f"an event of {length:,} bytes does not fit a queue message "
                f"({MAX_MESSAGE_BYTES:,} at most)"
            )
        if current and (len(current) == SEND_BATCH or size + length > MAX_MESSAGE_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(entry)
        size += length
    if current:
        batches.append(current)
    return batches


def parse_message(body: str) -> QueueMessage:
    return QueueMessage.model_validate_json(body)


class WorkQueue:
    def __init__(self, queue_name: str, client: Any = None, queue_url: str | None = None) -> None:
        self.queue_name = queue_name
        self.sqs = client if client is not None else boto3.client("sqs")
        self._url = queue_url

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkQueue:
        if "WORK_QUEUE_NAME" not in env:
            raise StoreError("WORK_QUEUE_NAME is not set: name the SQS FIFO work queue")
        return cls(env["WORK_QUEUE_NAME"], queue_url=env.get("WORK_QUEUE_URL"))

    @property
    def url(self) -> str:
        # Looked up once per container: a URL in the environment would need the account id at
        # packaging time, which `osls package` cannot know without credentials.
        if self._url is None:
            try:
                self._url = self.sqs.get_queue_url(QueueName=self.queue_name)["QueueUrl"]
            except (ClientError, BotoCoreError) as exc:
                raise StoreError(f"cannot find the work queue {self.queue_name}: {exc}") from exc
        return self._url

    def send(self, vendor: str, events: Sequence[Event]) -> int:
        """Enqueue every event or raise `StoreError` (the webhook then answers 503 and the
        vendor redelivers). Returns how many were sent; SQS cannot tell which were new."""
        entries = [message_entry(vendor, e, i) for i, e in enumerate(events)]
        for batch in send_batches(entries):
            self._send_entries(batch)
        return len(events)

    def _send_entries(self, entries: list[dict[str, Any]]) -> None:
        """One SendMessageBatch call's worth of entries."""
        for _ in range(3):  # entries can fail alone (throttling): resend only those
            failed = self._send_batch(entries)
            if not failed:
                return
            entries = [e for e in entries if e["Id"] in failed]
        codes = sorted({json.dumps(f) for f in failed.values()})
        raise StoreError(f"SQS refused {len(entries)} message(s): {', '.join(codes)}")

    def send_raw(self, body: str, group_id: str, deduplication_id: str) -> None:
        """Move a message as it is (the dead-letter path for a body nobody can read)."""
        try:
            self.sqs.send_message(
                QueueUrl=self.url,
                MessageBody=body,
                MessageGroupId=sqs_id(group_id),
                MessageDeduplicationId=sqs_id(deduplication_id),
            )
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"could not send to {self.queue_name}: {exc}") from exc

    def move_to(self, target: WorkQueue, limit: int = 1000) -> int:
        """Move up to `limit` messages (a dead-letter replay), each in its own contact group
        again. A message is deleted here only once the target has it, so a crash mid-way
        duplicates at worst, and the store's event claims absorb duplicates."""
        moved = 0
        while moved < limit:
            try:
                answer = self.sqs.receive_message(
                    QueueUrl=self.url,
                    MaxNumberOfMessages=min(10, limit - moved),
                    AttributeNames=["MessageGroupId"],
                    VisibilityTimeout=60,
                    WaitTimeSeconds=0,
                )
            except (ClientError, BotoCoreError) as exc:
                raise StoreError(f"could not read {self.queue_name}: {exc}") from exc
            messages = answer.get("Messages", [])
            if not messages:
                break
            for message in messages:
                group = message.get("Attributes", {}).get("MessageGroupId", "replayed")
                # A fresh deduplication id: the original may still be in SQS's 5-minute window.
                target.send_raw(message["Body"], group, f"replay:{message['MessageId']}")
                try:
                    self.sqs.delete_message(
                        QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"]
                    )
                except (ClientError, BotoCoreError) as exc:
                    raise StoreError(
                        f"{self.queue_name}: cannot remove a moved message: {exc}"
                    ) from exc
                moved += 1
        return moved

    def recorder(self, vendor: str) -> Callable[[Sequence[Event]], int]:
        """The `record` callable `connectors.intake.handle_webhook` wants."""
        return lambda events: self.send(vendor, events)

    def _send_batch(self, entries: list[dict[str, Any]]) -> dict[str, str]:
        try:
            answer = self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"could not enqueue to {self.queue_name}: {exc}") from exc
        return {f["Id"]: f.get("Code", "unknown") for f in answer.get("Failed", [])}
