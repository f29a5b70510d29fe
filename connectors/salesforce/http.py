"""The one `requests.Session` every Salesforce call goes through (REST, Bulk 2.0, token
grants and, by assignment, zeep's Metadata transport).

simple-salesforce passes no timeout on writes, so a stalled socket would hang a sync forever;
this session sets one on every request. It also counts API calls and keeps the latest
`Sforce-Limit-Info` reading, which the retry policy and the daily reserve need.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import requests

from crm_elasticity.connectors.salesforce.api_facts import NOT_API_CALLS

_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")


@dataclass
class ApiUsage:
    """The org's rolling 24-hour request allowance as Salesforce last reported it."""

    used: int
    total: int

    @property
    def remaining(self) -> int:
        return max(self.total - self.used, 0)

    def __str__(self) -> str:
        return f"{self.used}/{self.total} daily API requests used"


def parse_limit_info(header: str | None) -> ApiUsage | None:
    match = _USAGE.search(header or "")
    return ApiUsage(int(match.group(1)), int(match.group(2))) if match else None


class SalesforceSession(requests.Session):
    """Default timeouts, optional loopback rewrite, call counting and usage tracking."""

    def __init__(
        self,
        timeout: float = 60.0,
        rewrite_to: str | None = None,
        on_api_call: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.timeout = (min(timeout, 10.0), timeout)
        self.rewrite_to = urlsplit(rewrite_to) if rewrite_to else None
        self.on_api_call = on_api_call
        self.usage: ApiUsage | None = None
        self.usage_at = 0.0
        """`time.monotonic()` of the reading: a long-running server must not trust yesterday's."""

    def request(self, method, url, *args, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        url = self._rewritten(str(url))
        if self.on_api_call and not any(part in url for part in NOT_API_CALLS):
            self.on_api_call()
        response = super().request(method, url, *args, **kwargs)
        usage = parse_limit_info(response.headers.get("Sforce-Limit-Info"))
        if usage is not None:
            self.usage, self.usage_at = usage, time.monotonic()
        return response

    def _rewritten(self, url: str) -> str:
        if self.rewrite_to is None:
            return url
        parts = urlsplit(url)
        return urlunsplit(
            (
                self.rewrite_to.scheme,
                self.rewrite_to.netloc,
                parts.path,
                parts.query,
                parts.fragment,
            )
        )
