"""sObject Collections: up to 200 records a request, `allOrNone: false`, results in request
order. Rows Salesforce could not lock are retried, alone and with jitter; every other
per-record error is returned with Salesforce's message.

Creating is not idempotent: a request that times out (or fails with a 5xx) may have been
committed. Given a way to read back what exists (`existing`), creates are never retried
blindly: after an ambiguous failure the rows are looked up, the ones found count as created
and only the others are sent again."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crm_elasticity.connectors.base import ConnectorError
from crm_elasticity.connectors.http import backoff_delay
from crm_elasticity.connectors.salesforce.api_facts import COLLECTION_MAX, LOCK_ERROR
from crm_elasticity.connectors.salesforce.client import AmbiguousWrite, SalesforceClient

log = logging.getLogger(__name__)

SETTLE_SECONDS = 5.0
"""Wait at least this long before reading back a create cut short, so one Salesforce was still
committing when the client gave up has landed by then."""

Existing = Callable[[list[str]], dict[str, str]]
"""Keys -> the id of the record already holding each key (keys not found are absent)."""


@dataclass
class Saved:
    ok: dict[str, str | None] = field(default_factory=dict)
    """key -> record id Salesforce returned."""
    failed: dict[str, str] = field(default_factory=dict)
    """key -> 'STATUS_CODE: message' for errors retrying will not cure."""


def record_error(result: dict[str, Any]) -> tuple[str, str]:
    errors = result.get("errors") or [{}]
    first = errors[0]
    code = first.get("statusCode") or first.get("errorCode") or "UNKNOWN_ERROR"
    fields = first.get("fields") or []
    message = first.get("message") or ""
    return code, f"{code}: {message}" + (f" (fields: {', '.join(fields)})" if fields else "")


class CollectionWriter:
    """sObject Collections writes; rows that stay locked or cut short are sent again after a
    back-off of the client's retry policy (its sleep and jitter)."""

    def __init__(self, client: SalesforceClient) -> None:
        self.client = client

    def save(
        self,
        sobject: str,
        rows: dict[str, dict[str, Any]],
        create: bool = False,
        existing: Existing | None = None,
    ) -> Saved:
        """Update (rows carry `Id`) or create records; keys are the caller's names for rows.
        With `existing`, a create that may have been applied is read back, never re-sent."""
        saved = Saved()
        pending = dict(rows)
        rounds = self.client.options.max_attempts
        ambiguous: list[str] = []
        for round_no in range(rounds):
            if ambiguous and existing is not None:
                # Read back after the back-off, not at once: a request Salesforce was still
                # committing when the client gave up has had time to land.
                found = existing(ambiguous)
                saved.ok.update(found)
                log.warning(
                    "read back %d %s rows whose create was cut short: %d had been created, "
                    "%d are sent again",
                    len(ambiguous),
                    sobject,
                    len(found),
                    len(ambiguous) - len(found),
                )
                pending = {key: row for key, row in pending.items() if key not in found}
                if not pending:
                    return saved
            locked, ambiguous = self._one_round(sobject, pending, create, saved, existing)
            if not locked and not ambiguous:
                return saved
            pending = {key: rows[key] for key in locked + ambiguous}
            if round_no + 1 < rounds:
                delay = backoff_delay(
                    round_no + 1, base=0.5, cap=10.0, jitter=self.client.policy.jitter()
                )
                if ambiguous:
                    delay = max(delay, SETTLE_SECONDS)
                log.info("retrying %d %s rows in %.1fs", len(pending), sobject, delay)
                self.client.http.pause(delay)
        raise ConnectorError(
            f"{len(pending)} {sobject} record(s) stayed locked (UNABLE_TO_LOCK_ROW) or their "
            f"create was cut short (timeouts, server errors) after {rounds} attempts; the "
            "writes stay owed and the next sync reads back what landed before sending the rest",
            retriable=True,
        )

    def _one_round(
        self,
        sobject: str,
        rows: dict[str, dict[str, Any]],
        create: bool,
        saved: Saved,
        existing: Existing | None,
    ) -> tuple[list[str], list[str]]:
        """Send every row once; return the locked keys and those whose request may or may
        not have been applied."""
        keys = list(rows)
        locked: list[str] = []
        ambiguous: list[str] = []
        for start in range(0, len(keys), COLLECTION_MAX):
            chunk = keys[start : start + COLLECTION_MAX]
            body = {
                "allOrNone": False,
                "records": [{"attributes": {"type": sobject}, **rows[k]} for k in chunk],
            }
            verb = "create" if create else "update"
            try:
                results = self.client.call(
                    f"{verb} {len(chunk)} {sobject} records",
                    _collection_request("POST" if create else "PATCH", body),
                    retry_ambiguous=not (create and existing is not None),
                )
            except AmbiguousWrite as exc:
                log.warning("%s; reading the rows back before sending them again", exc)
                ambiguous += chunk
                continue
            if not isinstance(results, list) or len(results) != len(chunk):
                raise ConnectorError(f"{verb} {sobject}: unexpected collections response")
            for key, result in zip(chunk, results, strict=True):
                if result.get("success"):
                    saved.ok[key] = result.get("id")
                    continue
                code, message = record_error(result)
                if code == LOCK_ERROR:
                    locked.append(key)
                else:
                    saved.failed[key] = message
        return locked, ambiguous


def _collection_request(method: str, body: dict[str, Any]) -> Callable[[Any], Any]:
    """One sObject Collections request, for the client to send (and send again on a retry)."""
    return lambda sf: sf.restful("composite/sobjects", method=method, json=body)
