"""The `elasticity` command line. Thin: each command parses arguments and calls the same
functions the Lambda handlers and the local server use."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from crm_elasticity.connectors.base import ConnectorError
from crm_elasticity.core.data_dir import COMPARE_SIDES, STORES, DataDir
from crm_elasticity.core.data_dir import ENV as DATA_DIR_ENV
from crm_elasticity.core.mapping import Mapping, MappingError
from crm_elasticity.core.models import EARLIEST_INSTANT, LATEST_INSTANT
from crm_elasticity.core.store import StoreError

app = typer.Typer(
    help="Keep a CRM's email audience elastic: engagement in, dormancy out, reactivation back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
experiments_app = typer.Typer(
    help="A/B experiments declared in a mapping file.", no_args_is_help=True
)
app.add_typer(experiments_app, name="experiments")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

MappingArg = Annotated[Path, typer.Argument(help="mapping file (YAML)", show_default=False)]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar=DATA_DIR_ENV, help="where the embedded store lives"),
]


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _mapping(path: Path) -> Mapping:
    from crm_elasticity.connectors.registry import check_mapping

    try:
        return check_mapping(path)
    except MappingError as exc:
        for problem in exc.problems:
            err.print(problem, highlight=False, soft_wrap=True, markup=False)
        err.print(f"{_plural(len(exc.problems), 'problem')}; nothing was run.", highlight=False)
        raise typer.Exit(2) from None


def _data_dir(data_dir: Path | None) -> DataDir:
    return DataDir.resolve(data_dir)


DYNAMODB_URL = "dynamodb://"


def _dynamodb(url: str):  # noqa: ANN202 - DynamoDBStore, imported only when asked for
    """The DynamoDB store a `--store dynamodb://TABLE[?region=...]` names (exit 2 on a bad
    URL, 1 when it cannot be opened)."""
    from crm_elasticity.core.dynamodb_store import DynamoDBStore

    try:
        return DynamoDBStore.from_url(url)
    except ValueError as exc:
        _fail(f"--store: {exc}", 2)
    except StoreError as exc:
        _fail(str(exc))


def _store_paths(data_dir: Path | None, name: str | None) -> list[tuple[str, Path]]:
    """The stores a command reads; a name that is neither a known store nor an existing file is
    a usage error (exit 2), not an empty result."""
    if name is not None and name not in STORES and not Path(name).is_file():
        known = ", ".join(STORES)
        _fail(f"--store: unknown store {name!r}; expected {known} or the path of a store file", 2)
    return _data_dir(data_dir).existing_stores(name)


def _parse_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    from crm_elasticity.connectors.instants import parse_instant

    parsed = parse_instant(value)
    if parsed is None:
        _fail(
            f"{option}: expected an ISO 8601 time such as 2026-03-01T00:00:00Z, between "
            f"{EARLIEST_INSTANT.year} and {LATEST_INSTANT.year}, got {value!r}",
            2,
        )
    return parsed


def progress_bar(*extra: ProgressColumn) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        *extra,
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"elasticity {version('crm-elasticity')}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="log each CRM request, retry, checkpoint and batch to stderr (INFO level)",
        ),
    ] = False,
    show_version: Annotated[
        bool | None,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="print the installed version and exit",
        ),
    ] = None,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)


@app.command()
def validate(
    mapping: MappingArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the verdict as one JSON object on stdout")
    ] = False,
) -> None:
    """Check a mapping file: exit 0, or 2 with every problem listed."""
    if as_json:
        from crm_elasticity.connectors.registry import check_mapping

        try:
            loaded = check_mapping(mapping)
        except MappingError as exc:
            sys.stdout.write(
                json.dumps({"file": str(mapping), "valid": False, "problems": exc.problems}) + "\n"
            )
            raise typer.Exit(2) from None
        sys.stdout.write(
            json.dumps(
                {
                    "file": str(mapping),
                    "valid": True,
                    "vendor": loaded.vendor,
                    "program": loaded.program,
                    "policy_version": loaded.policy.version,
                    "fields": len(loaded.fields),
                    "signals": len(loaded.signals),
                    "lists": len(loaded.lists),
                    "problems": [],
                }
            )
            + "\n"
        )
        return
    loaded = _mapping(mapping)
    out.print(
        f"{mapping}: valid ({loaded.vendor}, {len(loaded.fields)} fields, "
        f"{len(loaded.signals)} signals, {len(loaded.lists)} lists, "
        f"policy version {loaded.policy.version})",
        highlight=False,
    )


def _connected(mapping_path: Path, data_dir: Path | None):
    from crm_elasticity.connectors.local_runners import build_runner

    mapping = _mapping(mapping_path)
    try:
        return build_runner(mapping, _data_dir(data_dir).root)
    except (ConnectorError, StoreError) as exc:
        _fail(str(exc))


@app.command()
def provision(
    mapping: MappingArg,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the plan, change nothing")
    ] = False,
) -> None:
    """Create or update the CRM properties/fields and dynamic lists; idempotent; reports drift."""
    from crm_elasticity.connectors.registry import connector_class, load_connector

    loaded = _mapping(mapping)
    title = "provisioning plan" if dry_run else None
    try:
        connector = load_connector(loaded)
    except ConnectorError as exc:
        offline = connector_class(loaded.vendor).offline_plan(loaded) if dry_run else None
        if offline is None:
            _fail(str(exc))
        err.print(
            f"not connected ({exc}); showing what provision would create in a CRM that "
            "has none of it. Set the credentials to compare with your CRM.",
            highlight=False,
            markup=False,
        )
        report = offline
        title = "provisioning plan (offline: nothing read from the CRM)"
    else:
        try:
            report = connector.provision(dry_run=dry_run)
        except ConnectorError as exc:
            _fail(str(exc))
    table = Table("kind", "name", "action", "detail", title=title)
    for item in report.items:
        colour = {"create": "green", "update": "yellow", "drift": "red"}.get(item.action, "dim")
        table.add_row(item.kind, item.name, f"[{colour}]{item.action}[/{colour}]", item.detail)
    out.print(table)
    verb = "would change" if dry_run else "changed"
    if report.changes:
        out.print(f"{len(report.changes)} item(s) {verb}; {len(report.drift)} drift(s) reported.")
    else:
        out.print(f"nothing to change; {len(report.drift)} drift(s) reported.")


@app.command()
def sync(
    mapping: MappingArg,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="decide but write nothing")] = False,
    full: Annotated[bool, typer.Option("--full", help="reconcile every contact")] = False,
    now: Annotated[str | None, typer.Option(help="evaluate as of this time (default: now)")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the summary as one JSON object on stdout")
    ] = False,
    data_dir: DataDirOption = None,
) -> None:
    """One scheduled sync: poll engagement, fire due time rules and decay, write back changes."""
    runner = _connected(mapping, data_dir)
    at = _parse_time(now, "--now")
    with progress_bar() as bar:
        task = bar.add_task("syncing contacts", total=None)
        try:
            summary = runner.sync(
                at, full=full, dry_run=dry_run, progress=lambda n: bar.advance(task, n)
            )
        except (ConnectorError, StoreError) as exc:
            _fail(f"{exc} (progress is checkpointed; run sync again to resume)")
    if as_json:
        sys.stdout.write(json.dumps(summary.as_dict()) + "\n")
    else:
        _sync_summary(summary)
    if summary.stopped:
        raise typer.Exit(3)


def _sync_summary(summary) -> None:
    """The sync's counts as a few lines for a person (`--json` for a program)."""
    moves = ", ".join(f"{move} {n:,}" for move, n in sorted(summary.transitions.items()))
    lines = [
        f"examined {_plural(summary.examined, 'contact')}, polled "
        f"{_plural(summary.events_polled, 'event')}, {_plural(summary.decisions, 'decision')}"
        + (f" ({moves})" if moves else ""),
        f"dry run: would write {_plural(summary.writes_owed, 'record')}, wrote nothing"
        if summary.dry_run
        else f"wrote {_plural(summary.written, 'record')} "
        f"({_plural(summary.write_failures, 'failure')}), "
        f"{_plural(summary.tasks_created, 'hand-off task')} created",
        f"{_plural(summary.api_calls, 'API call')}, {summary.retries:,} retries, "
        f"{summary.throttled:,} throttled; {summary.seconds:.1f} s",
    ]
    if summary.stopped:
        lines.append(f"stopped early: {summary.stopped} (resumable: run sync again)")
    for line in lines:
        out.print(line, highlight=False, markup=False)


