"""What the parts of a replay that no implementation can skip cost on this machine.

    python bench/floors.py                  # 200K events / 20K contacts

Each event must be parsed and validated, claimed (its id stored for idempotency), decided by
at least one rule, and every decision must become a ledger row. This times those four alone,
on the same synthetic stream as `bench/engine.py`, with the store's own pragmas, and prints
the throughput they would allow if everything else were free: the ceiling any replay and any
engine written in this language could reach here, next to the targets.
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine import START, event_dicts  # noqa: E402

from core.engine import new_contact  # noqa: E402
from core.mapping import load_mapping  # noqa: E402
from core.models import EVENT, Decision, Status  # noqa: E402
from core.replay import replay_file  # noqa: E402

LEDGER_COLUMNS = (
    "contact_id, at, rule, reason, cause, from_status, to_status, changes, actions, "
    "policy_version, event_type"
)
LEDGER_TABLE = f"CREATE TABLE t (seq INTEGER PRIMARY KEY, {LEDGER_COLUMNS})"
KEYS_TABLE = "CREATE TABLE t (key TEXT PRIMARY KEY) WITHOUT ROWID"


def per_item(run, items: int, repeat: int = 3) -> float:
    """Best CPU microseconds per item over `repeat` runs, the collector off."""
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeat):
            started = time.process_time()
            run()
            best = min(best, time.process_time() - started)
    finally:
        gc.enable()
    return best / items * 1e6


def insert_cost(rows: list[tuple], create: str, columns: str, path: Path) -> float:
    """Microseconds per row to insert these rows into a fresh table `t` (made by `create`),
    in 20K-row batches of one transaction."""
    insert = f"INSERT INTO t ({columns}) VALUES ({','.join('?' * len(rows[0]))})"  # noqa: S608

    def run() -> None:
        path.unlink(missing_ok=True)
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA cache_size=-131072")
        db.execute(create)
        db.execute("BEGIN")
        for start in range(0, len(rows), 20_000):
            db.executemany(insert, rows[start : start + 20_000])
        db.execute("COMMIT")
        db.close()

    return per_item(run, len(rows))


def minimal_rule_cost(events: int, contacts: int) -> float:
    """One due-time check, one field changed and recorded, one decision: the least a rule
    engine that explains itself does per event."""
    ids = [f"c{i % contacts:06d}" for i in range(events)]
    times = [START + timedelta(seconds=i) for i in range(events)]
    states = {cid: new_contact(cid, START) for cid in set(ids)}
    wait = timedelta(days=90)

    def rule(state, at, decisions) -> None:
        if state.stream_entered_at + wait <= at:
            return
        old = state.unanswered_sends
        state.unanswered_sends = old + 1
        decisions.append(Decision(state.contact_id, at, "send", "sent", "ev", Status.ACTIVE,
                                  Status.ACTIVE, {"unanswered_sends": (old, old + 1)}, "v", [],
                                  "send"))  # fmt: skip

    def run() -> None:
        get, decisions = states.get, []
        for cid, at in zip(ids, times, strict=True):
            rule(get(cid), at, decisions)

    return per_item(run, events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--contacts", type=int, default=20_000)
    args = parser.parse_args()
    lines = [json.dumps(item).encode() for item in event_dicts(args.events, args.contacts, 2)]
    parse = per_item(lambda: [EVENT.validate_json(line) for line in lines], len(lines))
    with tempfile.TemporaryDirectory() as tmp:
        events_file = Path(tmp) / "events.jsonl"
        events_file.write_bytes(b"\n".join(lines) + b"\n")
        mapping = load_mapping(ROOT / "mappings" / "hubspot.yaml")
        result = replay_file(mapping, events_file, Path(tmp) / "replay.sqlite3")
        ledger = result.store.execute(f"SELECT {LEDGER_COLUMNS} FROM ledger ORDER BY seq")  # noqa: S608
        keys = result.store.execute("SELECT key FROM processed_events")
        result.store.close()
        per_event = len(ledger) / args.events
        row = insert_cost(ledger, LEDGER_TABLE, LEDGER_COLUMNS, Path(tmp) / "rows.sqlite3")
        key = insert_cost(keys, KEYS_TABLE, "key", Path(tmp) / "keys.sqlite3")
    rule = minimal_rule_cost(args.events, args.contacts)
    floor = parse + per_event * row + key + rule
    print(f"parse and validate an event:  {parse:6.2f} us")
    print(f"insert its ledger rows:       {per_event * row:6.2f} us  ({per_event:.2f} rows "
          f"of {row:.2f} us)")  # fmt: skip
    print(f"insert its id (idempotency):  {key:6.2f} us")
    print(f"a minimal rule and decision:  {rule:6.2f} us")
    print(f"replay ceiling here:       {1e6 / floor:>9,.0f} events/s  (target 100,000: "
          f"{1e6 / floor / 100_000:.2f}x, with everything else free)")  # fmt: skip
    print(f"engine ceiling here:       {1e6 / rule:>9,.0f} events/s  (target 300,000: "
          f"{1e6 / rule / 300_000:.2f}x, for a rule that does the least possible)")  # fmt: skip


if __name__ == "__main__":
    main()
