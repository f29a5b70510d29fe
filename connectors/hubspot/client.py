"""The one door to HubSpot: what its errors mean, and its rate limits.

Every request goes through `HubSpotClient.call`, which asks the SDK for the raw response
(`_preload_content=False`: we parse JSON ourselves, much faster than the SDK's models, and we
see the rate-limit headers), always with a timeout, and runs it through the shared request loop
(`connectors.http`: retries with tenacity — never with urllib3's `Retry`, which skips POSTs and
hides the 429 body — and call counting). This module supplies HubSpot's classification of a
failed request; `limits.RateLimits` is its limit observer.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from hubspot import HubSpot

from crm_elasticity.connectors.base import AuthError, CallStats, ConnectorError, QuotaExhausted
from crm_elasticity.connectors.http import RetryPolicy, VendorHttp, Verdict, backoff_delay
from crm_elasticity.connectors.hubspot.config import HubSpotSettings
from crm_elasticity.connectors.hubspot.limits import GENERAL, SEARCH, RateLimits


class EmailEventsApi:
    """The legacy email events endpoint, which the SDK has no class for. Sent through an SDK
    API client, so it shares the thread's connection pool, the token and the SDK's errors."""

    PATH = "/email/public/v1/events"

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def get_page(
        self, *, _preload_content: bool = False, _request_timeout: Any = None, **query: Any
    ) -> Any:
        params = [(name, value) for name, value in query.items() if value is not None]
        return self.api_client.call_api(
            self.PATH,
            "GET",
            query_params=params,
            header_params={"Accept": "application/json"},
            auth_settings=["oauth2"],
            response_types_map={},
            _return_http_data_only=False,
            _preload_content=_preload_content,
            _request_timeout=_request_timeout,
        )


# SDK attribute paths of the APIs we use, reached from a `HubSpot` client.
APIS: dict[str, Callable[[HubSpot], Any]] = {
    "contacts.batch": lambda c: c.crm.contacts.batch_api,
    "contacts.search": lambda c: c.crm.contacts.search_api,
    "contacts.basic": lambda c: c.crm.contacts.basic_api,
    "tasks.batch": lambda c: c.crm.objects.tasks.batch_api,
    "tasks.search": lambda c: c.crm.objects.tasks.search_api,
    "properties.core": lambda c: c.crm.properties.core_api,
    "properties.groups": lambda c: c.crm.properties.groups_api,
    "lists": lambda c: c.crm.lists.lists_api,
    "email.events": lambda c: EmailEventsApi(c.crm.contacts.batch_api.api_client),
    "events": lambda c: c.events.events_api,  # web analytics events (page views), `history`
}

RETRIABLE_STATUSES = frozenset({423, 477, 500, 502, 503, 504, 520, 521, 522, 523, 524})
_SAFE_NETWORK_ERRORS = (
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ConnectTimeoutError,
)
"""The request never left: retrying cannot duplicate anything."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    data: Any


class HubSpotError(ConnectorError):
    """A request HubSpot answered with an error we do not retry (or stopped retrying)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retriable: bool = False,
        category: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message, status=status, retriable=retriable)
        self.category = category
        self.body = body


class _CutOff(Exception):
    """Internal: the answer's body stalled or was cut off while being read."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(type(cause).__name__)


def _json_body(raw: Any) -> Any:
    if raw is None or raw == b"" or raw == "":
        return None
    try:
        return json.loads(raw)
    except (ValueError, TypeError):
        return None