@app.command()
def serve(
    mappings: Annotated[list[Path], typer.Argument(help="one mapping file per vendor")],
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    secrets_file: Annotated[
        Path | None,
        typer.Option(
            "--secrets-file",
            help="env file of secrets, read again when it changes "
            "or on SIGHUP (rotation without a restart)",
        ),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Local webhook server: POST /webhooks/hubspot, /webhooks/salesforce(/events)."""
    from functools import partial

    from crm_elasticity.connectors.local_runners import runners_for
    from crm_elasticity.connectors.registry import one_program_per_vendor
    from crm_elasticity.connectors.server import DataDirUnavailable, SecretsFile, serve_forever

    secrets = None
    if secrets_file is not None:
        secrets = SecretsFile(secrets_file)
        try:
            secrets.load()
        except (OSError, ValueError) as exc:
            _fail(f"--secrets-file: {exc}", code=2)

    try:
        one_program_per_vendor([_mapping(m) for m in mappings])
    except ConnectorError as exc:
        _fail(str(exc))
    runners = [_connected(m, data_dir) for m in mappings]
    paths = [p for r in runners for p in r.connector.webhook_paths]

    def ready(server) -> None:
        bound = server.server_address[1]
        out.print(f"listening on http://{host}:{bound} for {', '.join(paths)}", highlight=False)

    worker = partial(runners_for, [str(m) for m in mappings], str(_data_dir(data_dir).root))
    # The access log at INFO even without -v.
    logging.getLogger("crm_elasticity.connectors.server.access").setLevel(logging.INFO)
    try:
        serve_forever(runners, host, port, worker_factory=worker, ready=ready, secrets=secrets)
    except DataDirUnavailable as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


@app.command()
def inbox(
    retry: Annotated[
        bool, typer.Option("--retry", help="put every quarantined event back in the inbox")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="list at most this many")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Events the worker quarantined (it could not decide them) and why; --retry re-queues them."""
    from crm_elasticity.core.quarantine import quarantine_rows
    from crm_elasticity.core.sqlite_store import SQLiteStore

    path = _data_dir(data_dir).main
    if not path.is_file():
        _fail(f"no store in {_data_dir(data_dir).root}; nothing was ever received there")
    try:
        store = SQLiteStore(path)
        if retry:
            moved = store.quarantine_release()
            out.print(
                f"{moved} quarantined event(s) put back in the inbox; the worker "
                "decides them again on its next pass.",
                highlight=False,
            )
            return
        total = store.quarantine_count()
        held = store.quarantined(limit)
        # A vendor's redelivery may have been applied since: say so rather than alarm.
        unapplied = store.unseen([q.key for q in held])
        rows = quarantine_rows(held, applied={q.key for q in held} - unapplied)
    except StoreError as exc:
        _fail(str(exc))
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return
    table = Table(
        "event",
        "contact",
        "type",
        "occurred at",
        "quarantined at",
        "reason",
        title=f"{total} quarantined event(s)",
    )
    for row in rows:
        reason = row["reason"] + (" (since applied: redelivered)" if row["since_applied"] else "")
        table.add_row(
            row["event_id"],
            row["contact_id"],
            row["type"],
            row["occurred_at"],
            row["quarantined_at"],
            reason,
        )
    out.print(table)
    if total > len(rows):
        out.print(f"(showing the oldest {len(rows)}; --limit shows more)", highlight=False)
    if total:
        out.print(
            "Fix the cause, then `elasticity inbox --retry` to decide them again.", highlight=False
        )


def _interrupted(exc: KeyboardInterrupt, saved_in: Path) -> NoReturn:
    """Ctrl-C during a run: say what was kept, exit 130."""
    from crm_elasticity.core.publish import InterruptedAfterPublish

    if isinstance(exc, InterruptedAfterPublish):  # it came as the run was being saved
        err.print(
            f"interrupted; the run was complete and is saved in {saved_in}",
            highlight=False,
            markup=False,
        )
    else:
        err.print("interrupted; nothing written; previous results kept", highlight=False)
    raise typer.Exit(130)


def _progress_every() -> float:
    """Seconds between plain progress lines when stderr is not a terminal (CI logs)."""
    value = os.environ.get("ELASTICITY_PROGRESS_SECONDS", "10")
    try:
        seconds = float(value)
    except ValueError:
        _fail(f"ELASTICITY_PROGRESS_SECONDS: expected a number of seconds, got {value!r}", 2)
    if not seconds >= 0:
        _fail(f"ELASTICITY_PROGRESS_SECONDS: expected 0 or more seconds, got {value!r}", 2)
    return seconds


class _NotPublished(Exception):  # noqa: N818 - it names the outcome
    """A complete replay that is not to be published: (message, exit code)."""


def bad_line_limit(bad: int, events: int, limit: int | None) -> str | None:
    """Why a replay with `bad` bad lines and `events` good ones fails `--max-bad-lines`, or
    None. Without a limit, bad lines fail a run only when the file gave no event at all."""
    if limit is not None:
        if bad > limit:
            return f"{_plural(bad, 'bad line')}, more than --max-bad-lines {limit}"
        return None
    if bad and not events:
        return (
            f"{_plural(bad, 'bad line')} and no event in the file (without --max-bad-lines, "
            "a file that gives no event may have no bad line)"
        )
    return None


@app.command()
def replay(
    mapping: MappingArg,
    events: Annotated[Path, typer.Argument(help="JSON lines, one event a line")],
    until: Annotated[str | None, typer.Option(help="apply time rules up to this time")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="write states here")] = None,
    strict: Annotated[bool, typer.Option(help="fail on the first bad line")] = False,
    max_bad_lines: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="exit 2, keeping the previous results, when more lines than "
            "this are bad (default: no limit while the file gives events; none "
            "allowed when it gives none)",
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="print the summary as one JSON object on stdout (the states then need --out)",
        ),
    ] = False,
    engine: Annotated[
        str, typer.Option(help="coded (the fast bulk path) or object (the reference pipeline)")
    ] = "coded",
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="processes for the coded path (default: the machine's cores; "
            "one for a file under 16 MB)",
        ),
    ] = None,
    contacts: Annotated[
        Path | None,
        typer.Option(help="JSON lines {contact_id, properties}: consent and segment properties"),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run events through the policy offline; print or write final states as JSON lines.
    Keys a line has beyond the event format are ignored and counted."""
    from crm_elasticity.connectors.progress import RunProgress
    from crm_elasticity.core.publish import partial_path
    from crm_elasticity.core.replay import (
        BadLine,
        ReplayResult,
        load_contact_properties,
        replay_file,
    )

    loaded = _mapping(mapping)
    if not events.is_file():
        _fail(f"{events}: no such file", 2)
    if engine not in ("coded", "object"):
        _fail(f"--engine: expected coded or object, got {engine!r}", 2)
    if as_json and out_file is None:
        _fail("--json prints the summary on stdout: give --out FILE for the states", 2)
    properties = None
    if contacts is not None:
        if not contacts.is_file():
            _fail(f"{contacts}: no such file", 2)
        try:
            properties = load_contact_properties(contacts)
        except BadLine as exc:
            _fail(f"{contacts}:{exc.line}: {exc.problem}", 2)
    store_path = _data_dir(data_dir).replay
    horizon = _parse_time(until, "--until")

    def report_bad(bad: BadLine) -> None:
        err.print(f"{events}:{bad.line}: {bad.problem}", highlight=False, markup=False)

    size = events.stat().st_size
    if workers is None:
        workers = (os.cpu_count() or 1) if size >= 16 << 20 else 1
    # A states file is written under a temporary name and published with the run's store; a
    # device or a pipe (/dev/null, a FIFO) cannot be renamed onto: it gets the states after.
    streamed = out_file is not None and out_file.exists() and not out_file.is_file()
    written_out = partial_path(out_file) if out_file and not streamed else None
    if out_file is not None and not out_file.parent.is_dir():
        _fail(f"--out: no such directory {out_file.parent}", 2)
    counted: dict[str, int] = {}

    def before_publish(result: ReplayResult):
        problem = bad_line_limit(
            result.bad_lines, result.stats.events_in + result.after_until, max_bad_lines
        )
        if problem:
            _replay_summary(result, None, None, as_json, events, problem)
            raise _NotPublished(problem, 2)
        if out_file is None or written_out is None:
            return None
        bar.phase("states")
        try:
            with written_out.open("w") as sink:
                counted["states"] = result.write_states(sink)
        except OSError as exc:  # disk full, no permission
            raise _NotPublished(f"--out: {exc.strerror or exc}: {out_file}", 1) from None
        return [(written_out, out_file)]

    try:
        with RunProgress(err, "replay", size, "bytes", every=_progress_every()) as bar:
            result = replay_file(
                loaded,
                events,
                store_path,
                until=horizon,
                strict=strict,
                on_bad_line=report_bad,
                progress=bar.update,
                engine=engine,
                workers=workers,
                properties=properties,
                before_publish=before_publish,
                phase=bar.phase,
            )
    except BadLine as exc:
        report_bad(exc)
        _fail("--strict: stopped at the first bad line; nothing written, previous results kept", 2)
    except _NotPublished as exc:
        _fail(f"{exc.args[0]}; nothing written, previous results kept", exc.args[1])
    except KeyboardInterrupt as exc:
        _interrupted(exc, store_path)
    finally:
        if written_out is not None:
            written_out.unlink(missing_ok=True)
    count = counted.get("states")
    if out_file is None or streamed:
        try:
            if out_file is None:
                count = result.write_states(sys.stdout)
            else:
                with out_file.open("w") as sink:
                    count = result.write_states(sink)
        except KeyboardInterrupt:
            result.store.close()
            err.print(
                f"interrupted; the run is saved in {store_path}, the states written are incomplete",
                highlight=False,
                markup=False,
            )
            raise typer.Exit(130) from None
    result.store.close()
    _replay_summary(result, count, out_file, as_json, events, None)


def _replay_summary(
    result,
    count: int | None,
    out_file: Path | None,
    as_json: bool,
    events: Path,
    failed: str | None,
) -> None:
    """The replay's counts: a JSON object on stdout with --json, lines on stderr otherwise."""
    stats, unknown = result.stats, result.unknown
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "events_file": str(events),
                    "ok": failed is None,
                    "error": failed,
                    "events_applied": stats.applied,
                    "duplicates": stats.duplicates,
                    "bad_lines": result.bad_lines,
                    "after_until": result.after_until,
                    "unknown_key_lines": unknown.lines,
                    "unknown_keys": dict(unknown.top(20)),
                    "decisions": stats.decisions,
                    "contacts": count,
                    "late_events_decided_at_current_time": stats.late_unrevised,
                    "until": result.until.isoformat() if result.until else None,
                    "states_file": str(out_file) if out_file and failed is None else None,
                }
            )
            + "\n"
        )
        return
    where = f" written to {out_file}" if out_file and count is not None else ""
    contacts = f"; {_plural(count, 'contact')}{where}" if count is not None else ""
    err.print(
        f"{_plural(stats.applied, 'event')} applied, {_plural(stats.duplicates, 'duplicate')}, "
        f"{_plural(result.bad_lines, 'bad line')}, {_plural(stats.decisions, 'decision')}"
        f"{contacts}",
        highlight=False,
    )
    if result.after_until:
        err.print(
            f"{_plural(result.after_until, 'event')} after --until not applied", highlight=False
        )
    if unknown.lines:
        keys = ", ".join(f"{key} ({n:,})" for key, n in unknown.top())
        more = len(unknown.keys) - len(unknown.top())
        err.print(
            f"{_plural(unknown.lines, 'line')} carried keys the event format does not have "
            f"(ignored): {keys}" + (f" and {more} more" if more > 0 else ""),
            highlight=False,
            markup=False,
        )
    if stats.late_unrevised:
        err.print(
            f"warning: {stats.late_unrevised} events came after later events of their contact "
            "in an earlier batch and were decided at the contact's current time; sort the "
            "file by occurred_at for the in-order result",
            highlight=False,
        )


