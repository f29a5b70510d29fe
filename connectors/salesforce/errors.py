"""Every Salesforce failure is classified here, once, by what the caller does next: an
`Outcome` of the shared request loop (`connectors.http`), or None for `REQUEST_LIMIT_EXCEEDED`
with no usage reading yet (the same code means "daily allowance spent" or "too many
long-running requests": read `/limits` and classify again)."""

from __future__ import annotations

from typing import Any

import requests
from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceExpiredSession,
)
from zeep.exceptions import Fault, TransportError

from crm_elasticity.connectors.http import Outcome
from crm_elasticity.connectors.salesforce.api_facts import LIMIT_ERROR, LOCK_ERROR, SESSION_ERROR
from crm_elasticity.connectors.salesforce.http import ApiUsage


def error_code(content: Any) -> str | None:
    """`[{"message","errorCode","fields"}]` at the top level; `statusCode` inside results."""
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return content[0].get("errorCode") or content[0].get("statusCode")
    if isinstance(content, dict):
        return content.get("errorCode") or content.get("error")
    return None


def error_message(content: Any) -> str:
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return "; ".join(str(item.get("message", "")) for item in content)
    if isinstance(content, dict):
        return str(content.get("message") or content.get("error_description") or "")
    return str(content)[:300]


def classify(exc: Exception, usage: ApiUsage | None) -> Outcome | None:
    if isinstance(exc, requests.Timeout | requests.ConnectionError):
        return Outcome.RETRY  # 5xx, timeouts, a locked row: try again soon
    if isinstance(exc, Fault | TransportError):
        return _classify_soap(exc, usage)
    if not isinstance(exc, SalesforceError):
        return Outcome.FATAL
    code = error_code(exc.content)
    if isinstance(exc, SalesforceExpiredSession) or code == SESSION_ERROR:
        return Outcome.EXPIRED
    if code == LIMIT_ERROR:
        return _limit(usage)
    if code == LOCK_ERROR or (exc.status or 0) >= 500:
        return Outcome.RETRY
    return Outcome.FATAL


def _limit(usage: ApiUsage | None) -> Outcome | None:
    """The daily allowance spent (stop, resumable), or the concurrency cap (back off longer)."""
    if usage is None:
        return None
    return Outcome.QUOTA if usage.used >= usage.total else Outcome.THROTTLE


def _classify_soap(exc: Fault | TransportError, usage: ApiUsage | None) -> Outcome | None:
    """The Metadata API answers in SOAP faults (`sf:INVALID_SESSION_ID`) through zeep."""
    if isinstance(exc, TransportError):
        return Outcome.RETRY if exc.status_code >= 500 else Outcome.FATAL
    text = f"{exc.code or ''} {exc.message or ''}"
    if SESSION_ERROR in text:
        return Outcome.EXPIRED
    if LIMIT_ERROR in text:
        return _limit(usage)
    return Outcome.FATAL


SOAP_ERRORS = (Fault, TransportError)


def describe(exc: Exception) -> str:
    """What Salesforce said, without URLs, headers or tokens."""
    if isinstance(exc, SalesforceError):
        code = error_code(exc.content)
        message = error_message(exc.content)
        return (
            f"HTTP {exc.status}"
            + (f" {code}" if code else "")
            + (f": {message}" if message else "")
        )
    if isinstance(exc, Fault):
        return f"Metadata API fault {exc.code}: {exc.message}"
    if isinstance(exc, TransportError):
        return f"Metadata API HTTP {exc.status_code}"
    if isinstance(exc, requests.RequestException):
        return f"{type(exc).__name__} talking to Salesforce"
    return type(exc).__name__
