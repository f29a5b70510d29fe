"""A run's store is built beside the previous one (`<name>.partial`) and takes its name only once
complete, so an interrupted or failed `replay`/`simulate` leaves the previous results as they
were. The renames that publish a run (the store, and files the caller wrote for it) happen
with Ctrl-C held back: all of them, or none."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

Renames = Iterable[tuple[Path, Path]]
"""(written, final name) pairs published together with a run's store."""


class InterruptedAfterPublish(KeyboardInterrupt):
    """Ctrl-C arrived while a run was being published: it was published whole."""


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


def remove_store(path: Path | str) -> None:
    """A store file with its write-ahead log and shared-memory index."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C (SIGINT) arriving inside the block is raised, as `InterruptedAfterPublish`, once
    the block has finished. Outside the main thread signals cannot be handled: no change."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: arrived.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if arrived:
        raise InterruptedAfterPublish


def publish(partial: Path, final: Path, renames: Renames = ()) -> None:
    """`partial` (a closed store) becomes `final`, and each pair of `renames` is renamed, all
    with Ctrl-C held back."""
    with interrupts_held():
        for written, name in renames:
            written.replace(name)
        remove_store(final)  # a stale -wal must not be applied to the new file
        partial.replace(final)