@app.command()
def simulate(
    contacts: Annotated[int, typer.Option(min=1, help="population size")] = 10_000,
    days: Annotated[int, typer.Option(min=1, help="days to simulate")] = 180,
    seed: Annotated[int, typer.Option(help="random seed")] = 7,
    mapping: Annotated[Path | None, typer.Option(help="policy from this mapping")] = None,
    report: Annotated[Path | None, typer.Option(help="report folder")] = None,
    engine: Annotated[
        str, typer.Option(help="coded (the fast bulk path) or object (the reference pipeline)")
    ] = "coded",
    data_dir: DataDirOption = None,
) -> None:
    """Synthetic population on the embedded store, with a report and a plot."""
    from crm_elasticity.connectors.progress import RunProgress
    from crm_elasticity.core.policy import Policy
    from crm_elasticity.core.publish import partial_path
    from crm_elasticity.core.simulate import (
        REPORT_FILES,
        SimulationConfig,
        run_simulation,
        write_report,
    )

    policy = _mapping(mapping).policy if mapping else Policy()
    directory = _data_dir(data_dir)
    report_dir = report or directory.root / "simulation"
    config = SimulationConfig(contacts=contacts, days=days, seed=seed)
    if engine not in ("coded", "object"):
        _fail(f"--engine: expected coded or object, got {engine!r}", 2)
    finals = [report_dir / name for name in REPORT_FILES]
    written = [partial_path(path) for path in finals]

    def before_publish(result):
        bar.phase("plotting")
        write_report(result, report_dir, suffix=".partial")
        return list(zip(written, finals, strict=True))

    try:
        with RunProgress(err, "simulate", days, "days", every=_progress_every()) as bar:
            result = run_simulation(
                config,
                policy,
                directory.simulate,
                progress=bar.advance,
                engine=engine,
                before_publish=before_publish,
                phase=bar.phase,
            )
    except KeyboardInterrupt as exc:
        _interrupted(exc, directory.simulate)
    finally:
        for path in written:
            path.unlink(missing_ok=True)
    out.print(result.markdown(), markup=False, highlight=False)
    out.print(f"report: {', '.join(str(p) for p in finals)}", highlight=False)


