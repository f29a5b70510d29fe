"""Sessions and what Salesforce's errors mean: one place that talks to simple-salesforce.

The SDK is built in "direct" mode (a ready session id) so it never refreshes by itself: its
own refresh recurses without bound in `SFType` and leaves `bulk2`/`mdapi` on the old token.
Instead an expired session is re-granted here once and the whole client rebuilt. Every call
runs through the shared request loop (`connectors.http`: one tenacity policy whose sleep and
jitter are injectable, so tests never wait); this module supplies its classification of a
failure and its limit check (the daily reserve, from the `Sforce-Limit-Info` the session keeps).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from simple_salesforce import Salesforce, SalesforceLogin
from simple_salesforce.exceptions import SalesforceAuthenticationFailed, SalesforceError
from simple_salesforce.format import format_soql
from simple_salesforce.util import exception_handler

from crm_elasticity.connectors.base import AuthError, CallStats, ConnectorError, QuotaExhausted
from crm_elasticity.connectors.http import Outcome, RetryPolicy, VendorHttp, Verdict
from crm_elasticity.connectors.salesforce.api_facts import QUERY_LINE_BUDGET
from crm_elasticity.connectors.salesforce.config import Credentials, SalesforceOptions
from crm_elasticity.connectors.salesforce.errors import SOAP_ERRORS, classify, describe
from crm_elasticity.connectors.salesforce.http import ApiUsage, SalesforceSession
from crm_elasticity.connectors.salesforce.soql import in_chunks, request_line_bytes

log = logging.getLogger(__name__)
T = TypeVar("T")
USAGE_STALE_SECONDS = 300.0


class AmbiguousWrite(ConnectorError):
    """A write timed out or failed with a 5xx: Salesforce may have committed it. Only the
    caller can tell (by reading back what it wrote), so it is not retried blindly."""

    def __init__(self, what: str, cause: Exception) -> None:
        super().__init__(f"{what}: {describe(cause)}; it may have been applied", retriable=True)


class SalesforceClient:
    def __init__(
        self,
        credentials: Credentials,
        options: SalesforceOptions,
        stats: CallStats,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.credentials = credentials
        self.options = options
        self.stats = stats
        self.session = SalesforceSession(
            options.timeout_seconds, credentials.rewrite_to, on_api_call=self._count
        )
        self.policy = RetryPolicy(
            options.max_attempts, base=1.0, cap=30.0, sleep=sleep, jitter=jitter
        )
        self.http = VendorHttp(self.policy, stats, check_limits=self.check_reserve)
        self.grants = 0
        self._sf: Salesforce | None = None

    def _count(self) -> None:
        self.stats.count("api_calls")

    # ---- sessions --------------------------------------------------------------------------

    @property
    def sf(self) -> Salesforce:
        if self._sf is None:
            self._sf = self._connect()
        return self._sf

    def _connect(self) -> Salesforce:
        token, instance = self._grant()
        sf = Salesforce(
            instance_url=f"https://{instance}",
            session_id=token,
            session=self.session,
            version=self.options.api_version,
        )
        return sf

    def _grant(self) -> tuple[str, str]:
        c = self.credentials
        if c.kind == "token":
            assert c.access_token is not None
            assert c.instance_url is not None
            return c.access_token.get_secret_value(), urlsplit(c.instance_url).netloc
        self.grants += 1
        try:
            if c.kind == "jwt":
                return SalesforceLogin(
                    username=c.username,
                    consumer_key=c.consumer_key,
                    domain=c.domain,
                    privatekey_file=str(c.private_key_file),
                    instance_url=c.my_domain_prefix,
                    session=self.session,
                    sf_version=self.options.api_version,
                )
            assert c.password is not None
            assert c.security_token is not None
            if self.grants == 1:
                log.warning(
                    "signing in with the SOAP API login() call, which Salesforce retires in "
                    "Summer '27 (and is off by default in orgs created from Winter '26); "
                    "move to the JWT bearer flow (see the README)"
                )
            return SalesforceLogin(
                username=c.username,
                password=c.password.get_secret_value(),
                security_token=c.security_token.get_secret_value(),
                domain=c.domain,
                session=self.session,
                sf_version=self.options.api_version,
            )
        except SalesforceAuthenticationFailed as exc:
            raise AuthError(
                f"Salesforce refused the {c.kind} grant for {c.username}: {_auth_reason(exc)}",
                status=401,
            ) from None
        except requests.RequestException as exc:
            raise ConnectorError(
                f"could not reach the Salesforce token endpoint: {type(exc).__name__}",
                retriable=True,
            ) from None

    def _regrant(self) -> None:
        if not self.credentials.can_regrant:
            raise AuthError(
                "SALESFORCE_ACCESS_TOKEN has expired or was revoked; set a new one, "
                "or configure JWT bearer auth so sessions renew",
                status=401,
            )
        log.info("Salesforce session expired; granting a new one")
        self._sf = None
        _ = self.sf

    @property
    def usage(self) -> ApiUsage | None:
        return self.session.usage

    # ---- calls -----------------------------------------------------------------------------

    def call(self, what: str, fn: Callable[[Salesforce], T], *, retry_ambiguous: bool = True) -> T:
        """Run `fn(sf)` under the retry policy; raise ConnectorError/AuthError/QuotaExhausted.

        `retry_ambiguous=False` is for writes that are not idempotent (creating records,
        creating or filling a Bulk job): a timeout or 5xx raises `AmbiguousWrite` at once, for
        the caller to check what landed before trying again. Refusals that say nothing was
        applied (throttling, an expired session) are still retried here."""
        return self.http.call(
            what,
            lambda: fn(self.sf),
            lambda exc: self._classify(what, exc, retry_ambiguous),
            renew=self._regrant,
        )

    def _classify(self, what: str, exc: Exception, retry_ambiguous: bool) -> Verdict | None:
        if not isinstance(exc, (SalesforceError, requests.RequestException, *SOAP_ERRORS)):
            return None
        outcome = classify(exc, self.usage)
        if outcome is None:
            self._read_limits()
            outcome = classify(exc, self.usage)
        if outcome is Outcome.RETRY and not retry_ambiguous:
            return Verdict.fatal(AmbiguousWrite(what, exc))
        return self._verdict(what, exc, outcome)

    def _verdict(self, what: str, exc: Exception, outcome: Outcome | None) -> Verdict:
        status = getattr(exc, "status", None)
        if outcome is Outcome.RETRY:
            return Verdict.retry(describe(exc), base=1.0, cap=30.0)
        if outcome is Outcome.THROTTLE:
            log.warning("Salesforce throttled %s (%s); backing off", what, self.usage)
            return Verdict.throttle(describe(exc), base=5.0, cap=120.0)
        if outcome is Outcome.QUOTA:
            return Verdict.quota(
                QuotaExhausted(
                    f"{what}: the org's daily API allowance is spent ({self.usage})", status=status
                )
            )
        if outcome is Outcome.EXPIRED:
            return Verdict.expired(
                AuthError(
                    f"{what}: Salesforce refused a freshly granted session: {describe(exc)}",
                    status=status,
                )
            )
        return Verdict.fatal(ConnectorError(f"{what}: {describe(exc)}", status=status))

    def check_reserve(self) -> None:
        """Stop before the org's other integrations are starved of requests."""
        usage = self.usage
        if usage is None or usage.total <= 0:
            return
        reserve = usage.total * self.options.api_reserve_percent / 100
        if usage.remaining < reserve and self._stale():
            self._read_limits()  # the rolling 24 hours may have freed requests since
            usage = self.usage or usage
        if usage.remaining < reserve:
            raise QuotaExhausted(
                f"stopping to keep {self.options.api_reserve_percent:g}% of the org's daily API "
                f"allowance for other integrations ({usage})"
            )

    def _stale(self) -> bool:
        return time.monotonic() - self.session.usage_at > USAGE_STALE_SECONDS

    def _read_limits(self) -> None:
        """`Sforce-Limit-Info` was missing; `/limits` tells the daily cap from concurrency."""
        try:
            limits = self.sf.limits()
        except (SalesforceError, requests.RequestException):
            return
        daily = (limits or {}).get("DailyApiRequests") or {}
        if "Max" in daily and "Remaining" in daily:
            self.session.usage = ApiUsage(daily["Max"] - daily["Remaining"], daily["Max"])
            self.session.usage_at = time.monotonic()

    def metadata(self, sf: Salesforce) -> Any:
        """`sf.mdapi`, on our session: zeep makes its own `requests.Session` otherwise, with
        no timeout and no loopback rewrite."""
        mdapi = sf.mdapi
        mdapi._client.transport.session = self.session  # noqa: SLF001 - the only seam zeep has
        return mdapi

    # ---- request shapes the SDK lacks ------------------------------------------------------

    def raw(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A request under the data API base URL, raising the SDK's exceptions on failure."""
        sf = self.sf
        headers = {**sf.headers, **kwargs.pop("headers", {})}
        response = self.session.request(method, sf.base_url + path, headers=headers, **kwargs)
        if response.status_code >= 300:
            exception_handler(response, name=path)
        return response

    def lookup(self, what: str, soql: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """A small query with its values quoted by `format_soql`. It cannot resume from an
        id, so a page that fails re-reads it whole: the rows read before are dropped."""
        text = format_soql(soql, *args, **kwargs)
        rows: list[dict[str, Any]] = []
        for row in self.query(what, lambda _: text, None, on_restart=rows.clear):
            rows.append(row)
        return rows

    def lookup_in(
        self, what: str, soql: str, values: Sequence[str], name: str, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """Rows of `soql` whose `{name}` placeholder is an `IN` list, for any number of
        `values`: one query per chunk that fits the URI budget."""
        rows: list[dict[str, Any]] = []

        def render(chunk: list[str]) -> str:
            return format_soql(soql, **{name: chunk}, **kwargs)

        for chunk in in_chunks(values, render, self.options.api_version):
            rows += self.lookup(what, soql, **{name: chunk}, **kwargs)
        return rows

    def query(
        self,
        what: str,
        soql_after: Callable[[str | None], str],
        after: str | None,
        on_restart: Callable[[], None] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Records of an `ORDER BY Id` query through `query_all_iter` (paged by
        `nextRecordsUrl`). A failed page re-issues the query from the last id seen, under the
        retry policy, so no record is read twice or skipped; `on_restart` is called before
        each issue of the query (for a caller whose query starts over)."""
        headers = {"Sforce-Query-Options": f"batchSize={self.options.page_size}"}
        last = after
        records: Iterator[dict[str, Any]] | None = None

        def restart(sf: Salesforce) -> Any:
            nonlocal records
            soql = soql_after(last)
            size = request_line_bytes(soql, self.options.api_version)
            if size > QUERY_LINE_BUDGET:
                raise ConnectorError(
                    f"{what}: the SOQL needs {size} bytes of URI, over the {QUERY_LINE_BUDGET} "
                    "this connector sends (Salesforce refuses a URI plus headers over 16,384 "
                    "bytes); the mapping selects too many or too long fields or values"
                )
            if on_restart is not None:
                on_restart()
            records = sf.query_all_iter(soql, headers=headers)
            return next(records, _END)

        record: Any = self.call(what, restart)
        while record is not _END:
            last = record["Id"]
            yield _plain(record)
            self.check_reserve()
            try:
                record = next(records, _END)  # type: ignore[arg-type]
            except (SalesforceError, requests.RequestException) as exc:
                if classify(exc, self.usage) is Outcome.FATAL:
                    raise ConnectorError(
                        f"{what}: {describe(exc)}", status=getattr(exc, "status", None)
                    ) from None
                record = self.call(what, restart)


_END = object()


def _auth_reason(exc: SalesforceAuthenticationFailed) -> str:
    """The token endpoint's `error: description`, or a SOAP login's faultstring."""
    match = re.search(r"<faultstring>(.*?)</faultstring>", exc.auth_message or "", re.S)
    reason = match.group(1) if match else exc.auth_message
    return f"{exc.code}: {reason}" if exc.code else str(reason)[:300]


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "attributes"}
