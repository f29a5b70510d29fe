"""One Bulk API 2.0 update job, driven step by step (not through the SDK's helper) so the
CSV column order is stable and the poll schedule, hence the call count, is ours:
create, upload, close, a few polls, and the failed rows when there are any."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from connectors.base import ConnectorError
from connectors.salesforce.client import SalesforceClient
from connectors.salesforce.settings import BULK_MAX_BYTES, BULK_NULL, LOCK_ERROR

log = logging.getLogger(__name__)

DONE, FAILED, ABORTED = "JobComplete", "Failed", "Aborted"
START_GUESS, RATE_GUESS = 5.0, 2000
"""Seconds before a job starts, and rows a second a plain field update goes at: the first
poll waits for a job this fast; later polls come at 1.5 times the elapsed time, so a slower
job costs a poll or two more, never a poll per few seconds."""


@dataclass
class BulkOutcome:
    written: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    locked: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    polls: int = 0


def csv_cell(value: Any) -> str:
    if value is None:
        return BULK_NULL  # an empty cell would leave the old value in place
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build_csv(rows: dict[str, dict[str, Any]], column_order: list[str]) -> Iterator[str]:
    """CSV texts of at most BULK_MAX_BYTES; columns `Id` then `column_order` (fields no row
    sets are left out; a row without a field gets an empty cell, which Salesforce ignores)."""
    present = {name for row in rows.values() for name in row}
    columns = [name for name in column_order if name in present]
    columns += sorted(present - set(columns) - {"Id"})
    buffer, size = _new_buffer(columns)
    writer = csv.writer(buffer, lineterminator="\n")
    for record_id, row in rows.items():
        line = [record_id] + [csv_cell(row[c]) if c in row else "" for c in columns]
        writer.writerow(line)
        size += 1
        if buffer.tell() >= BULK_MAX_BYTES:
            yield buffer.getvalue()
            buffer, size = _new_buffer(columns)
            writer = csv.writer(buffer, lineterminator="\n")
    if size:
        yield buffer.getvalue()


def _new_buffer(columns: list[str]) -> tuple[io.StringIO, int]:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(["Id", *columns])
    return buffer, 0


def poll_delays(rows: int, timeout_seconds: float) -> Iterator[float]:
    """Waits before each status poll, until `timeout_seconds` have passed."""
    first = min(START_GUESS + rows / RATE_GUESS, 120.0)
    elapsed, delay = 0.0, first
    while elapsed + delay <= timeout_seconds:
        yield delay
        elapsed += delay
        delay = min(max(elapsed * 0.5, 2.0), 300.0)


class BulkUpdater:
    def __init__(self, client: SalesforceClient, sleep: Callable[[float], None]) -> None:
        self.client = client
        self.sleep = sleep

    def update(
        self, sobject: str, rows: dict[str, dict[str, Any]], column_order: list[str]
    ) -> BulkOutcome:
        outcome = BulkOutcome()
        for text in build_csv(rows, column_order):
            self._job(sobject, text, outcome)
        failed_or_locked = set(outcome.failed) | set(outcome.locked)
        outcome.written = [rid for rid in rows if rid not in failed_or_locked]
        return outcome

    def _job(self, sobject: str, text: str, outcome: BulkOutcome) -> None:
        c = self.client
        spec = {
            "object": sobject,
            "operation": "update",
            "contentType": "CSV",
            "columnDelimiter": "COMMA",
            "lineEnding": "LF",
        }
        job = c.call(
            f"create Bulk 2.0 {sobject} update job",
            lambda _: c.raw("POST", "jobs/ingest", json=spec).json(),
        )
        job_id = job["id"]
        outcome.jobs.append(job_id)
        rows = text.count("\n") - 1
        c.call(
            f"upload {rows} rows to job {job_id}",
            lambda _: c.raw(
                "PUT",
                f"jobs/ingest/{job_id}/batches",
                data=text.encode("utf-8"),
                headers={"Content-Type": "text/csv", "Accept": "application/json"},
            ),
        )
        c.call(
            f"close job {job_id}",
            lambda _: c.raw("PATCH", f"jobs/ingest/{job_id}", json={"state": "UploadComplete"}),
        )
        info = self._wait(job_id, rows, outcome)
        if info.get("state") != DONE:
            raise ConnectorError(
                f"Bulk 2.0 job {job_id} ended {info.get('state')}: "
                f"{info.get('errorMessage') or 'no message'}; the writes stay owed",
                retriable=True,
            )
        if int(info.get("numberRecordsFailed") or 0):
            self._read_failures(job_id, outcome)

    def _wait(self, job_id: str, rows: int, outcome: BulkOutcome) -> dict[str, Any]:
        c = self.client
        timeout = c.options.bulk_timeout_minutes * 60
        for delay in poll_delays(rows, timeout):
            self.sleep(delay)
            outcome.polls += 1
            info = c.call(
                f"poll job {job_id}", lambda _: c.raw("GET", f"jobs/ingest/{job_id}").json()
            )
            if info.get("state") in (DONE, FAILED, ABORTED):
                return info
        raise ConnectorError(
            f"Bulk 2.0 job {job_id} still running after "
            f"{c.options.bulk_timeout_minutes:g} minutes; the writes stay owed "
            "(rewriting the same values is harmless)",
            retriable=True,
        )

    def _read_failures(self, job_id: str, outcome: BulkOutcome) -> None:
        c = self.client
        text = c.call(
            f"read failed rows of job {job_id}",
            lambda _: (
                c.raw(
                    "GET", f"jobs/ingest/{job_id}/failedResults", headers={"Accept": "text/csv"}
                ).text
            ),
        )
        # Rows come back in no particular order: match them by id, never by position.
        for row in csv.DictReader(io.StringIO(text)):
            record_id = row.get("sf__Id") or row.get("Id") or ""
            error = row.get("sf__Error") or "unknown error"
            if not record_id:
                continue
            if error.startswith(LOCK_ERROR):
                outcome.locked.append(record_id)
            else:
                outcome.failed[record_id] = _readable(error)


def _readable(error: str) -> str:
    """`CODE:message:fields` -> `CODE: message`."""
    parts = error.split(":")
    if len(parts) >= 2 and parts[0].isupper():
        message = ":".join(parts[1:]).removesuffix(":--").strip()
        return f"{parts[0]}: {message}"
    return error