@app.command()
def explain(
    contact_id: Annotated[str, typer.Argument(help="contact id as the CRM knows it")],
    store: Annotated[
        str | None,
        typer.Option(
            help="main, replay, simulate, a path or dynamodb://TABLE[?region=R] "
            "(default: every local store)"
        ),
    ] = None,
    side_by_side: Annotated[
        bool, typer.Option("--compare", help="the base and candidate histories of `compare`")
    ] = False,
    data_dir: DataDirOption = None,
) -> None:
    """The contact's decision history from the ledger: why it is where it is."""
    from crm_elasticity.core.explain import explain_contact, side_by_side_history

    if side_by_side:
        stores = {side: _data_dir(data_dir).compare(side) for side in COMPARE_SIDES}
        if not all(p.is_file() for p in stores.values()):
            _fail("no comparison in the data dir; run `elasticity compare` first")
        text = side_by_side_history(stores["base"], stores["candidate"], contact_id)
        if text is None:
            _fail(f"contact {contact_id!r} has no decisions in either comparison store")
        out.print(text, markup=False, highlight=False)
        return
    if store is not None and store.startswith(DYNAMODB_URL):
        try:
            text = explain_contact(_dynamodb(store), contact_id)
        except StoreError as exc:
            _fail(str(exc))
        if text is None:
            _fail(f"contact {contact_id!r} has no decisions in {store}")
        out.print(f"[bold]{store}[/bold]", highlight=False)
        out.print(text, markup=False, highlight=False)
        return
    paths = _store_paths(data_dir, store)
    found = False
    for name, path in paths:
        text = explain_contact(path, contact_id)
        if text is not None:
            found = True
            out.print(f"[bold]{name}[/bold] ({path})", highlight=False)
            out.print(text, markup=False, highlight=False)
    if not found:
        where = ", ".join(str(p) for _, p in paths) or "no store in the data dir"
        _fail(f"contact {contact_id!r} has no decisions in {where}")


