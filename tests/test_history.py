"""`elasticity history --csv`: another tool's export as canonical events, appended once."""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crm_elasticity.connectors.cli import app
from crm_elasticity.connectors.history import export_history

runner = CliRunner()
COLUMNS = "contact_id=Email,type=Activity,occurred_at=When,url=Link,campaign=Email Name"
TYPES = "Opened=open,Clicked=click,Unsubscribed=unsubscribe"
CSV = (
    "Email,Activity,When,Link,Email Name,Ignored column\n"
    "a@example.com,Opened,2026-02-01T09:00:00Z,,March news,x\n"
    "a@example.com,Clicked,1769936460000,https://example.com/p,March news,x\n"
    "b@example.com,Unsubscribed,1769936400,,,x\n"
    "b@example.com,Bounced,2026-02-02T09:00:00Z,,,x\n"
    "c@example.com,Opened,2026-02-03 09:00:00,,,x\n"
)


def history(tmp_path: Path, *extra: str):
    source = tmp_path / "export.csv"
    if not source.exists():
        source.write_text(CSV)
    args = [
        "history",
        "mappings/hubspot.yaml",
        "--csv",
        str(source),
        "--out",
        str(tmp_path / "events.jsonl"),
        "--columns",
        COLUMNS,
        "--types",
        TYPES,
        *extra,
    ]
    return runner.invoke(app, args)


def test_rows_become_events_and_bad_rows_are_named(tmp_path):
    result = history(tmp_path)
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(e["contact_id"], e["type"]) for e in events] == [
        ("a@example.com", "open"),
        ("a@example.com", "click"),
        ("b@example.com", "unsubscribe"),
    ]
    assert events[1]["occurred_at"].startswith("2026-02-01T09:01:00")  # epoch milliseconds
    assert events[2]["occurred_at"].startswith("2026-02-01T09:00:00")  # epoch seconds
    assert events[1]["url"] == "https://example.com/p" and events[0]["campaign"] == "March news"
    assert "export.csv:5: type 'Bounced' is not an event the policy knows" in result.output
    assert "export.csv:6: occurred_at '2026-02-03 09:00:00'" in result.output  # no time zone
    assert "5 rows read: 3 events appended" in result.output and "2 bad rows" in result.output


def test_importing_the_same_export_again_appends_nothing(tmp_path):
    history(tmp_path)
    first = (tmp_path / "events.jsonl").read_text()
    result = history(tmp_path)
    assert result.exit_code == 0
    assert (tmp_path / "events.jsonl").read_text() == first
    assert "0 events appended" in result.output and "3 already there" in result.output


def test_the_window_and_a_replay_of_the_result(tmp_path):
    result = history(tmp_path, "--until", "2026-02-01T09:00:30Z")  # the click is later
    assert "1 outside the window" in result.output
    replayed = runner.invoke(
        app,
        ["replay", "mappings/hubspot.yaml", str(tmp_path / "events.jsonl")],
        env={"ELASTICITY_DATA_DIR": str(tmp_path)},
    )
    assert replayed.exit_code == 0, replayed.output
    states = {json.loads(x)["contact_id"]: json.loads(x) for x in replayed.stdout.splitlines()}
    assert states["b@example.com"]["suppression_reason"] == "unsubscribe"


def test_a_column_that_is_not_in_the_file_is_a_usage_error(tmp_path):
    source = tmp_path / "export.csv"
    source.write_text(CSV)
    result = runner.invoke(
        app,
        [
            "history",
            "mappings/hubspot.yaml",
            "--csv",
            str(source),
            "--out",
            str(tmp_path / "e.jsonl"),
            "--columns",
            "contact_id=Mail,type=Activity,occurred_at=When",
        ],
    )
    assert result.exit_code == 2
    assert "contact_id=Mail: no such column" in result.output


def test_exporting_from_the_crm_needs_since(tmp_path):
    result = runner.invoke(
        app, ["history", "mappings/hubspot.yaml", "--out", str(tmp_path / "e.jsonl")]
    )
    assert result.exit_code == 2
    assert "--since: required" in result.output


def test_a_connector_without_an_export_says_to_import_a_csv(tmp_path):
    from crm_elasticity.connectors.base import HistoryUnsupported
    from crm_elasticity.core.mapping import load_mapping
    from tests.fakes.memory_crm import MemoryConnector

    connector = MemoryConnector(load_mapping("tests/fakes/memory.yaml"))
    since = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(HistoryUnsupported, match="--csv FILE"):
        export_history(connector, tmp_path / "e.jsonl", since, None, since)
    assert not (tmp_path / "e.jsonl.checkpoint").exists()


def test_half_a_line_left_by_a_killed_run_is_dropped_before_appending(tmp_path):
    history(tmp_path)
    events = tmp_path / "events.jsonl"
    whole = events.read_text()
    events.write_text(whole + whole.splitlines()[0][:25])  # killed mid-write

    result = history(tmp_path)

    assert result.exit_code == 0, result.output
    assert events.read_text() == whole  # every line whole, nothing twice


# ---- the README's worked example -----------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE = "## Trying a policy change on your own history"


def worked_example() -> tuple[list[list[str]], list[str]]:
    """The section's commands (continued lines joined) and its output blocks."""
    text = README.read_text()
    section = text[text.index(EXAMPLE) :]
    section = section[: section.index("\n## ", len(EXAMPLE))]
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", section, re.S | re.M)
    commands = [
        shlex.split(line)
        for lang, block in blocks
        if lang == "bash"
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip()
    ]
    return commands, [block for lang, block in blocks if not lang]


def test_the_readme_worked_example_runs_and_shows_what_it_prints(tmp_path, monkeypatch):
    root = README.parent
    for folder in ("mappings", "examples"):
        (tmp_path / folder).symlink_to(root / folder)
    monkeypatch.chdir(tmp_path)
    env = {"ELASTICITY_DATA_DIR": str(tmp_path / "data")}
    commands, outputs = worked_example()
    sed, *rest = commands
    assert sed[0] == "sed" and sed[-2:] == [">", "candidate.yaml"]
    text = Path(sed[2]).read_text()
    assert "dormant_after_days: 90" in text
    candidate = text.replace("dormant_after_days: 90", "dormant_after_days: 60")
    Path("candidate.yaml").write_text(candidate)
    printed = {}
    for command in rest:
        assert command[0] == "elasticity"
        args = command[1:]
        if args[0] == "simulate":  # the same command on a small population: it runs, quickly
            args[args.index("--contacts") + 1] = "300"
        result = runner.invoke(app, args, env=env)
        printed[args[0]] = (result.exit_code, result.output)
    assert [c[1] for c in rest] == ["simulate", "simulate", "history", "compare"]
    assert printed["simulate"][0] == 0, printed["simulate"][1]
    assert printed["history"][0] == 0, printed["history"][1]
    assert printed["compare"][0] == 1, printed["compare"][1]  # the policies differ
    shown = outputs[-1].strip().splitlines()
    assert shown[0] in printed["history"][1]
    for line in filter(None, shown[1:]):
        assert line in printed["compare"][1], line
    assert Path("out/compare/compare.html").exists()
