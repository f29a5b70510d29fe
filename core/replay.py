"""`elasticity replay`: events from a JSON-lines file through the policy into a fresh ledger."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from crm_elasticity.core.coded.events import UnknownKeys, event_from_line, problem_text
from crm_elasticity.core.cursors import Cursors
from crm_elasticity.core.gcpause import cyclic_gc_paused
from crm_elasticity.core.mapping import Mapping
from crm_elasticity.core.models import ContactState, Event, iso_utc
from crm_elasticity.core.pipeline import Pipeline, RunStats
from crm_elasticity.core.publish import Renames, partial_path, publish, remove_store
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.store import Batch

REPLAY_BATCH = 20_000
"""The run's intake counts (bad lines, duplicates, lines with unknown keys) in the store's
cursors, where `report` reads them for its data-quality section."""
_STATE_PAGE = 5_000


class BadLine(Exception):  # noqa: N818 - it names the thing reported, not a failure mode
    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


def state_json(state: ContactState) -> dict:
    return {
        "contact_id": state.contact_id,
        "campaign_status": state.campaign_status.value,
        "engagement_score": state.engagement_score,
        "last_engagement_date": iso_utc(state.last_engagement_date),
        "reactivation_cycle": state.reactivation_cycle,
        "reactivation_step": state.reactivation_step,
        "suppression_reason": state.suppression_reason.value if state.suppression_reason else None,
        "unanswered_sends": state.unanswered_sends,
        "status_changed_at": iso_utc(state.status_changed_at),
        "experiments": state.experiments,
    }


@dataclass
class ReplayResult:
    store: SQLiteStore
    stats: RunStats
    bad_lines: int
    after_until: int
    until: datetime | None
    unknown: UnknownKeys = field(default_factory=UnknownKeys)
    """Lines with keys the event format does not have (ignored, not bad), and which keys."""

    def write_states(self, sink: IO[str]) -> int:
        if str(self.store.path) != ":memory:":  # the rows as text, without a state object each
            from crm_elasticity.core.coded.states import write_state_lines

            return write_state_lines(self.store.path, sink)
        count = 0
        for page in self.store.iter_contacts():
            for state in page:
                sink.write(json.dumps(state_json(state)) + "\n")
                count += 1
        return count


def _has_observations(events_path: Path) -> bool:
    """Whether any line may carry a CRM property observation (`observed`): those count once per
    new value, which only the object pipeline tracks."""
    with events_path.open("rb") as handle:
        tail = b""
        while block := handle.read(1 << 20):
            if b'"observed"' in tail + block:
                return True
            tail = block[-16:]
    return False


def load_contact_properties(path: Path) -> dict[str, dict[str, Any]]:
    """`--contacts`: JSON lines `{"contact_id": ..., "properties": {name: value}}`, the CRM
    properties the mapping's eligibility and segments read. A bad line stops the run."""
    found: dict[str, dict[str, Any]] = {}
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise BadLine(number, f"not JSON: {exc}") from None
            cid = row.get("contact_id") if isinstance(row, dict) else None
            props = row.get("properties", {}) if isinstance(row, dict) else None
            if not isinstance(cid, str) or not cid or not isinstance(props, dict):
                raise BadLine(number, 'expected {"contact_id": "...", "properties": {...}}')
            found[cid] = props
    return found