@app.command()
def history(
    mapping: MappingArg,
    out_file: Annotated[Path, typer.Option("--out", help="events file to append to (JSON lines)")],
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="import this CSV export instead of the CRM")
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="canonical=CSV column pairs, e.g. contact_id=Email,type=Event,"
            "occurred_at=Timestamp (event_id, campaign, variant, url optional)"
        ),
    ] = None,
    types: Annotated[
        str | None, typer.Option(help="CSV word=event type pairs, e.g. Opened=open,Clicked=click")
    ] = None,
    since: Annotated[str | None, typer.Option(help="only events at or after this time")] = None,
    until: Annotated[str | None, typer.Option(help="only events at or before this time")] = None,
) -> None:
    """Past engagement as canonical events for `replay` and `compare`, exported from the
    connected CRM (resumable: a checkpoint sits next to --out) or imported from a CSV;
    re-running appends nothing twice (stable event ids)."""
    loaded = _mapping(mapping)
    if csv_file is None:
        _export_history(loaded, out_file, since, until)
        return
    _import_history_csv(loaded, out_file, csv_file, columns, types, since, until)


def _export_history(loaded: Mapping, out_file: Path, since: str | None, until: str | None) -> None:
    from datetime import UTC

    from crm_elasticity.connectors.base import HistoryUnsupported
    from crm_elasticity.connectors.history import HistoryExport, checkpoint_path, export_history
    from crm_elasticity.connectors.registry import load_connector

    start = _parse_time(since, "--since")
    if start is None:
        _fail("--since: required when exporting from the CRM (the first instant to read)", 2)
    end = _parse_time(until, "--until")
    if end is not None and end < start:
        _fail("--until: earlier than --since", 2)
    try:
        connector = load_connector(loaded)
    except ConnectorError as exc:
        _fail(str(exc))

    def report_page(progress: HistoryExport) -> None:
        err.print(
            f"page {progress.pages}: {progress.written:,} events appended so far", highlight=False
        )

    try:
        result = export_history(connector, out_file, start, end, datetime.now(UTC), report_page)
    except HistoryUnsupported as exc:
        _fail(str(exc), 2)
    except ConnectorError as exc:
        _fail(
            f"{exc} (progress is checkpointed in {checkpoint_path(out_file)}; run the same "
            "command again to resume)"
        )
    if result.resumed:
        err.print("resumed from the checkpoint", highlight=False)
    for name, source in result.sources.items():
        notes = "; ".join(source.notes)
        if not source.available:
            err.print(f"{name}: {notes or 'not available'}", highlight=False, markup=False)
            continue
        skipped = ", ".join(f"{count:,} {why}" for why, count in source.skipped.items())
        err.print(
            f"{name}: {source.read:,} read, {source.written:,} events appended, "
            f"{source.already_there:,} already there"
            + (f"; skipped {skipped}" if skipped else "")
            + (f" ({notes})" if notes else ""),
            highlight=False,
            markup=False,
        )
    kinds = ", ".join(f"{n:,} {kind}" for kind, n in sorted(result.types.items()))
    err.print(
        f"{result.written:,} events appended to {out_file} ({kinds or 'none'}), "
        f"{result.already_there:,} already there, {result.outside_window:,} dated outside the "
        f"window {result.since.isoformat()} to "
        f"{result.until.isoformat()}",
        highlight=False,
    )
    if result.stopped:
        err.print(
            f"stopped: {result.stopped}; run the same command again to resume",
            highlight=False,
            markup=False,
        )
        raise typer.Exit(3)


