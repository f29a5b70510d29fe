"""Every Salesforce failure is classified here, once, by what the caller does next."""

from __future__ import annotations

from enum import Enum
from typing import Any

import requests
from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceExpiredSession,
)
from zeep.exceptions import Fault, TransportError

from connectors.salesforce.http import ApiUsage
from connectors.salesforce.settings import LIMIT_ERROR, LOCK_ERROR, SESSION_ERROR


class Verdict(Enum):
    RETRY = "retry"  # 5xx, timeouts, a locked row: try again soon
    THROTTLE = "throttle"  # concurrency cap: back off for longer
    LIMIT_UNKNOWN = "limit_unknown"  # REQUEST_LIMIT_EXCEEDED with no usage reading yet
    DAILY_LIMIT = "daily_limit"  # the org's 24-hour allowance is spent: stop, resumable
    EXPIRED = "expired"  # session expired: re-grant once
    FATAL = "fatal"  # a request Salesforce will refuse again


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


def classify(exc: Exception, usage: ApiUsage | None) -> Verdict:
    if isinstance(exc, requests.Timeout | requests.ConnectionError):
        return Verdict.RETRY
    if isinstance(exc, Fault | TransportError):
        return _classify_soap(exc, usage)
    if not isinstance(exc, SalesforceError):
        return Verdict.FATAL
    code = error_code(exc.content)
    if isinstance(exc, SalesforceExpiredSession) or code == SESSION_ERROR:
        return Verdict.EXPIRED
    if code == LIMIT_ERROR:
        # The same code means "daily allowance spent" or "too many long-running requests".
        if usage is None:
            return Verdict.LIMIT_UNKNOWN
        return Verdict.DAILY_LIMIT if usage.used >= usage.total else Verdict.THROTTLE
    if code == LOCK_ERROR or (exc.status or 0) >= 500:
        return Verdict.RETRY
    return Verdict.FATAL


def _classify_soap(exc: Fault | TransportError, usage: ApiUsage | None) -> Verdict:
    """The Metadata API answers in SOAP faults (`sf:INVALID_SESSION_ID`) through zeep."""
    if isinstance(exc, TransportError):
        return Verdict.RETRY if exc.status_code >= 500 else Verdict.FATAL
    text = f"{exc.code or ''} {exc.message or ''}"
    if SESSION_ERROR in text:
        return Verdict.EXPIRED
    if LIMIT_ERROR in text:
        if usage is None:
            return Verdict.LIMIT_UNKNOWN
        return Verdict.DAILY_LIMIT if usage.used >= usage.total else Verdict.THROTTLE
    return Verdict.FATAL


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