def _headers(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    return {str(k).lower(): str(v) for k, v in dict(raw).items()}


def required_scopes(body: Any) -> list[str]:
    """The scopes a 403 body names (`errors[].context.requiredGranularScopes` and kin)."""
    found: list[str] = []
    if not isinstance(body, dict):
        return found
    for detail in [body, *(body.get("errors") or [])]:
        context = detail.get("context") if isinstance(detail, dict) else None
        for key in ("requiredGranularScopes", "requiredScopes", "requiredScope"):
            for scope in (context or {}).get(key) or []:
                if scope not in found:
                    found.append(scope)
    return found


class HubSpotClient:
    def __init__(
        self,
        settings: HubSpotSettings,
        calls: CallStats | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.calls = calls if calls is not None else CallStats()
        self.limits = RateLimits(
            settings.requests_per_10s,
            settings.search_per_second,
            settings.daily_reserve,
            clock,
            sleep,
        )
        policy = RetryPolicy(
            settings.max_attempts,
            base=0.5,
            cap=settings.max_wait_seconds,
            sleep=sleep,
            jitter=jitter,
        )
        self.http = VendorHttp(policy, self.calls, check_limits=self.limits.check, give_up=_gave_up)
        self._local = threading.local()
        self._timeout = (min(10.0, settings.timeout_seconds), settings.timeout_seconds)

    # ---- SDK plumbing ----------------------------------------------------------------------

    def api(self, name: str) -> Any:
        """The SDK API object, one per thread: each owns a urllib3 pool we want to reuse."""
        cache = getattr(self._local, "apis", None)
        if cache is None:
            sdk = HubSpot(
                access_token=self.settings.access_token.get_secret_value(),
                host=self.settings.base_url,
                retry=False,  # urllib3 raises the real error; the shared loop decides
            )
            cache = self._local.apis = {"sdk": sdk}
        if name not in cache:
            cache[name] = APIS[name](cache["sdk"])
        return cache[name]

    # ---- the call ----------------------------------------------------------------------------

    def call(
        self,
        api: str,
        method: str,
        *args: Any,
        what: str,
        scope: str,
        budget: str = GENERAL,
        idempotent: bool = True,
        **kwargs: Any,
    ) -> Response:
        """One logical request with retries. `what` and `scope` make failures explainable."""

        def send() -> Response:
            # Build the SDK client first: a thread's first one takes long enough to make our
            # stamp in the limiter disagree with the server's, and earn a 429.
            fn = getattr(self.api(api), method)
            self.limits.limiter(budget).acquire()
            self.calls.count("api_calls")
            raw = fn(*args, _preload_content=False, _request_timeout=self._timeout, **kwargs)
            headers = _headers(raw.headers)
            self.limits.observe(headers, budget)
            try:
                # Unpreloaded: the body is read here, and a stall or cut-off can still happen.
                data = raw.data
            except urllib3.exceptions.HTTPError as exc:
                raise _CutOff(exc) from None
            return Response(raw.status, headers, _json_body(data))

        return self.http.call(
            what, send, lambda exc: self._classify(exc, what, scope, budget, idempotent)
        )

    def _classify(
        self, exc: Exception, what: str, scope: str, budget: str, idempotent: bool
    ) -> Verdict | None:
        """The only place that decides what a HubSpot error means."""
        if isinstance(exc, _CutOff):
            if idempotent:
                return Verdict.retry(f"network error reading the answer: {exc}")
            return Verdict.fatal(
                HubSpotError(f"{what}: answer cut off ({exc}); will retry later", retriable=True)
            )
        if isinstance(exc, urllib3.exceptions.HTTPError):
            # Timeouts and dropped connections: only safe to repeat if nothing can double.
            if idempotent or isinstance(exc, _SAFE_NETWORK_ERRORS):
                return Verdict.retry(f"network error: {type(exc).__name__}")
            return Verdict.fatal(
                HubSpotError(
                    f"{what}: no answer ({type(exc).__name__}); will retry later", retriable=True
                )
            )
        if not hasattr(exc, "status"):  # every SDK package has its own ApiException
            return None
        status = int(getattr(exc, "status", 0) or 0)
        headers = _headers(getattr(exc, "headers", None))
        body = _json_body(getattr(exc, "body", None))
        info = body if isinstance(body, dict) else {}
        message = self._redact(str(info.get("message") or getattr(exc, "reason", "") or ""))
        category = info.get("category") or info.get("errorType")
        if status == 401:
            # A private app token does not renew: expired credentials end the call.
            return Verdict.expired(
                AuthError(
                    f"{what}: HubSpot refused the access token (401): it is invalid, expired or "
                    "revoked. Check HUBSPOT_ACCESS_TOKEN (a private app token starts with "
                    "'pat-').",
                    status=401,
                )
            )
        if status == 403:
            scopes = required_scopes(body) or [scope]
            return Verdict.fatal(
                AuthError(
                    f"{what}: HubSpot denied the request (403): the app is missing the scope "
                    f"{', '.join(scopes)}. Add it to the private app's scopes and update the "
                    "token.",
                    status=403,
                )
            )
        if status == 429:
            return self._throttled(headers, info, message, budget)
        retry_after = _retry_after(headers)
        if status in RETRIABLE_STATUSES or status == 0:
            if not idempotent and status not in (423, 477):
                return Verdict.fatal(
                    HubSpotError(
                        f"{what}: HubSpot {status}; will retry later", status=status, retriable=True
                    )
                )
            wait = retry_after if retry_after is not None else (2.0 if status == 423 else None)
            return Verdict.retry(f"HubSpot {status}", wait=wait, status=status)
        correlation = info.get("correlationId")
        detail = f"HubSpot {status} {category or ''}: {message}".replace("  ", " ")
        return Verdict.fatal(
            HubSpotError(
                f"{what}: {detail}" + (f" (correlationId {correlation})" if correlation else ""),
                status=status,
                category=category,
                body=body,
            )
        )

    def _throttled(self, headers: dict[str, str], info: dict, message: str, budget: str) -> Verdict:
        policy = str(info.get("policyName") or "")
        if policy == "DAILY" or "daily" in message.lower():
            self.limits.daily_exhausted = True
            return Verdict.quota(
                QuotaExhausted(f"HubSpot's daily API limit is reached ({message})", status=429),
                throttled=True,
            )
        retry_after = _retry_after(headers)
        secondly = budget == SEARCH or (
            "secondly" in message.lower() and policy != "TEN_SECONDLY_ROLLING"
        )
        wait = retry_after if retry_after is not None else (1.0 if secondly else 10.0)
        if wait > self.settings.max_wait_seconds:
            return Verdict.fatal(
                HubSpotError(
                    f"HubSpot asks us to wait {wait:.0f} s; stopping, resumable",
                    status=429,
                    retriable=True,
                ),
                throttled=True,
            )
        self.limits.limiter(budget).pause(wait)
        # The limiter's pause holds every thread back; the retry itself waits no longer.
        return Verdict.throttle(f"HubSpot 429 {policy or 'rate limit'}", wait=0.0, status=429)

    def backoff(self, attempt: int) -> None:
        """Wait before re-sending records a batch answer said failed for a passing reason."""
        self.http.pause(backoff_delay(attempt, base=0.5, cap=self.settings.max_wait_seconds))

    def _redact(self, text: str) -> str:
        secrets = [self.settings.access_token.get_secret_value()]
        if self.settings.client_secret is not None:
            secrets.append(self.settings.client_secret.get_secret_value())
        for secret in secrets:
            if secret:
                text = text.replace(secret, "[redacted]")
        return text[:1000]


def _gave_up(what: str, attempts: int, verdict: Verdict) -> HubSpotError:
    return HubSpotError(
        f"{what}: gave up after {attempts} attempts ({verdict.reason})",
        status=verdict.status,
        retriable=True,
    )


def _retry_after(headers: dict[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