def _import_history_csv(
    loaded: Mapping,
    out_file: Path,
    csv_file: Path,
    columns: str | None,
    types: str | None,
    since: str | None,
    until: str | None,
) -> None:
    from crm_elasticity.connectors.history import HistoryError, import_csv, parse_pairs

    if not csv_file.is_file():
        _fail(f"{csv_file}: no such file", 2)

    def report_bad(line: int, problem: str) -> None:
        err.print(f"{csv_file}:{line}: {problem}", highlight=False, markup=False)

    try:
        result = import_csv(
            loaded,
            csv_file,
            out_file,
            parse_pairs(columns, "--columns"),
            parse_pairs(types, "--types"),
            _parse_time(since, "--since"),
            _parse_time(until, "--until"),
            on_bad_row=report_bad,
        )
    except HistoryError as exc:
        _fail(str(exc), 2)
    err.print(
        f"{_plural(result.rows, 'row')} read: {result.written:,} events appended to {out_file}, "
        f"{result.already_there:,} already there, {result.outside_window:,} outside the window, "
        f"{_plural(result.bad_rows, 'bad row')}",
        highlight=False,
    )


@app.command()
def compare(
    base: Annotated[Path, typer.Argument(help="the mapping in use (YAML)", show_default=False)],
    candidate: Annotated[Path, typer.Argument(help="the mapping to try", show_default=False)],
    events: Annotated[Path, typer.Argument(help="JSON lines, one event a line")],
    until: Annotated[str | None, typer.Option(help="apply time rules up to this time")] = None,
    report_dir: Annotated[
        Path | None, typer.Option("--report", help="also write compare.md/.html/.json here")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="md, html or json on stdout")] = "md",
    data_dir: DataDirOption = None,
) -> None:
    """Replay two mappings on the same events and report what the candidate would change.
    Exit 0 when both end every contact alike with the same figures, 1 when they differ."""
    from crm_elasticity.core.compare import compare_policies, render

    if fmt not in ("md", "html", "json"):
        _fail(f"--format: expected md, html or json, got {fmt!r}", 2)
    _mapping(base)
    _mapping(candidate)
    if not events.is_file():
        _fail(f"{events}: no such file", 2)
    horizon = _parse_time(until, "--until")
    err.print("replaying both policies (one process each)...", highlight=False)
    result = compare_policies(base, candidate, events, _data_dir(data_dir).root, until=horizon)
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        for kind in ("md", "html", "json"):
            (report_dir / f"compare.{kind}").write_text(render(result, kind))
        err.print(f"report written to {report_dir}/compare.{{md,html,json}}", highlight=False)
    sys.stdout.write(render(result, fmt))
    raise typer.Exit(0 if result.identical else 1)