def replay_file(
    mapping: Mapping,
    events_path: Path,
    store_path: Path | str,
    until: datetime | None = None,
    strict: bool = False,
    on_bad_line: Callable[[BadLine], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    engine: str = "coded",
    batch_size: int = REPLAY_BATCH,
    workers: int = 1,
    properties: dict[str, dict[str, Any]] | None = None,
    before_publish: Callable[[ReplayResult], Renames | None] | None = None,
    phase: Callable[[str], None] | None = None,
) -> ReplayResult:
    """Apply every good line in file order (each batch sorted by time), then the time rules
    up to `until` (default: the last event's time). A rerun starts from an empty ledger, built
    beside the previous run's store (`<store>.partial`), which it replaces only once complete:
    a run that fails or is interrupted (`--strict` stopping on a bad line included) leaves the
    previous store as it was.

    `before_publish(result)` runs once the run is complete, with `result.store` open on the
    new store before it takes its name: it may write files for the run under temporary names
    and return (written, final name) pairs, renamed together with the store; an exception
    there (a limit exceeded, Ctrl-C) publishes nothing. `phase(name)` is told what the run
    does next: "reading" (and deciding, batch by batch), then "writing" (the time rules up to
    the horizon, the ledger and the states) once the whole file is read.

    `properties` (contact id -> CRM properties) decide consent and segments as a connected
    run would.

    `engine`: "coded" (the bulk path of `core.coded`, a coded ledger) or "object" (the
    pipeline every other path uses, a text ledger); both decide the same. `workers` > 1
    splits the coded path over that many processes by contact, with the same outcome. A run
    with `properties`, or with events read from CRM properties (`observed`), takes the
    object path: the coded one reads neither."""
    if engine not in ("coded", "object"):
        raise ValueError(f"engine: expected 'coded' or 'object', got {engine!r}")
    if phase is not None:
        progress = _phased(progress, phase, events_path.stat().st_size)
    if str(store_path) == ":memory:":
        in_memory = _replay_object(
            mapping,
            events_path,
            SQLiteStore(":memory:"),
            until,
            strict,
            on_bad_line,
            progress,
            batch_size,
            properties,
        )
        _record_intake(in_memory)
        for written, name in (before_publish(in_memory) or ()) if before_publish else ():
            written.replace(name)
        return in_memory
    final = Path(store_path)
    partial = partial_path(final)
    remove_store(partial)
    coded = engine == "coded" and properties is None and not _has_observations(events_path)
    # The coded path writes each final state once: holding them all as objects before
    # writing would cost more memory than the whole run's coded state (and it only
    # appends, in key order: a large page cache would only hold memory).
    store = (
        SQLiteStore(partial, defer_limit=_STATE_PAGE, cache_mb=8) if coded else SQLiteStore(partial)
    )
    result: ReplayResult | None = None
    try:
        if coded:
            result = _replay_coded(
                mapping,
                events_path,
                store,
                until,
                strict,
                on_bad_line,
                progress,
                batch_size,
                workers,
            )
        else:
            result = _replay_object(
                mapping,
                events_path,
                store,
                until,
                strict,
                on_bad_line,
                progress,
                batch_size,
                properties,
            )
        _record_intake(result)
        renames = list(before_publish(result) or ()) if before_publish else []
    except BaseException:
        store.close()
        if result is not None:
            result.store.close()
        remove_store(partial)
        raise
    # It writes in several transactions (ledger, states, the policy record): the store
    # takes its name only once all of them landed, so a run lands whole or not at all, and
    # until then the previous run's store stays as it was.
    result.store.close()
    publish(partial, final, renames)
    result.store = SQLiteStore(final, cache_mb=8)  # read once, in key order, by --out
    return result


def intake_record(result: ReplayResult) -> dict[str, Any]:
    return {
        "bad_lines": result.bad_lines,
        "duplicates": result.stats.duplicates,
        "unknown_key_lines": result.unknown.lines,
        "unknown_keys": dict(result.unknown.top(10)),
    }


def _record_intake(result: ReplayResult) -> None:
    result.store.commit(Batch(cursors={Cursors.replay_intake: json.dumps(intake_record(result))}))


def _phased(
    progress: Callable[[int, int], None] | None, phase: Callable[[str], None], size: int
) -> Callable[[int, int], None]:
    """`progress` that also says when reading ends (the last report covers the whole file)."""
    phase("reading")
    read = [False]

    def report(done: int, lines: int) -> None:
        if progress:
            progress(done, lines)
        if done >= size and not read[0]:
            read[0] = True
            phase("writing")

    return report


def _replay_object(
    mapping: Mapping,
    events_path: Path,
    store: SQLiteStore,
    until: datetime | None,
    strict: bool,
    on_bad_line: Callable[[BadLine], None] | None,
    progress: Callable[[int, int], None] | None,
    batch_size: int,
    properties: dict[str, dict[str, Any]] | None,
) -> ReplayResult:
    policy = mapping.policy
    counts = {"bad": 0, "after": 0}
    unknown = UnknownKeys()
    latest: list[datetime] = []

    def events() -> Iterator[Event]:
        done = number = 0
        with events_path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                done += len(line)
                if progress and number % 10_000 == 0:
                    progress(done, number)
                if not line.strip():
                    continue
                try:
                    event, extra = event_from_line(line)
                except ValidationError as exc:
                    problem = BadLine(number, problem_text(exc))
                else:
                    if extra:
                        unknown.add(extra)
                    if policy.knows_event(event.type):
                        if until is not None and event.occurred_at > until:
                            counts["after"] += 1
                            continue
                        if not latest or event.occurred_at > latest[0]:
                            latest[:] = [event.occurred_at]
                        yield event
                        continue
                    problem = BadLine(number, f"type: unknown event type '{event.type}'")
                if strict:
                    raise problem
                counts["bad"] += 1
                if on_bad_line:
                    on_bad_line(problem)
        if progress:
            progress(done, number)

    # Each batch is decided in event order. Keeping every contact's recent events so that an
    # event from a later batch could re-decide an earlier one would halve replay's speed: a
    # file out of order across batches has its late events decided at the contact's current
    # time and counted (`stats.late_unrevised`), as the README says. Sort the file first.
    pipeline = Pipeline(store, policy, properties=properties, revision_window=None)
    # States, decisions and rows are acyclic: across a whole run the collector only
    # re-traverses the held states (4 s of a 1M-event replay), and never finds garbage.
    with store.bulk(), cyclic_gc_paused():
        stats = pipeline.process_stream(events(), batch_size=batch_size)
        horizon = until or (latest[0] if latest else None)
        if horizon is not None:
            stats.add(pipeline.tick(horizon))
    return ReplayResult(store, stats, counts["bad"], counts["after"], horizon, unknown)


def _replay_coded(
    mapping: Mapping,
    events_path: Path,
    store: SQLiteStore,
    until: datetime | None,
    strict: bool,
    on_bad_line: Callable[[BadLine], None] | None,
    progress: Callable[[int, int], None] | None,
    batch_size: int,
    workers: int,
) -> ReplayResult:
    from crm_elasticity.core.coded.parallel import replay_sharded
    from crm_elasticity.core.coded.replay import BadEvent, record_policy, replay_coded

    def bad(number: int, problem: str) -> None:
        if on_bad_line:
            on_bad_line(BadLine(number, problem))

    try:
        if workers > 1:
            run = replay_sharded(
                mapping.policy,
                events_path,
                store,
                until,
                strict,
                bad,
                progress,
                batch_size,
                workers,
            )
        else:
            run = replay_coded(
                mapping.policy, events_path, store, until, strict, bad, progress, batch_size
            )
    except BadEvent as exc:
        raise BadLine(exc.line, exc.problem) from None
    if run.first is not None:
        record_policy(store, mapping.policy, run.first[1])
    return ReplayResult(
        store, run.stats, run.bad_lines, run.after_until, until or run.latest, run.unknown
    )
