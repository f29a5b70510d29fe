"""Poison events: an impossible instant is refused wherever events come in, and an event the
worker cannot decide is quarantined with its reason while the events behind it are applied."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from crm_elasticity.connectors.cli import app
from crm_elasticity.connectors.instants import parse_instant
from crm_elasticity.connectors.intake import handle_webhook
from crm_elasticity.connectors.runner import Runner
from crm_elasticity.core.mapping import MappingError, parse_mapping
from crm_elasticity.core.models import EVENT, Event
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.fakes.memory_crm import MemoryConnector, MemoryCrm, memory_mapping
from tests.helpers import T0

NEAR_9999 = "9999-12-30T00:00:00Z"
cli = CliRunner()


def line(eid: str, cid: str, kind: str, when: str) -> str:
    return json.dumps({"event_id": eid, "contact_id": cid, "type": kind, "occurred_at": when})


def ev(eid: str, cid: str, kind: str = "open", minutes: int = 0) -> Event:
    return Event(
        event_id=eid, contact_id=cid, type=kind, occurred_at=T0 + timedelta(minutes=minutes)
    )


# ---- impossible instants are refused at intake ---------------------------------------------


@pytest.mark.parametrize(
    "when", [NEAR_9999, "2200-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z"]
)
def test_an_impossible_instant_is_not_an_event(when: str) -> None:
    with pytest.raises(ValidationError, match="outside the accepted range"):
        EVENT.validate_json(line("e1", "c1", "open", when))


@pytest.mark.parametrize("when", ["1970-01-01T00:00:00Z", "2199-12-31T23:59:59+02:00"])
def test_instants_inside_the_range_are_events(when: str) -> None:
    assert EVENT.validate_json(line("e1", "c1", "open", when)).occurred_at.year in (1970, 2199)


def test_a_policy_duration_beyond_a_century_is_refused() -> None:
    text = Path("mappings/hubspot.yaml").read_text()
    raw = text.replace("dormant_after_days: 90", "dormant_after_days: 3000000").encode()
    assert raw != text.encode()
    with pytest.raises(MappingError, match="dormant_after_days"):
        parse_mapping(raw, "far.yaml")


def test_a_signal_value_with_an_impossible_date_counts_when_observed() -> None:
    assert parse_instant("9999-12-30T00:00:00Z") is None
    assert parse_instant("253402214400000") is None  # epoch ms in year 9999
    assert parse_instant("2026-03-01T00:00:00Z") == datetime(2026, 3, 1, tzinfo=UTC)


def test_a_signed_hubspot_webhook_dated_near_9999_is_answered_400(tmp_path: Path) -> None:
    from crm_elasticity.core.mapping import load_mapping
    from tests.fakes.hubspot_server import FakeHubSpot
    from tests.hubspot.hubspot_helpers import MAPPING, FakeClock, make_connector
    from tests.hubspot.webhook_helpers import notification, signed

    store = SQLiteStore(tmp_path / "s.sqlite3")
    fake = FakeHubSpot()
    fake.url = "http://127.0.0.1:9"  # parsing a webhook calls nothing
    connector = make_connector(fake, load_mapping(MAPPING), FakeClock())
    far = notification("contact.creation", occurredAt=253402214400000)  # 9999-12-30
    answer = handle_webhook(connector, signed([far]), store.inbox_put)
    assert answer.status == 400
    assert b"outside the accepted range" in answer.body
    assert store.inbox_take(10) == []


def test_a_canonical_json_webhook_event_dated_near_9999_is_answered_400(tmp_path: Path) -> None:
    from tests.fakes.memory_crm import SECRET_HEADER

    connector = MemoryConnector(memory_mapping(), MemoryCrm(), secret="s")
    from crm_elasticity.connectors.base import WebhookRequest

    body = json.dumps([json.loads(line("e1", "c1", "open", NEAR_9999))]).encode()
    request = WebhookRequest("POST", "/webhooks/memory", "", {SECRET_HEADER: "s"}, body, T0)
    store = SQLiteStore(":memory:")
    assert handle_webhook(connector, request, store.inbox_put).status == 400
    assert store.inbox_take(10) == []


def test_replay_counts_an_impossible_instant_as_a_bad_line(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            [
                line("e1", "c1", "enroll", "2026-01-01T00:00:00Z"),
                line("e2", "c1", "open", NEAR_9999),
                line("e3", "c1", "open", "2026-01-02T00:00:00Z"),
            ]
        )
        + "\n"
    )
    result = cli.invoke(
        app,
        ["replay", "mappings/hubspot.yaml", str(events)],
        env={"ELASTICITY_DATA_DIR": str(tmp_path)},
    )
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 0
    assert f"{events}:2: occurred_at:" in result.stderr
    assert "outside the accepted range" in result.stderr
    assert "2 events applied" in result.stderr and "1 bad line," in result.stderr
    assert "Traceback" not in result.output
    [state] = [json.loads(x) for x in result.stdout.splitlines()]
    assert state["engagement_score"] == 5


def test_replay_refuses_an_until_near_9999(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(line("e1", "c1", "enroll", "2026-01-01T00:00:00Z") + "\n")
    result = cli.invoke(
        app,
        ["replay", "mappings/hubspot.yaml", str(events), "--until", NEAR_9999],
        env={"ELASTICITY_DATA_DIR": str(tmp_path)},
    )
    assert result.exit_code == 2
    assert "--until" in result.stderr and "Traceback" not in result.output


# ---- one failing event cannot stop the rest ------------------------------------------------


@pytest.fixture
def poisoned_runner(tmp_path: Path) -> Runner:
    crm = MemoryCrm(poisoned={"bad"})
    store = SQLiteStore.in_data_dir(tmp_path)
    return Runner(MemoryConnector(memory_mapping(), crm), store, clock=lambda: T0)


def test_the_worker_quarantines_the_event_it_cannot_decide_and_applies_the_rest(
    poisoned_runner: Runner, tmp_path: Path
) -> None:
    runner = poisoned_runner
    runner.record([ev("e1", "c1"), ev("e2", "bad", minutes=1), ev("e3", "c2", "click", 2)])
    stats = runner.drain_inbox(batch_size=10)
    assert stats.applied == 2 and stats.rejected == 1
    assert set(runner.store.get_contacts(["c1", "c2", "bad"])) == {"c1", "c2"}
    assert runner.connector.crm.values["c2"]["engagement_score"] == 10
    assert runner.store.inbox_take(10) == []
    [held] = runner.store.quarantined()
    assert held.key == "e2"
    assert "cannot read record" in held.reason and held.at == T0

    listing = cli.invoke(app, ["inbox", "--json", "--data-dir", str(tmp_path)])
    assert listing.exit_code == 0
    [row] = [json.loads(x) for x in listing.stdout.splitlines()]
    assert (row["event_id"], row["contact_id"], row["type"]) == ("e2", "bad", "open")
    assert "cannot read record" in row["reason"]
    table = cli.invoke(app, ["inbox", "--data-dir", str(tmp_path)])
    assert "1 quarantined event(s)" in table.stdout and "e2" in table.stdout

    report = cli.invoke(app, ["report", "--format", "json", "--data-dir", str(tmp_path)])
    assert json.loads(report.stdout)["data_quality"]["quarantined_events"] == 1

    assert row["since_applied"] is False
    # The cause fixed, --retry puts it back and the next drain applies it.
    runner.connector.crm.poisoned.clear()
    retried = cli.invoke(app, ["inbox", "--retry", "--data-dir", str(tmp_path)])
    assert retried.exit_code == 0 and "1 quarantined event(s) put back" in retried.stdout
    assert runner.drain_inbox(batch_size=10).applied == 1
    assert runner.store.get_contacts(["bad"])["bad"].engagement_score == 5
    assert runner.store.quarantine_count() == 0


def test_a_quarantined_event_applied_on_redelivery_is_listed_as_such(
    poisoned_runner: Runner, tmp_path: Path
) -> None:
    runner = poisoned_runner
    runner.record([ev("e1", "bad")])
    runner.drain_inbox(batch_size=10)
    runner.connector.crm.poisoned.clear()
    runner.record([ev("e1", "bad")])  # the CRM delivers it again once the record is readable
    assert runner.drain_inbox(batch_size=10).applied == 1
    listing = cli.invoke(app, ["inbox", "--json", "--data-dir", str(tmp_path)])
    [row] = [json.loads(x) for x in listing.stdout.splitlines()]
    assert row["event_id"] == "e1" and row["since_applied"] is True


def test_an_unavailable_crm_leaves_every_event_queued_not_quarantined(
    poisoned_runner: Runner,
) -> None:
    from crm_elasticity.connectors.base import ConnectorError

    runner = poisoned_runner
    runner.connector.crm.down = True
    runner.record([ev("e1", "c1"), ev("e2", "c2")])
    with pytest.raises(ConnectorError):
        runner.drain_inbox(batch_size=10)
    assert runner.store.quarantine_count() == 0
    assert [e.event_id for e in runner.store.inbox_take(10)] == ["e1", "e2"]


def test_an_engine_failure_quarantines_only_its_event(
    poisoned_runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the engine raises on one event (the date overflow of a year-9999 event, in
    releases that let one in) is that event's, not the worker's."""
    runner = poisoned_runner
    prepare = runner.pipeline.prepare_events

    def overflowing(events, **kwargs):
        if any(e.contact_id == "odd" for e in events):
            raise OverflowError("date value out of range")
        return prepare(events, **kwargs)

    monkeypatch.setattr(runner.pipeline, "prepare_events", overflowing)
    runner.record([ev("e1", "c1"), ev("e2", "odd", minutes=1), ev("e3", "c2", minutes=2)])
    assert runner.drain_inbox(batch_size=10).applied == 2
    assert [(q.key, q.reason) for q in runner.store.quarantined()] == [
        ("e2", "engine: OverflowError: date value out of range")
    ]


