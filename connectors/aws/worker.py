"""The queue worker's logic: one SQS batch through `Runner.process`, failures reported per record.

The whole batch is first tried as one unit (one CRM read, one write-back: the fewest API
calls). If that fails with anything but a throttled or unavailable CRM, each record is tried
alone, so a poisoned record fails by itself and the others are done now, not redelivered.
A throttled CRM fails the batch without retrying record by record, which would only add load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    SqsFifoPartialProcessor,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from crm_elasticity.connectors.aws.container import Container
from crm_elasticity.connectors.aws.queue import QueueMessage, parse_message
from crm_elasticity.connectors.base import AuthError, ConnectorError
from crm_elasticity.core.pipeline import RunStats
from crm_elasticity.core.store import StoreError

# A child of the handlers' logger: JSON lines with the batch's correlation id.
log = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "crm-elasticity"), child=True)


class CrmUnavailable(Exception):
    """The batch failed on a throttled or unavailable CRM: every record waits for redelivery."""


@dataclass
class BatchOutcome:
    """What the handler turns into metrics."""

    stats: RunStats = field(default_factory=RunStats)
    failed: list[str] = field(default_factory=list)
    dead_lettered: int = 0
    mode: str = "batch"


def _parse(records: list[dict[str, Any]]) -> dict[str, QueueMessage]:
    parsed = {}
    for record in records:
        try:
            parsed[record["messageId"]] = parse_message(record["body"])
        except ValueError:
            continue  # left for the per-record pass, which reports it as failed
    return parsed


def process_batch(
    event: dict[str, Any], context: Any, container: Container, max_receives: int
) -> tuple[PartialItemFailureResponse, BatchOutcome]:
    records = event.get("Records", [])
    outcome = BatchOutcome()
    parsed = _parse(records)
    done = _dead_letter_unreadable(records, parsed, container, outcome)
    unavailable: set[str] = set()
    if len(parsed) + len(done) == len(records):
        by_vendor: dict[str, list[str]] = {}
        for message_id, message in parsed.items():
            by_vendor.setdefault(message.vendor, []).append(message_id)
        for vendor, ids in by_vendor.items():
            try:
                outcome.stats.add(container.runner(vendor).process([parsed[i].event for i in ids]))
                done.update(ids)
            except Exception as exc:  # noqa: BLE001 - isolate the culprit record by record
                _note_failure(container, vendor, exc, unavailable)
                log.warning("batch of %d for %s failed as a whole: %r", len(ids), vendor, exc)
    if len(done) < len(records):
        outcome.mode = "per-record"

    def record_handler(record: SQSRecord) -> None:
        if record.message_id in done:
            return
        message = parsed.get(record.message_id) or parse_message(record.body)
        if message.vendor in unavailable:
            raise CrmUnavailable(f"{message.vendor} throttled or unavailable; retried later")
        try:
            outcome.stats.add(container.runner(message.vendor).process([message.event]))
        except Exception as exc:
            _note_failure(container, message.vendor, exc, unavailable)
            raise

    # The FIFO processor stops a message group at its first failure: a contact's later
    # events must not be applied before an earlier one that failed.
    processor = SqsFifoPartialProcessor(skip_group_on_error=True)
    # All records failing is still a partial response (every id listed), not a raised error
    # that would make Lambda log the invocation as crashed.
    processor.raise_on_entire_batch_failure = False
    response = process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
    # An SQS record's identifier is its message id (a string; Kafka's is a topic/offset pair).
    outcome.failed = [str(f["itemIdentifier"]) for f in response.get("batchItemFailures", [])]
    receives = {r["messageId"]: _receives(r) for r in records}
    for message_id in outcome.failed:
        if receives.get(message_id, 1) >= max_receives:
            # SQS moves it on its next receive; this is the last moment we see it.
            outcome.dead_lettered += 1
            log.error(
                "message %s goes to the dead-letter queue after %d receives",
                message_id,
                receives[message_id],
            )
    return response, outcome


def _dead_letter_unreadable(
    records: list[dict[str, Any]],
    parsed: dict[str, QueueMessage],
    container: Container,
    outcome: BatchOutcome,
) -> set[str]:
    """A body no worker can read never will: move it to the dead-letter queue now, instead of
    failing it until SQS does, which would hold up the contact's later events behind it."""
    moved: set[str] = set()
    for record in records:
        if record["messageId"] in parsed:
            continue
        attributes = record.get("attributes", {})
        try:
            container.dead_letters.send_raw(
                record["body"],
                attributes.get("MessageGroupId") or "unreadable",
                attributes.get("MessageDeduplicationId") or record["messageId"],
            )
        except StoreError as exc:
            log.warning("could not move unreadable message %s: %s", record["messageId"], exc)
            continue  # it fails in the per-record pass and SQS moves it in the end
        log.error("unreadable message %s moved to the dead-letter queue", record["messageId"])
        outcome.dead_lettered += 1
        moved.add(record["messageId"])
    return moved


def _note_failure(container: Container, vendor: str, exc: Exception, unavailable: set[str]) -> None:
    if isinstance(exc, AuthError):
        container.forget_credentials()  # a rotated token is read again on the next call
    if isinstance(exc, ConnectorError) and exc.retriable:
        unavailable.add(vendor)  # trying its other records one by one would only add load


def _receives(record: dict[str, Any]) -> int:
    return int(record.get("attributes", {}).get("ApproximateReceiveCount") or 1)
