"""sObject Collections: up to 200 records a request, `allOrNone: false`, results in request
order. Rows Salesforce could not lock are retried, alone and with jitter; every other
per-record error is returned with Salesforce's message."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.base import ConnectorError
from connectors.salesforce.client import SalesforceClient
from connectors.salesforce.settings import COLLECTION_MAX, LOCK_ERROR

log = logging.getLogger(__name__)


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
    def __init__(
        self,
        client: SalesforceClient,
        sleep: Callable[[float], None],
        jitter: Callable[[], float],
    ) -> None:
        self.client = client
        self.sleep = sleep
        self.jitter = jitter

    def save(self, sobject: str, rows: dict[str, dict[str, Any]], create: bool = False) -> Saved:
        """Update (rows carry `Id`) or create records; keys are the caller's names for rows."""
        saved = Saved()
        pending = dict(rows)
        rounds = self.client.options.max_attempts
        for round_no in range(rounds):
            locked = self._one_round(sobject, pending, create, saved)
            if not locked:
                return saved
            pending = {key: rows[key] for key in locked}
            if round_no + 1 < rounds:
                self.client.stats.retries += 1
                delay = min(10.0, 0.5 * 2**round_no) * (0.5 + self.jitter() / 2)
                log.info("%d %s rows locked; retrying them in %.1fs", len(locked), sobject, delay)
                self.sleep(delay)
        raise ConnectorError(
            f"{len(pending)} {sobject} record(s) stayed locked (UNABLE_TO_LOCK_ROW) after "
            f"{rounds} attempts; the writes stay owed and are retried on the next sync",
            retriable=True,
        )

    def _one_round(
        self, sobject: str, rows: dict[str, dict[str, Any]], create: bool, saved: Saved
    ) -> list[str]:
        keys = list(rows)
        locked: list[str] = []
        for start in range(0, len(keys), COLLECTION_MAX):
            chunk = keys[start : start + COLLECTION_MAX]
            body = {
                "allOrNone": False,
                "records": [{"attributes": {"type": sobject}, **rows[k]} for k in chunk],
            }
            verb = "create" if create else "update"
            results = self.client.call(
                f"{verb} {len(chunk)} {sobject} records",
                lambda sf, b=body: sf.restful(
                    "composite/sobjects", method="POST" if create else "PATCH", json=b
                ),
            )
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
        return locked
