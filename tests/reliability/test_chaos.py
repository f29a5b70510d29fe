"""The reduced chaos run (bench/chaos.py runs 50K events): a seeded HubSpot stream through
signed webhooks -> intake -> inbox -> Runner -> fake HubSpot, with daily scheduled syncs,
under every fault class (the worker killed alone, the store file replaced under the server,
poison notifications alone and inside genuine batches among them), must end with the CRM, the
hand-off tasks, the ledger and the snapshots equal, field by field, to a fault-free run of the
same stream."""

from __future__ import annotations

from pathlib import Path

from tests.reliability.chaos_faults import FaultPlan
from tests.reliability.chaos_harness import run_chaos


def test_a_chaotic_run_ends_exactly_where_a_fault_free_run_does(tmp_path: Path) -> None:
    plan = FaultPlan(
        seed=11,
        kill_rate=0.05,
        rate_timeout=0.05,
        drop_connection_at=12,
        client_timeout=0.2,
        timeout_delay=0.3,
        kill_idle_rate=0.2,
        replace_store_rate=0.3,
        poison_rate=0.3,
    )
    result = run_chaos(tmp_path, events=800, contacts=80, days=4, seed=11, plan=plan)
    assert result.differences == []
    chaos, faults = result.chaos, result.chaos.faults
    # every fault class really happened, or the comparison proves nothing
    for kind in (
        "http_429",
        "http_5xx",
        "http_timeout",
        "records_207",
        "kills",
        "rival_flushes",
        "worker_kills_idle",
        "store_replacements",
        "poison",
        "poison_in_batch",
    ):
        assert faults[kind] > 0, kind
    assert faults["connection_drops"] == 1
    assert chaos.restarts >= faults["kills"] + faults["worker_kills_idle"] + 1
    # a delivery after a replacement is refused (503) and delivered again, never lost
    assert 0 < chaos.refused_store_replaced <= faults["store_replacements"]
    assert chaos.deliveries == 2 * result.clean.deliveries + chaos.refused
    assert chaos.duplicates_absorbed >= result.clean.events_in * 0.9
    assert chaos.retries > 0
    assert result.ledger_entries > 800 and result.tasks > 0
