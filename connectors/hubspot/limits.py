"""Client-side rate limiting, so a sync runs at HubSpot's budget instead of into its 429s."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

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
