"""`serve` as a process: its worker process never outlives it, and its intake connection leaves
most WAL checkpoints to the worker (a checkpoint inside an intake commit stalls the answer)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crm_elasticity.connectors.server import INTAKE_CHECKPOINT_PAGES

ROOT = Path(__file__).resolve().parents[1]

SERVE = """
import multiprocessing, sys
from functools import partial
from crm_elasticity.connectors.server import serve_forever
from tests.fakes.memory_crm import memory_runners

runners = memory_runners(sys.argv[1])

def ready(server):
    store = runners[0].store
    workers = [p.pid for p in multiprocessing.active_children()]
    print(store.execute("PRAGMA wal_autocheckpoint")[0][0], *workers, flush=True)

serve_forever(runners, "127.0.0.1", 0, partial(memory_runners, sys.argv[1]), 0.05, ready=ready)
"""

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd (Linux)")


def _serve(tmp_path: Path, stderr: int | None = None) -> tuple[subprocess.Popen, int, list[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(tmp_path)],
        cwd=ROOT,  # noqa: S603
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    autocheckpoint, *workers = map(int, proc.stdout.readline().split())  # type: ignore[union-attr]
    return proc, autocheckpoint, workers


def _exits_within(pidfd: int, seconds: float) -> bool:
    readable, _, _ = select.select([pidfd], [], [], seconds)
    return bool(readable)


def _pidfds(pids: list[int]) -> list[int]:
    fds = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # already gone
            fds.append(os.pidfd_open(pid))
    return fds


def test_sigterm_stops_the_worker_process_with_the_server(tmp_path: Path) -> None:
    proc, autocheckpoint, workers = _serve(tmp_path)
    fds = _pidfds(workers)
    try:
        assert autocheckpoint == INTAKE_CHECKPOINT_PAGES  # the worker's commits checkpoint
        assert len(workers) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert all(_exits_within(fd, 30) for fd in fds)
    finally:
        proc.kill()
        for fd in fds:
            os.close(fd)


def test_the_worker_process_ends_when_the_server_is_killed(tmp_path: Path) -> None:
    # Killed outright, it leaves semaphores the resource tracker warns about on stderr.
    proc, _, workers = _serve(tmp_path, stderr=subprocess.DEVNULL)
    fds = _pidfds(workers)
    try:
        assert len(fds) == 1
        proc.kill()
        proc.wait(timeout=30)
        assert _exits_within(fds[0], 30)
    finally:
        for fd in fds:
            os.close(fd)


def test_a_secrets_file_sets_changes_and_removes_names_and_reports_only_names(tmp_path):
    from crm_elasticity.connectors.server import SecretsFile

    path = tmp_path / "secrets.env"
    path.write_text("# rotated 2026-06-01\nexport A_TOKEN='one'\nB_SECRET=\"two\"\n\nC=3\n")
    environ = {"C": "3", "UNRELATED": "x"}
    secrets = SecretsFile(path, environ)
    assert secrets.load() == ["A_TOKEN", "B_SECRET"]
    assert environ == {"A_TOKEN": "one", "B_SECRET": "two", "C": "3", "UNRELATED": "x"}
    assert not secrets.changed()
    path.write_text("A_TOKEN=one\nB_SECRET=three\n")
    os.utime(path, ns=(1, 1))  # a change within the clock's resolution still shows
    assert secrets.changed()
    assert secrets.load() == ["B_SECRET", "C"]  # C left the file: removed from the environment
    assert environ == {"A_TOKEN": "one", "B_SECRET": "three", "UNRELATED": "x"}
    path.unlink()
    assert not secrets.changed()  # a file being replaced is read once it is back
