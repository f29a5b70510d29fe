"""The queue worker's logic: one SQS batch through `Runner.process`, failures reported per record.

The whole batch is first tried as one unit (one CRM read, one write-back: the fewest API
calls). If that fails with anything but a throttled or unavailable CRM, each record is tried
alone, so a poisoned record fails by itself and the others are done now, not redelivered.
A throttled CRM fails the batch without retrying record by record, which would only add load.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    SqsFifoPartialProcessor,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from connectors.aws.container import Container
from connectors.aws.queue import QueueMessage, parse_message
from connectors.base import AuthError, ConnectorError
from core.pipeline import RunStats

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
    event: dict[str, Any],
    context: Any,
    container: Container,
    max_receives: int,
    on_record: Callable[[SQSRecord], None] | None = None,
) -> tuple[dict[str, Any], BatchOutcome]:
    records = event.get("Records", [])
    outcome = BatchOutcome()
    parsed = _parse(records)
    done: set[str] = set()
    unavailable: set[str] = set()
    by_vendor: dict[str, list[str]] = {}
    for message_id, message in parsed.items():
        by_vendor.setdefault(message.vendor, []).append(message_id)
    if len(parsed) == len(records):
        for vendor, ids in by_vendor.items():
            try:
                stats = container.runner(vendor).process([parsed[i].event for i in ids])
            except ConnectorError as exc:
                if isinstance(exc, AuthError):
                    container.forget_credentials()
                if exc.retriable:
                    unavailable.add(vendor)
                log.warning("batch of %d for %s failed as a whole: %s", len(ids), vendor, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - isolate the culprit record by record
                log.warning("batch of %d for %s failed as a whole: %r", len(ids), vendor, exc)
                continue
            outcome.stats.add(stats)
            done.update(ids)
    if len(done) < len(records):
        outcome.mode = "per-record"

    def record_handler(record: SQSRecord) -> None:
        if on_record is not None:
            on_record(record)
        if record.message_id in done:
            return
        try:
            message = parsed.get(record.message_id) or parse_message(record.body)
            if message.vendor in unavailable:
                raise CrmUnavailable(f"{message.vendor} throttled or unavailable; retried later")
            outcome.stats.add(container.runner(message.vendor).process([message.event]))
        except Exception:
            outcome.failed.append(record.message_id)
            receives = int(record.attributes.approximate_receive_count or 1)
            if receives >= max_receives:
                outcome.dead_lettered += 1
                log.error("message %s goes to the dead-letter queue after %d receives",
                          record.message_id, receives)  # fmt: skip
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
    return response, outcome
