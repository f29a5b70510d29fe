"""`serve` (a real process, its worker in a process of its own) ends every contact where
`replay` of the sorted events puts it, when the webhooks arrive shuffled within six hours and
5% of them twice."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from crm_elasticity.core.pipeline import Pipeline
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.fakes.memory_crm import memory_mapping
from tests.order_stream import body, deliveries, differences, generate, replayed, requests

ROOT = Path(__file__).resolve().parents[1]
CONTACTS = 250
DRAIN_DEADLINE = 60.0

SERVE = """
import sys
from functools import partial
from crm_elasticity.connectors.server import serve_forever
from tests.fakes.memory_crm import memory_runners

runners = memory_runners(sys.argv[1])

def ready(server):
    print(server.server_address[1], flush=True)

serve_forever(runners, "127.0.0.1", 0, partial(memory_runners, sys.argv[1]), 0.05, ready=ready)
"""


def _post(port: int, payload: bytes) -> int:
    request = urllib.request.Request(  # noqa: S310 - a loopback URL built by the test
        f"http://127.0.0.1:{port}/webhooks/memory",
        data=payload,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        return answer.status


def _drained(store: SQLiteStore) -> None:
    """Wait (bounded) until the worker has decided everything received so far: a decided
    event leaves the inbox in the commit that decides it."""
    deadline = time.monotonic() + DRAIN_DEADLINE
    while store.execute("SELECT COUNT(*) FROM inbox")[0][0]:
        assert time.monotonic() < deadline, "the worker did not drain the inbox"
        time.sleep(0.002)


def test_serve_with_shuffled_and_redelivered_webhooks_ends_where_replay_ends(
    tmp_path: Path,
) -> None:
    mapping = memory_mapping()
    events = generate(CONTACTS, seed=18)
    reference, horizon = replayed(mapping, events, tmp_path)
    data_dir = tmp_path / "serve"
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(data_dir)],
        cwd=ROOT,  # noqa: S603
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        watcher = SQLiteStore.in_data_dir(data_dir)
        for request in requests(deliveries(events, seed=6), seed=4):
            assert _post(port, body(request)) == 202
            _drained(watcher)  # every request is its own worker batch: the most lateness
        watcher.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    store = SQLiteStore.in_data_dir(data_dir)
    # The scheduled sync's share: time rules up to the horizon replay ran them to.
    Pipeline(store, mapping.policy).tick(horizon)
    got = {s.contact_id: s for page in store.iter_contacts() for s in page}
    revised = store.execute("SELECT COUNT(*) FROM ledger WHERE reason = 'revised'")[0][0]
    unrevised = store.execute("SELECT COUNT(*) FROM ledger WHERE reason = 'decided_late'")[0][0]
    store.close()

    found = differences(reference, got)
    print(
        f"serve vs replay: {len(reference)} contacts compared, {len(found)} differences, "
        f"{revised} revisions, {unrevised} late events beyond the kept history"
    )
    assert len(got) == len(reference) == CONTACTS
    assert found == []
    assert revised > 0 and unrevised == 0
