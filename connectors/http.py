"""The one request loop every vendor client runs its calls through.

A vendor supplies two things: its *classification* (what a failed request means, as a
`Verdict`) and its *limit check* (raise `QuotaExhausted` before a request when the allowance,
less our reserve, is spent; the vendor keeps that reading up to date from its answers). The loop
here does the rest, the same way for every vendor: one tenacity policy (attempts, exponential
back-off with a cap, injected sleep and jitter so tests never wait), credentials renewed once
when they expired, and every request, retry and throttle counted in the connector's
`CallStats`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from crm_elasticity.connectors.base import CallStats, ConnectorError

T = TypeVar("T")


class Outcome(Enum):
    RETRY = "retry"  # a passing failure (5xx, a timeout, a locked row): again after a back-off
    THROTTLE = "throttle"  # the vendor asks us to slow down: again after its wait or a back-off
    EXPIRED = "expired"  # the credentials expired: renew them once and send again at once
    QUOTA = "quota"  # the allowance (or our reserve of it) is spent: stop, resumable
    FATAL = "fatal"  # the vendor will refuse this again (or only the caller can tell): raise


@dataclass(frozen=True)
class Verdict:
    """What one failed request means and what the loop does next."""

    outcome: Outcome
    reason: str = ""
    """Why, for the message when the loop gives up retrying."""
    error: Exception | None = None
    """What to raise when the loop stops here (QUOTA, FATAL; EXPIRED with no renewal left)."""
    status: int | None = None
    wait: float | None = None
    """The wait the vendor named (a `Retry-After`), used as it is up to the policy's cap;
    otherwise the policy's exponential back-off."""
    base: float | None = None
    cap: float | None = None
    """Back-off overrides for this verdict (a throttle backs off longer than a 5xx)."""
    throttled: bool = False
    """Counted as a throttle even when it ends the call (a daily 429, a wait we refuse)."""

    @classmethod
    def retry(
        cls,
        reason: str,
        *,
        wait: float | None = None,
        status: int | None = None,
        base: float | None = None,
        cap: float | None = None,
    ) -> Verdict:
        return cls(Outcome.RETRY, reason, status=status, wait=wait, base=base, cap=cap)

    @classmethod
    def throttle(
        cls,
        reason: str,
        *,
        wait: float | None = None,
        status: int | None = None,
        base: float | None = None,
        cap: float | None = None,
    ) -> Verdict:
        return cls(
            Outcome.THROTTLE, reason, status=status, wait=wait, base=base, cap=cap, throttled=True
        )

    @classmethod
    def expired(cls, error: Exception) -> Verdict:
        return cls(Outcome.EXPIRED, str(error), error)

    @classmethod
    def quota(cls, error: Exception, *, throttled: bool = False) -> Verdict:
        return cls(Outcome.QUOTA, str(error), error, throttled=throttled)

    @classmethod
    def fatal(cls, error: Exception, *, throttled: bool = False) -> Verdict:
        return cls(Outcome.FATAL, str(error), error, throttled=throttled)


def backoff_delay(attempt: int, *, base: float, cap: float, jitter: float | None = None) -> float:
    """`base * 2^(attempt-1)` seconds, at most `cap`; with `jitter` in [0, 1), scaled into
    [50%, 100%) of that so clients that failed together do not retry together."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay if jitter is None else delay * (0.5 + jitter / 2)


@dataclass
class RetryPolicy:
    attempts: int
    base: float = 1.0
    cap: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = random.random

    def delay(self, attempt: int, verdict: Verdict | None = None) -> float:
        """The wait before attempt `attempt + 1`."""
        if verdict is not None and verdict.wait is not None:
            return min(verdict.wait, self.cap)
        base = verdict.base if verdict is not None and verdict.base is not None else self.base
        cap = verdict.cap if verdict is not None and verdict.cap is not None else self.cap
        return backoff_delay(attempt, base=base, cap=cap, jitter=self.jitter())


class _Again(Exception):
    """Internal: the attempt failed for a passing reason; tenacity tries again."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict


Classify = Callable[[Exception], Verdict | None]
"""A vendor's reading of an exception its request raised; None: not a vendor answer (the
exception propagates as it is)."""


def gave_up(what: str, attempts: int, verdict: Verdict) -> ConnectorError:
    return ConnectorError(
        f"{what}: gave up after {attempts} attempts: {verdict.reason}", retriable=True
    )


class VendorHttp:
    """The retry loop, shared by the vendor clients."""

    def __init__(
        self,
        policy: RetryPolicy,
        calls: CallStats,
        check_limits: Callable[[], None] | None = None,
        give_up: Callable[[str, int, Verdict], Exception] = gave_up,
    ) -> None:
        self.policy = policy
        self.calls = calls
        self.check_limits = check_limits
        self.give_up = give_up

    def call(
        self,
        what: str,
        send: Callable[[], T],
        classify: Classify,
        *,
        renew: Callable[[], None] | None = None,
    ) -> T:
        """`send()` under the policy. Before every request the vendor's limit check runs;
        a failure is classified and retried, renewed (once per attempt), or raised."""

        def attempt() -> T:
            renewed = False
            while True:
                if self.check_limits is not None:
                    self.check_limits()
                try:
                    return send()
                except Exception as exc:  # noqa: BLE001 - the vendor's classification decides
                    verdict = classify(exc)
                    if verdict is None:
                        raise
                if verdict.throttled:
                    self.calls.count("throttled")
                if verdict.outcome is Outcome.EXPIRED and renew is not None and not renewed:
                    renewed = True
                    renew()
                    continue
                if verdict.outcome in (Outcome.RETRY, Outcome.THROTTLE):
                    raise _Again(verdict) from None
                assert verdict.error is not None, (
                    f"a {verdict.outcome.value} verdict needs an error"
                )
                raise verdict.error from None

        retrying = Retrying(
            stop=stop_after_attempt(self.policy.attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Again),
            sleep=self.policy.sleep,
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Again as exc:
            raise self.give_up(what, self.policy.attempts, exc.verdict) from None

    def pause(self, seconds: float) -> None:
        """Wait before re-sending records an answer said failed for a passing reason (the
        request succeeded, some of its records did not): counted as a retry."""
        self.calls.count("retries")
        self.policy.sleep(seconds)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        verdict = exc.verdict if isinstance(exc, _Again) else None
        return self.policy.delay(state.attempt_number, verdict)

    def _count_retry(self, state: RetryCallState) -> None:
        self.calls.count("retries")
