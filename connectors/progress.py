"""Progress of a long command (`replay`, `simulate`) on stderr: the phase it is in, how much is
done of how much (bytes labelled as bytes), the rate and the time left.

On a terminal it is a live bar that disappears when the command ends; otherwise (CI logs, a
file, a pipe) it is plain lines: one when a phase starts and one every `every` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PHASES = {
    "reading": "reading and deciding events",
    "writing": "writing the store",
    "deciding": "deciding day by day",
    "summarising": "summarising the ledger",
    "plotting": "plotting",
    "states": "writing states",
}
"""What each phase a run reports is called on screen."""


def size_text(n: float) -> str:
    """A byte count, labelled: 512 B, 12.3 kB, 45.6 MB (decimal units, as rich's bar)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def duration_text(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunProgress:
    """`with RunProgress(err, "replay", total, unit="bytes") as p:` then `p.phase("writing")`
    and `p.update(done, lines=n)`. `unit` is "bytes" (shown as kB/MB) or a noun ("days")."""

    def __init__(
        self,
        console: Console,
        command: str,
        total: int,
        unit: str,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        live: bool | None = None,
    ) -> None:
        self.console = console
        self.command = command
        self.total = total
        self.unit = unit
        self.every = every
        self.clock = clock
        self.live = console.is_terminal if live is None else live
        self.done = 0
        self.lines = 0
        self.name = ""
        self._started = clock()
        self._last_line = self._started
        self._bar: Progress | None = None
        self._task = TaskID(0)  # set when the bar starts; only used while it runs

    # ---- the two ways of showing it --------------------------------------------------------

    def __enter__(self) -> RunProgress:
        if self.live:
            amount = DownloadColumn() if self.unit == "bytes" else MofNCompleteColumn()
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=20),
                amount,
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.command, total=self.total, rate="")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, exc, tb)
            self._bar = None

    def _say(self, text: str) -> None:
        self.console.print(f"{self.command}: {text}", highlight=False, markup=False)

    # ---- what the run reports --------------------------------------------------------------

    def phase(self, name: str) -> None:
        self.name = name
        label = PHASES.get(name, name)
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.command}: {label}")
        else:
            self._say(f"{label} ({self.status()})" if self.done else label)
            self._last_line = self.clock()

    def update(self, done: int, lines: int | None = None) -> None:
        self.done = done
        if lines is not None:
            self.lines = lines
        if self._bar is not None:
            self._bar.update(self._task, completed=done, rate=self.rate_text())
            return
        now = self.clock()
        if now - self._last_line >= self.every:
            self._last_line = now
            label = PHASES.get(self.name, self.name)
            self._say(f"{label}: {self.status()}" if label else self.status())

    def advance(self, n: int) -> None:
        self.update(self.done + n)

    # ---- the figures -----------------------------------------------------------------------

    def _amount(self, n: float) -> str:
        return size_text(n) if self.unit == "bytes" else f"{n:,.0f} {self.unit}"

    def rate_text(self) -> str:
        elapsed = self.clock() - self._started
        if elapsed <= 0 or not self.done:
            return ""
        if self.lines:
            return f"{self.lines / elapsed:,.0f} lines/s"
        per = self.done / elapsed
        return f"{size_text(per)}/s" if self.unit == "bytes" else f"{per:,.1f} {self.unit}/s"

    def eta(self) -> float | None:
        elapsed = self.clock() - self._started
        if not self.done or self.done >= self.total or elapsed <= 0:
            return None
        return (self.total - self.done) / (self.done / elapsed)

    def status(self) -> str:
        elapsed = f"elapsed {duration_text(self.clock() - self._started)}"
        if self.done >= self.total:
            return elapsed
        share = 100 * self.done / self.total if self.total else 100.0
        parts = [f"{self._amount(self.done)} of {self._amount(self.total)} ({share:.0f}%)"]
        if self.lines:
            parts.append(f"{self.lines:,} lines")
        rate = self.rate_text()
        if rate:
            parts.append(rate)
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {duration_text(eta)}")
        parts.append(elapsed)
        return ", ".join(parts)