@app.command()
def report(
    store: Annotated[
        str, typer.Option(help="main, replay, simulate, a path or dynamodb://TABLE[?region=R]")
    ] = "main",
    since: Annotated[str | None, typer.Option(help="only decisions at or after this time")] = None,
    fmt: Annotated[str, typer.Option("--format", help="md, html or json")] = "md",
    out_path: Annotated[Path | None, typer.Option("--out", help="write here")] = None,
    mapping: Annotated[Path | None, typer.Option(help="mapping for experiment tables")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Funnel, transitions by reason, reactivation rate, experiments, data quality."""
    from crm_elasticity.core.ledger_reader import WindowError
    from crm_elasticity.core.report import render_report

    if fmt not in ("md", "html", "json"):
        _fail(f"--format: expected md, html or json, got {fmt!r}", 2)
    start = _parse_time(since, "--since")
    loaded = _mapping(mapping) if mapping else None
    if store.startswith(DYNAMODB_URL):
        source, label = _dynamodb(store), store
    else:
        paths = _store_paths(data_dir, store)
        if not paths:
            where = _data_dir(data_dir).root
            _fail(f"no store {store!r} in {where}; run simulate, replay or sync first")
        source, label = paths[0][1], None
    try:
        text = render_report(source, fmt, since=start, mapping=loaded, label=label)
    except WindowError as exc:
        _fail(f"--since: {exc}", 2)
    except StoreError as exc:
        _fail(str(exc))
    if out_path:
        out_path.write_text(text)
        out.print(f"report written to {out_path}", highlight=False)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command()
def sandbox(
    vendor: Annotated[str, typer.Argument(help="the CRM to stand in for: hubspot")],
    keep: Annotated[
        bool,
        typer.Option(
            "--keep", help="leave serve and the stand-in running for curl; Ctrl-C stops them"
        ),
    ] = False,
    mapping: Annotated[
        Path | None,
        typer.Option(
            help="mapping to provision and serve (default: the checkout's mappings/hubspot.yaml)"
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="a new directory for the sandbox's store, kept afterwards "
            "(default: a temporary one, removed)",
        ),
    ] = None,
) -> None:
    """Try the connected loop without a CRM: a local HubSpot stand-in, serve, signed webhooks,
    a sync, and what was written back (needs a source checkout)."""
    from crm_elasticity.connectors.sandbox import Sandbox, SandboxError, checkout_root

    if vendor != "hubspot":
        _fail(f"sandbox: expected hubspot, got {vendor!r} (the only stand-in shipped so far)", 2)
    try:
        path = mapping or checkout_root() / "mappings" / "hubspot.yaml"
    except SandboxError as exc:
        _fail(str(exc), exc.code)
    if not path.is_file():
        _fail(f"{path}: no such file", 2)
    _mapping(path)

    def table(title: str, columns: list[str], rows: list[tuple]) -> None:
        grid = Table(*columns, title=title, title_justify="left")
        for row in rows:
            grid.add_row(*(str(v) for v in row))
        out.print(grid)

    box = Sandbox(
        path,
        data_dir,
        keep,
        say=lambda text: out.print(text, highlight=False, markup=False),
        table=table,
    )
    try:
        code = box.run()
    except SandboxError as exc:
        _fail(str(exc), exc.code)
    raise typer.Exit(code)


@experiments_app.command("promote")
def promote(
    mapping: MappingArg,
    name: Annotated[str, typer.Argument(help="experiment name")],
    store: Annotated[
        str, typer.Option(help="main, replay, simulate, a path or dynamodb://TABLE[?region=R]")
    ] = "main",
    data_dir: DataDirOption = None,
) -> None:
    """Write a significant winner into the mapping file as the experiment's default."""
    from crm_elasticity.core.promote import PromotionError, promote_winner

    loaded = _mapping(mapping)
    if store.startswith(DYNAMODB_URL):
        source = _dynamodb(store)
    else:
        paths = _store_paths(data_dir, store)
        if not paths:
            _fail(f"no store {store!r} in {_data_dir(data_dir).root}")
        source = paths[0][1]
    try:
        message = promote_winner(mapping, loaded, name, source)
    except PromotionError as exc:
        _fail(str(exc))
    except StoreError as exc:
        _fail(str(exc))
    out.print(message, highlight=False)


if __name__ == "__main__":
    app()
