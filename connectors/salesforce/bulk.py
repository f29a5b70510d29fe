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

from crm_elasticity.connectors.base import ConnectorError
from crm_elasticity.connectors.http import backoff_delay
from crm_elasticity.connectors.salesforce.api_facts import BULK_MAX_BYTES, BULK_NULL, LOCK_ERROR
from crm_elasticity.connectors.salesforce.client import AmbiguousWrite, SalesforceClient

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


def csv_field(text: str) -> str:
    """One CSV field as Bulk 2.0 reads it (RFC 4180): quoted when it holds a comma, a quote,
    or a line break of either kind. Python's `csv` module quotes only the characters of its
    own line terminator, so a bare carriage return would otherwise split the record."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_line(fields: list[str]) -> bytes:
    return (",".join(csv_field(f) for f in fields) + "\n").encode("utf-8")


def build_csv(rows: dict[str, dict[str, Any]], column_order: list[str]) -> Iterator[bytes]:
    """UTF-8 CSV uploads of at most BULK_MAX_BYTES each (measured in bytes, as Salesforce
    counts them); columns `Id` then `column_order` (fields no row sets are left out; a row
    without a field gets an empty cell, which Salesforce ignores)."""
    present = {name for row in rows.values() for name in row}
    columns = [name for name in column_order if name in present]
    columns += sorted(present - set(columns) - {"Id"})
    header = csv_line(["Id", *columns])
    parts: list[bytes] = []
    size = len(header)
    for record_id, row in rows.items():
        line = csv_line([record_id] + [csv_cell(row[c]) if c in row else "" for c in columns])
        if len(header) + len(line) > BULK_MAX_BYTES:
            raise ConnectorError(f"{record_id}: one row is over the Bulk upload limit")
        if parts and size + len(line) > BULK_MAX_BYTES:
            yield header + b"".join(parts)
            parts, size = [], len(header)
        parts.append(line)
        size += len(line)
    if parts:
        yield header + b"".join(parts)


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
        for data in build_csv(rows, column_order):
            self._job(sobject, data, outcome)
        failed_or_locked = set(outcome.failed) | set(outcome.locked)
        outcome.written = [rid for rid in rows if rid not in failed_or_locked]
        return outcome

    def _job(self, sobject: str, data: bytes, outcome: BulkOutcome) -> None:
        """Create, fill and close one job. Nothing in a job applies before it is closed, so an
        upload cut short is never repeated into the same job (it may have landed: the job
        would hold the rows twice): that job is aborted and a fresh one filled. A close cut
        short is checked by reading the job's state, never sent twice."""
        rows = data.count(b"\n") - 1
        for attempt in range(self.client.options.max_attempts):
            job_id = self._create(sobject, outcome)
            try:
                self._upload(job_id, rows, data)
            except AmbiguousWrite as exc:
                log.warning("%s; aborting job %s and uploading to a new one", exc, job_id)
                self._abort(job_id)
                self.client.http.pause(backoff_delay(attempt + 1, base=2.0, cap=30.0))
                continue
            break
        else:
            raise ConnectorError(
                f"uploading {rows} rows to a Bulk 2.0 job kept failing; the writes stay owed",
                retriable=True,
            )
        self._close(job_id)
        info = self._wait(job_id, rows, outcome)
        if info.get("state") != DONE:
            raise ConnectorError(
                f"Bulk 2.0 job {job_id} ended {info.get('state')}: "
                f"{info.get('errorMessage') or 'no message'}; the writes stay owed",
                retriable=True,
            )
        if int(info.get("numberRecordsFailed") or 0):
            self._read_failures(job_id, outcome)

    def _create(self, sobject: str, outcome: BulkOutcome) -> str:
        """A create retried after a timeout can leave an extra job behind: it is empty and
        never closed, so it applies nothing."""
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
        outcome.jobs.append(job["id"])
        return str(job["id"])

    def _upload(self, job_id: str, rows: int, data: bytes) -> None:
        c = self.client
        c.call(
            f"upload {rows} rows to job {job_id}",
            lambda _: c.raw(
                "PUT",
                f"jobs/ingest/{job_id}/batches",
                data=data,
                headers={"Content-Type": "text/csv", "Accept": "application/json"},
            ),
            retry_ambiguous=False,
        )

    def _abort(self, job_id: str) -> None:
        c = self.client
        try:
            c.call(
                f"abort job {job_id}",
                lambda _: c.raw("PATCH", f"jobs/ingest/{job_id}", json={"state": "Aborted"}),
            )
        except ConnectorError as exc:
            # An open job that is never closed applies nothing either; Salesforce drops it.
            log.warning("could not abort Bulk 2.0 job %s: %s", job_id, exc)

    def _close(self, job_id: str) -> None:
        c = self.client
        for _ in range(c.options.max_attempts):
            try:
                c.call(
                    f"close job {job_id}",
                    lambda _: c.raw(
                        "PATCH", f"jobs/ingest/{job_id}", json={"state": "UploadComplete"}
                    ),
                    retry_ambiguous=False,
                )
                return
            except AmbiguousWrite as exc:
                info = c.call(
                    f"read job {job_id}", lambda _: c.raw("GET", f"jobs/ingest/{job_id}").json()
                )
                log.warning("%s; the job is now %s", exc, info.get("state"))
                if info.get("state") != "Open":
                    return
                c.stats.count("retries")
        raise ConnectorError(
            f"closing Bulk 2.0 job {job_id} kept failing; the writes stay owed", retriable=True
        )

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
