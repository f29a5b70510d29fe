"""Processes that write one SQLite store at once, as `serve`'s worker and a scheduled `sync` (or
a second `serve`) on the same data dir do: each builds its own HubSpot runner against the fake
HubSpot the test runs on 127.0.0.1. Entry points are module-level so `spawn` can start them."""

from __future__ import annotations

import multiprocessing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from crm_elasticity.connectors.hubspot import HubSpotConnector
from crm_elasticity.connectors.hubspot.config import HubSpotSettings, load_options
from crm_elasticity.connectors.runner import Runner
from crm_elasticity.core.mapping import load_mapping
from crm_elasticity.core.models import Event
from crm_elasticity.core.sqlite_store import SQLiteStore
from tests.fakes.hubspot_server import TOKEN

MAPPING = Path(__file__).resolve().parents[2] / "mappings" / "hubspot.yaml"
SECRET = "writers-client-secret-5c1e"
STEPS = ("enroll", "click", "click", "click")
"""Per contact: enrolled, then 10 points a click: Engaged (20) at the second, once."""


def hubspot_runner(url: str, db_path: str) -> Runner:
    mapping = load_mapping(MAPPING)
    settings = HubSpotSettings(
        access_token=TOKEN,
        client_secret=SECRET,
        base_url=url,
        timeout_seconds=10,
        requests_per_10s=10_000,
        search_per_second=1000,
        write_concurrency=1,
    )
    connector = HubSpotConnector(mapping, settings, load_options(mapping), prefetch_pages=0)
    return Runner(connector, SQLiteStore(db_path), write_page=5)


def events_for(contacts: list[str], start: datetime, steps: tuple[str, ...]) -> list[list[Event]]:
    """One list per step, every contact's event for that step."""
    return [
        [
            Event(
                event_id=f"{kind}-{step}-{cid}",
                contact_id=cid,
                type=kind,
                occurred_at=start + timedelta(minutes=step),
            )
            for cid in contacts
        ]
        for step, kind in enumerate(steps)
    ]


def worker_main(
    url: str,
    db_path: str,
    contacts: list[str],
    start: datetime,
    batch: int,
    steps: tuple[str, ...],
    done: Any,
    go: Any = None,
) -> None:
    """`serve`'s worker: record a step's events, drain them a few at a time (each batch
    flushes before and after), then the next step. With `go` (a barrier), it starts with its
    rival rather than a process start-up later."""
    try:
        runner = hubspot_runner(url, db_path)
        if go is not None:
            go.wait()
        for events in events_for(contacts, start, steps):
            for at in range(0, len(events), batch):
                runner.record(events[at : at + batch])
                runner.drain_inbox(batch_size=batch)
    finally:
        done.set()


def flusher_main(url: str, db_path: str, stop: Any) -> None:
    """A second flusher on the same outbox until told to stop."""
    runner = hubspot_runner(url, db_path)
    while not stop.is_set():
        runner.flush()


def drainer_main(url: str, db_path: str, stop: Any) -> None:
    """The worker of a second `serve` on the same data dir, draining the same inbox."""
    runner = hubspot_runner(url, db_path)
    while not stop.is_set():
        runner.drain_inbox(batch_size=3)


def sync_main(url: str, db_path: str, full: bool, stop: Any, go: Any = None) -> None:
    """`elasticity sync [--full]` run again and again until told to stop."""
    runner = hubspot_runner(url, db_path)
    if go is not None:
        go.wait()
    while not stop.is_set():
        runner.sync(full=full)


def start(target: Any, *args: Any) -> multiprocessing.process.BaseProcess:
    process = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    process.start()
    return process
