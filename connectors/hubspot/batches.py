"""Batch writes that survive partial failure: HTTP 207 and whole-batch 400s.

HubSpot answers a batch either 200 (all done), 207 (some records failed, named in `errors`)
or 400 `VALIDATION_ERROR` (one bad record fails the whole batch). We retry only the records
that failed for a passing reason, bisect a 400 down to the record that causes it, and return
the rest as permanent failures with HubSpot's own message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from crm_elasticity.connectors.hubspot.client import HubSpotClient, HubSpotError, Response

BATCH_SIZE = 100
RETRIABLE_CATEGORIES = frozenset(
    {"RATE_LIMIT", "RATE_LIMITS", "INTERNAL_ERROR", "LOCKED", "TIMEOUT", "SERVICE_UNAVAILABLE"}
)
MISSING_PROPERTY = ("PROPERTY_DOESNT_EXIST", "does not exist")

Input = dict[str, Any]
Send = Callable[[list[Input]], Response]


def chunks(items: list[Any], size: int = BATCH_SIZE) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def trace_key(item: Input) -> str:
    return str(item["objectWriteTraceId"])


def error_keys(error: dict[str, Any]) -> list[str]:
    context = error.get("context") or {}
    keys: list[str] = []
    for name in ("objectWriteTraceId", "ids", "id"):
        value = context.get(name) or []
        keys += [str(v) for v in (value if isinstance(value, list) else [value])]
    return keys


def error_message(error: dict[str, Any]) -> str:
    category = error.get("category") or error.get("subCategory") or "ERROR"
    return f"{category}: {error.get('message') or 'no message'}"[:1000]


class BatchWriter:
    def __init__(
        self, client: HubSpotClient, max_attempts: int = 3, retry_in_place: bool = True
    ) -> None:
        self.client = client
        self.max_attempts = max_attempts
        self.retry_in_place = retry_in_place
        """False for creates: a record HubSpot may have made must be looked up, not re-sent."""

    def write(
        self, inputs: list[Input], send: Send, what: str
    ) -> tuple[list[str], dict[str, str], dict[str, str]]:
        """Send one batch (<= 100 inputs, each with `objectWriteTraceId`); return the keys
        written, the permanent failures {key: message} and those still failing for a passing
        reason after every attempt {key: message}, which stay owed."""
        written: list[str] = []
        failed: dict[str, str] = {}
        pending = inputs
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = send(pending)
            except HubSpotError as exc:
                if exc.status != 400 or exc.retriable:
                    raise
                self._bisect(pending, send, what, exc, written, failed)
                return written, failed, {}
            ok, permanent, retry = outcome(response, pending)
            written += ok
            failed.update(permanent)
            if not retry:
                return written, failed, {}
            if not self.retry_in_place:
                raise HubSpotError(
                    f"{what}: {len(retry)} record(s) failed for a passing reason "
                    f"({next(iter(retry.values()))}); will retry later",
                    retriable=True,
                )
            if attempt == self.max_attempts:
                # A passing reason is no reason to drop the write: it stays owed.
                deferred = {
                    k: f"still failing after {attempt} attempts: {m}" for k, m in retry.items()
                }
                return written, failed, deferred
            self.client.backoff(attempt)
            pending = [i for i in pending if trace_key(i) in retry]
        return written, failed, {}

    def _bisect(
        self,
        pending: list[Input],
        send: Send,
        what: str,
        exc: HubSpotError,
        written: list[str],
        failed: dict[str, str],
    ) -> None:
        text = str(exc)
        if any(marker in text for marker in MISSING_PROPERTY):
            raise HubSpotError(
                f"{what}: {text}. A property the mapping names is missing in HubSpot; run "
                "`elasticity provision` for this mapping first.",
                status=400,
            ) from None
        if len(pending) == 1:
            failed[trace_key(pending[0])] = _message_of(exc)
            return
        suspects, pair = culprits(pending, text)
        if suspects and pair is not None:
            # Every suspect holds the very value HubSpot names: fail them without more calls.
            failed.update({trace_key(i): _message_of(exc) for i in suspects})
            rest = [i for i in pending if i not in suspects]
            halves = [rest] if rest else []
        else:
            middle = len(pending) // 2
            halves = [pending[:middle], pending[middle:]]
        for half in halves:
            ok, bad, later = self.write(half, send, what)
            written += ok
            failed.update(bad)
            # Bisecting happens only on a 400, which names no passing reason: keep any anyway.
            failed.update({k: f"not written: {m}" for k, m in later.items()})


def culprits(pending: list[Input], message: str) -> tuple[list[Input], tuple[str, str] | None]:
    """The inputs holding the (property, value) a 400 message names, if it names exactly one
    such pair; HubSpot's validation messages carry `"name":"<property>"` and the bad value."""
    named = set(re.findall(r'"name"\s*:\s*\\?"(\w+)', message))
    pairs: dict[tuple[str, str], list[Input]] = {}
    for item in pending:
        for prop in named:
            value = str((item.get("properties") or {}).get(prop) or "")
            if value and re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", message):
                pairs.setdefault((prop, value), []).append(item)
    if len(pairs) != 1:
        return [], None
    ((pair, items),) = pairs.items()
    return items, pair


def _message_of(exc: HubSpotError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    if body:
        return error_message(body)
    return str(exc)[:1000]


def outcome(
    response: Response, pending: list[Input]
) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Split a 200/207 answer into (written, permanent failures, retriable failures)."""
    data = response.data if isinstance(response.data, dict) else {}
    errors = data.get("errors") or []
    keys = [trace_key(i) for i in pending]
    permanent: dict[str, str] = {}
    retry: dict[str, str] = {}
    unnamed: list[dict] = []
    for error in errors:
        named = [k for k in error_keys(error) if k in keys]
        if not named:
            unnamed.append(error)
        target = retry if error.get("category") in RETRIABLE_CATEGORIES else permanent
        for key in named:
            target[key] = error_message(error)
    if unnamed:
        # Errors that name no record: whatever did not come back failed with them.
        returned = {
            str(r.get("objectWriteTraceId") or r.get("id")) for r in data.get("results") or []
        }
        for key in keys:
            if key not in returned and key not in permanent and key not in retry:
                error = unnamed[0]
                target = retry if error.get("category") in RETRIABLE_CATEGORIES else permanent
                target[key] = error_message(error)
    written = [k for k in keys if k not in permanent and k not in retry]
    return written, permanent, retry
