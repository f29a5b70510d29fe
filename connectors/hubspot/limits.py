"""Client-side rate limiting, so a sync runs at HubSpot's budget instead of into its 429s."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping

from crm_elasticity.connectors.base import QuotaExhausted

SEARCH = "search"
GENERAL = "general"

WINDOW_MARGIN = 0.02
MIN_MARGIN_SECONDS = 0.05
"""Our clock starts a request's slot before HubSpot's does (it stamps on arrival, and arrival
jitters): a window 2% (at least 50 ms) longer absorbs that without a visible loss of speed."""


class SlidingWindowLimiter:
    """At most `limit` requests in any rolling `window` seconds, shared by threads.

    `clock` and `sleep` are injectable so tests run without waiting.
    """

    def __init__(
        self,
        limit: int,
        window: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.limit = limit
        self.base_window = window
        self.margin = max(window * WINDOW_MARGIN, MIN_MARGIN_SECONDS)
        self.window = window + self.margin
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._paused_until = 0.0
        self._lock = threading.Lock()
        self.waited = 0.0

    def acquire(self) -> None:
        # The lock is held while sleeping on purpose: waiters queue in order, none overtakes.
        with self._lock:
            while True:
                now = self._clock()
                if now < self._paused_until:
                    self._wait(self._paused_until - now)
                    continue
                while self._sent and self._sent[0] <= now - self.window:
                    self._sent.popleft()
                if len(self._sent) < self.limit:
                    self._sent.append(now)
                    return
                self._wait(self._sent[0] + self.window - now)

    def _wait(self, seconds: float) -> None:
        seconds = max(seconds, 0.001)
        self.waited += seconds
        self._sleep(seconds)

    def pause(self, seconds: float) -> None:
        """Hold every caller back (after a 429: the server knows better than our count), and
        widen the margin: the server's clock disagrees with ours by more than we allowed."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
            self.margin = min(self.base_window * 0.25, self.margin * 1.5)
            self.window = self.base_window + self.margin

    def observe(self, remaining: int | None, maximum: int | None) -> None:
        """Adopt the server's view of the budget when it is tighter than ours: another process
        using the same app, or a configured limit above the account's tier."""
        with self._lock:
            if maximum is not None and 0 < maximum < self.limit:
                self.limit = maximum
            if remaining is None:
                return
            now = self._clock()
            while self._sent and self._sent[0] <= now - self.window:
                self._sent.popleft()
            for _ in range(self.limit - len(self._sent) - max(remaining, 0)):
                self._sent.append(now)


def header_int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


class RateLimits:
    """HubSpot's limit observer: the general (rolling 10 s) and search (per second) budgets,
    kept in step with the rate headers of each answer, and the daily allowance less our
    reserve, checked before every request."""

    def __init__(
        self,
        requests_per_10s: int,
        search_per_second: float,
        daily_reserve: int,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.general = SlidingWindowLimiter(requests_per_10s, 10.0, clock, sleep)
        per_second = max(1, int(search_per_second))
        self.search = SlidingWindowLimiter(per_second, per_second / search_per_second, clock, sleep)
        self.daily_reserve = daily_reserve
        self.daily_exhausted = False

    def limiter(self, budget: str) -> SlidingWindowLimiter:
        return self.search if budget == SEARCH else self.general

    def check(self) -> None:
        if self.daily_exhausted:
            raise QuotaExhausted("HubSpot's daily API allowance (less our reserve) is spent")

    def observe(self, headers: Mapping[str, str], budget: str) -> None:
        """An answer's `X-HubSpot-RateLimit-*` headers (search answers carry none)."""
        daily_left = header_int(headers.get("x-hubspot-ratelimit-daily-remaining"))
        if daily_left is not None and daily_left <= self.daily_reserve:
            self.daily_exhausted = True
        if budget == GENERAL:
            self.general.observe(
                header_int(headers.get("x-hubspot-ratelimit-remaining")),
                header_int(headers.get("x-hubspot-ratelimit-max")),
            )