def test_a_failure_writing_to_the_crm_quarantines_nothing(
    poisoned_runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes are no event's doing: a connector failing them (even with a bug) must not set
    every event aside; the decisions stand and the writes stay owed."""
    runner = poisoned_runner

    def broken(values):
        raise TypeError("connector bug")

    monkeypatch.setattr(runner.connector, "write_records", broken)
    runner.record([ev("e1", "c1"), ev("e2", "c2")])
    with pytest.raises(TypeError):
        runner.drain_inbox(batch_size=10)
    assert runner.store.quarantine_count() == 0
    assert set(runner.store.get_contacts(["c1", "c2"])) == {"c1", "c2"}
    monkeypatch.undo()  # the connector fixed: the owed writes land
    runner.flush()
    scores = {cid: row["engagement_score"] for cid, row in runner.connector.crm.values.items()}
    assert scores == {"c1": 5, "c2": 5}


# ---- the serve worker, as a real process ---------------------------------------------------

SERVE = """
import multiprocessing, sys
from functools import partial
from crm_elasticity.connectors.server import serve_forever
from tests.fakes.memory_crm import memory_runners

def ready(server):
    workers = [p.pid for p in multiprocessing.active_children()]
    print(server.server_address[1], *workers, flush=True)

serve_forever(memory_runners(sys.argv[1]), "127.0.0.1", 0,
              partial(memory_runners, sys.argv[1], poisoned=("bad",)), 0.05, ready=ready)
"""


def _post(port: int, events: list[Event]) -> int:
    import urllib.request

    body = b"[" + b",".join(EVENT.dump_json(e) for e in events) + b"]"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/memory", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - 127.0.0.1 only
        return answer.status


def _until(condition, seconds: float = 30.0) -> bool:
    """Wait for a condition the worker process makes true (bounded; polls the store)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_the_serve_worker_survives_poison_events_and_keeps_draining(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    store = SQLiteStore.in_data_dir(tmp_path)
    # A year-9999 event an older release accepted, waiting in the inbox across the upgrade.
    legacy = line("old", "c0", "open", NEAR_9999)
    store.execute("INSERT INTO inbox (key, body) VALUES ('old', ?)", (legacy,))
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-c", SERVE, str(tmp_path)]
    proc = subprocess.Popen(
        command,
        cwd=root,
        stdout=subprocess.PIPE,  # noqa: S603
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        port, worker = map(int, proc.stdout.readline().split())  # type: ignore[union-attr]
        assert (
            _post(port, [ev("e1", "c1"), ev("e2", "bad", minutes=1), ev("e3", "c2", "click", 2)])
            == 202
        )
        assert _until(lambda: len(store.get_contacts(["c1", "c2"])) == 2)
        assert _until(lambda: store.quarantine_count() == 2)
        assert sorted(q.key for q in store.quarantined()) == ["e2", "old"]
        # The worker lives on and applies what comes next.
        assert _post(port, [ev("e4", "c3", minutes=3)]) == 202
        assert _until(lambda: "c3" in store.get_contacts(["c3"]))
        os.kill(worker, 0)  # still running
        assert store.get_contacts(["bad", "c0"]) == {}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait(timeout=30)
