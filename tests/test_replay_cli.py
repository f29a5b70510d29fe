"""`replay` as a user runs it on a real export: extra columns ignored and counted, bad lines
against `--max-bad-lines` (exit codes), `--json` summaries, and progress in a CI log."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crm_elasticity.connectors.cli import app, bad_line_limit

runner = CliRunner()
MAPPING = "mappings/hubspot.yaml"


def invoke(*args: str, data_dir: Path):
    return runner.invoke(app, list(args), env={"ELASTICITY_DATA_DIR": str(data_dir)})


def line(event_id: str, contact: str, kind: str, when: str, **extra) -> str:
    return json.dumps(
        {"event_id": event_id, "contact_id": contact, "type": kind, "occurred_at": when, **extra}
    )


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def contacts_in(store: Path) -> list[str]:
    db = sqlite3.connect(store)
    try:
        return sorted(r[0] for r in db.execute("SELECT contact_id FROM contacts"))
    finally:
        db.close()


@pytest.mark.parametrize("engine", ["coded", "object"])
def test_extra_columns_are_ignored_and_counted(tmp_path, engine):
    events = write(
        tmp_path / "export.jsonl",
        [
            line("1", "a", "open", "2026-01-01T00:00:00Z", region="EU", list_id=4),
            line("2", "a", "click", "2026-01-02T00:00:00Z", region="EU"),
            line("3", "b", "open", "2026-01-02T00:00:00Z"),
            line("4", "b", "open", "2026-01-03T00:00:00Z", region="US", score="x", owner=None),
        ],
    )
    out = tmp_path / "states.jsonl"
    result = invoke(
        "replay", MAPPING, str(events), "--out", str(out), "--engine", engine, data_dir=tmp_path
    )
    assert result.exit_code == 0, result.output
    assert "4 events applied" in result.stderr
    assert "0 bad lines" in result.stderr
    assert (
        "3 lines carried keys the event format does not have (ignored): region (3), "
        "list_id (1), owner (1), score (1)"
    ) in result.stderr
    scores = {s["contact_id"]: s["engagement_score"] for s in map(json.loads, out.open())}
    assert scores == {"a": 15, "b": 10}


@pytest.mark.parametrize("engine", ["coded", "object"])
def test_a_file_of_bad_lines_fails_and_keeps_the_previous_results(tmp_path, engine):
    good = write(tmp_path / "good.jsonl", [line("1", "a", "open", "2026-01-01T00:00:00Z")])
    assert invoke("replay", MAPPING, str(good), data_dir=tmp_path).exit_code == 0
    store = tmp_path / "replay.sqlite3"
    assert contacts_in(store) == ["a"]
    bad = write(
        tmp_path / "bad.jsonl", ["{not json", line("2", "b", "teleport", "2026-01-01T00:00:00Z")]
    )
    result = invoke("replay", MAPPING, str(bad), "--engine", engine, data_dir=tmp_path)
    assert result.exit_code == 2, result.output
    assert "2 bad lines and no event in the file" in result.stderr
    assert "nothing written, previous results kept" in result.stderr
    assert result.stdout == ""
    assert contacts_in(store) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir() if "replay" in p.name) == ["replay.sqlite3"]


def test_bad_lines_beside_good_ones_pass_unless_over_the_limit(tmp_path):
    events = write(
        tmp_path / "events.jsonl",
        [
            line("1", "a", "open", "2026-01-01T00:00:00Z"),
            "{oops",
            "{oops again",
        ],
    )
    assert invoke("replay", MAPPING, str(events), data_dir=tmp_path).exit_code == 0
    at_limit = invoke("replay", MAPPING, str(events), "--max-bad-lines", "2", data_dir=tmp_path)
    assert at_limit.exit_code == 0, at_limit.output
    over = invoke("replay", MAPPING, str(events), "--max-bad-lines", "1", data_dir=tmp_path)
    assert over.exit_code == 2
    assert "2 bad lines, more than --max-bad-lines 1" in over.stderr


def test_the_default_limit():
    assert bad_line_limit(0, 0, None) is None  # an empty file: nothing wrong with it
    assert bad_line_limit(5, 1, None) is None
    assert bad_line_limit(1, 0, None) is not None
    assert bad_line_limit(3, 100, 2) is not None
    assert bad_line_limit(2, 0, 2) is None


def test_replay_json_summary(tmp_path):
    events = write(
        tmp_path / "events.jsonl",
        [
            line("1", "a", "open", "2026-01-01T00:00:00Z", region="EU"),
            line("1", "a", "open", "2026-01-01T00:00:00Z", region="EU"),
            "{oops",
        ],
    )
    out = tmp_path / "states.jsonl"
    result = invoke("replay", MAPPING, str(events), "--json", "--out", str(out), data_dir=tmp_path)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    assert (summary["events_applied"], summary["duplicates"], summary["bad_lines"]) == (1, 1, 1)
    assert (summary["unknown_key_lines"], summary["unknown_keys"]) == (2, {"region": 2})
    assert summary["contacts"] == 1
    assert summary["states_file"] == str(out)
    assert len(out.read_text().splitlines()) == 1


def test_replay_json_when_over_the_limit(tmp_path):
    events = write(tmp_path / "events.jsonl", ["{oops"])
    out = tmp_path / "states.jsonl"
    result = invoke("replay", MAPPING, str(events), "--json", "--out", str(out), data_dir=tmp_path)
    assert result.exit_code == 2
    summary = json.loads(result.stdout)
    assert summary["ok"] is False
    assert "no event in the file" in summary["error"]
    assert summary["states_file"] is None
    assert not out.exists()


def test_replay_json_needs_a_states_file(tmp_path):
    events = write(tmp_path / "events.jsonl", [line("1", "a", "open", "2026-01-01T00:00:00Z")])
    result = invoke("replay", MAPPING, str(events), "--json", data_dir=tmp_path)
    assert result.exit_code == 2
    assert "give --out FILE" in result.stderr


def test_progress_off_a_terminal_is_plain_phase_lines(tmp_path):
    events = write(tmp_path / "events.jsonl", [line("1", "a", "open", "2026-01-01T00:00:00Z")])
    out = tmp_path / "states.jsonl"
    result = invoke("replay", MAPPING, str(events), "--out", str(out), data_dir=tmp_path)
    assert result.exit_code == 0, result.output
    phases = [x for x in result.stderr.splitlines() if x.startswith("replay: ")]
    assert [p.split(" (")[0] for p in phases] == [
        "replay: reading and deciding events",
        "replay: writing the store",
        "replay: writing states",
    ]
    simulated = invoke(
        "simulate",
        "--contacts",
        "50",
        "--days",
        "3",
        "--report",
        str(tmp_path / "report"),
        data_dir=tmp_path,
    )
    assert simulated.exit_code == 0, simulated.output
    phases = [x.split(" (")[0] for x in simulated.stderr.splitlines() if x.startswith("simulate: ")]
    assert phases == [
        "simulate: deciding day by day",
        "simulate: writing the store",
        "simulate: summarising the ledger",
        "simulate: plotting",
    ]
    assert "\x1b[" not in result.stderr + simulated.stderr  # no terminal control codes


def test_periodic_lines_carry_bytes_rate_and_eta():
    import io

    from rich.console import Console

    from crm_elasticity.connectors.progress import RunProgress

    sink = io.StringIO()
    now = [0.0]
    console = Console(file=sink, soft_wrap=True)
    with RunProgress(
        console, "replay", 4_000_000, "bytes", every=10, clock=lambda: now[0], live=False
    ) as bar:
        bar.phase("reading")
        now[0] = 4.0
        bar.update(1_000_000, lines=8_000)  # within 10 s of the phase line: quiet
        now[0] = 10.0
        bar.update(2_000_000, lines=16_000)
        bar.phase("writing")
    lines = sink.getvalue().splitlines()
    assert lines == [
        "replay: reading and deciding events",
        "replay: reading and deciding events: 2.0 MB of 4.0 MB (50%), 16,000 lines, "
        "1,600 lines/s, ETA 0:00:10, elapsed 0:00:10",
        "replay: writing the store (2.0 MB of 4.0 MB (50%), 16,000 lines, 1,600 lines/s, "
        "ETA 0:00:10, elapsed 0:00:10)",
    ]
    days = io.StringIO()
    now[0] = 0.0
    with RunProgress(
        Console(file=days, soft_wrap=True),
        "simulate",
        180,
        "days",
        every=0,
        clock=lambda: now[0],
        live=False,
    ) as bar:
        now[0] = 20.0
        bar.advance(90)
    assert days.getvalue().strip() == (
        "simulate: 90 days of 180 days (50%), 4.5 days/s, ETA 0:00:20, elapsed 0:00:20"
    )


@pytest.mark.parametrize("engine", ["coded", "object"])
def test_the_report_counts_what_the_replay_could_not_use(tmp_path, engine):
    events = write(
        tmp_path / "events.jsonl",
        [
            line("1", "a", "open", "2026-01-01T00:00:00Z", region="EU"),
            line("1", "a", "open", "2026-01-01T00:00:00Z"),
            "{oops",
            line("2", "b", "click", "2026-01-02T00:00:00Z", region="US", crm_id=7),
        ],
    )
    assert (
        invoke("replay", MAPPING, str(events), "--engine", engine, data_dir=tmp_path).exit_code == 0
    )
    result = invoke("report", "--store", "replay", "--format", "json", data_dir=tmp_path)
    assert result.exit_code == 0, result.output
    quality = json.loads(result.stdout)["data_quality"]
    assert quality["replay_bad_lines_skipped"] == 1
    assert quality["replay_duplicate_events"] == 1
    assert quality["replay_lines_with_unknown_keys"] == 2
    assert quality["replay_unknown_keys_ignored"] == "region (2), crm_id (1)"
    markdown = invoke("report", "--store", "replay", data_dir=tmp_path).stdout
    assert "| replay bad lines skipped | 1 |" in markdown


def test_states_to_a_device_are_written_there_not_renamed_onto_it(tmp_path):
    import os
    import stat

    events = write(tmp_path / "events.jsonl", [line("1", "a", "open", "2026-01-01T00:00:00Z")])
    result = invoke("replay", MAPPING, str(events), "--out", os.devnull, data_dir=tmp_path)
    assert result.exit_code == 0, result.output
    assert "1 event applied" in result.stderr
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert not Path(os.devnull + ".partial").exists()
    missing = invoke(
        "replay", MAPPING, str(events), "--out", str(tmp_path / "no" / "s.jsonl"), data_dir=tmp_path
    )
    assert missing.exit_code == 2
    assert "--out: no such directory" in missing.stderr
