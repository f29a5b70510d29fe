"""The command line, run in-process as a user would call it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crm_elasticity.connectors.cli import app

runner = CliRunner()


def invoke(*args: str, data_dir: Path | None = None):
    env = {"ELASTICITY_DATA_DIR": str(data_dir)} if data_dir else {}
    return runner.invoke(app, list(args), env=env)


def write_events(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def event_line(event_id, contact, kind, when):
    return json.dumps(
        {"event_id": event_id, "contact_id": contact, "type": kind, "occurred_at": when}
    )


@pytest.mark.parametrize("mapping", ["mappings/hubspot.yaml", "mappings/salesforce.yaml"])
def test_validate_accepts_the_shipped_mappings(mapping):
    result = invoke("validate", mapping)
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_validate_lists_every_problem_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = Path("mappings/hubspot.yaml").read_text()
    bad.write_text(text.replace("threshold: 20", "threshold: -20") + "\nsurprise: 1\n")
    result = invoke("validate", str(bad))
    assert result.exit_code == 2
    lines = bad.read_text().splitlines()
    threshold = lines.index("  threshold: -20") + 1
    surprise = lines.index("surprise: 1") + 1
    assert f"{bad}:{threshold}:3: policy.threshold:" in result.output
    assert f"{bad}:{surprise}:1: surprise: unknown key" in result.output
    assert "2 problems; nothing was run." in result.output


def test_replay_prints_final_states_applying_time_rules_until(tmp_path):
    events = write_events(
        tmp_path / "events.jsonl",
        [
            event_line("1", "a", "open", "2026-01-01T00:00:00Z"),
            event_line("2", "a", "click", "2026-01-02T00:00:00Z"),
            event_line("3", "a", "high_intent_visit", "2026-01-03T00:00:00Z"),
            event_line("4", "b", "enroll", "2026-01-01T00:00:00Z"),
        ],
    )
    result = invoke(
        "replay",
        "mappings/hubspot.yaml",
        str(events),
        "--until",
        "2026-04-02T00:00:00Z",
        data_dir=tmp_path,
    )
    assert result.exit_code == 0, result.output
    states = {s["contact_id"]: s for s in map(json.loads, result.stdout.strip().splitlines())}
    assert states["a"]["campaign_status"] == "Active"  # decayed out of Engaged on Feb 2
    assert states["a"]["engagement_score"] == 7.5  # 30 halved on Feb 2 and Mar 4
    assert states["b"]["campaign_status"] == "Dormant"  # 90 days of silence: Apr 1
    for key in (
        "last_engagement_date",
        "reactivation_cycle",
        "reactivation_step",
        "suppression_reason",
    ):
        assert key in states["a"]


def test_replay_reports_bad_lines_with_numbers_and_skips_them(tmp_path):
    events = write_events(
        tmp_path / "events.jsonl",
        [
            event_line("1", "a", "open", "2026-01-01T00:00:00Z"),
            "{not json",
            event_line("2", "a", "teleport", "2026-01-01T00:00:00Z"),
            json.dumps(
                {
                    "event_id": "3",
                    "contact_id": "a",
                    "type": "open",
                    "occurred_at": "2026-01-01T00:00:00",
                }
            ),  # naive time
        ],
    )
    out = tmp_path / "states.jsonl"
    result = invoke(
        "replay", "mappings/hubspot.yaml", str(events), "--out", str(out), data_dir=tmp_path
    )
    assert result.exit_code == 0, result.output
    assert f"{events}:2:" in result.stderr
    assert f"{events}:3: type: unknown event type 'teleport'" in result.stderr
    assert f"{events}:4: occurred_at:" in result.stderr
    assert "3 bad lines" in result.stderr
    assert [json.loads(line)["engagement_score"] for line in out.read_text().splitlines()] == [5]


@pytest.mark.parametrize("engine", ["coded", "object"])
def test_replay_says_how_many_events_lie_after_until(tmp_path, engine):
    events = write_events(
        tmp_path / "events.jsonl",
        [
            event_line("1", "a", "open", "2026-01-01T00:00:00Z"),
            event_line("2", "a", "open", "2026-01-03T00:00:00Z"),
            event_line("3", "b", "click", "2026-01-04T00:00:00Z"),
        ],
    )
    result = invoke(
        "replay",
        "mappings/hubspot.yaml",
        str(events),
        "--until",
        "2026-01-02T00:00:00Z",
        "--engine",
        engine,
        data_dir=tmp_path,
    )
    assert result.exit_code == 0, result.output
    assert "1 event applied" in result.stderr
    assert "2 events after --until not applied" in result.stderr
    whole = invoke(
        "replay", "mappings/hubspot.yaml", str(events), "--engine", engine, data_dir=tmp_path
    )
    assert "after --until" not in whole.stderr


def test_replay_strict_fails_on_the_first_bad_line(tmp_path):
    events = write_events(
        tmp_path / "events.jsonl",
        [
            event_line("1", "a", "open", "2026-01-01T00:00:00Z"),
            "{oops",
        ],
    )
    result = invoke("replay", "mappings/hubspot.yaml", str(events), "--strict", data_dir=tmp_path)
    assert result.exit_code == 2
    assert f"{events}:2:" in result.stderr
    assert result.stdout == ""


def test_replay_twice_gives_the_same_states(tmp_path):
    events = write_events(
        tmp_path / "events.jsonl",
        [
            event_line("1", "a", "open", "2026-01-01T00:00:00Z"),
            event_line("2", "a", "send", "2026-01-05T00:00:00Z"),
        ],
    )
    first = invoke("replay", "mappings/hubspot.yaml", str(events), data_dir=tmp_path)
    second = invoke("replay", "mappings/hubspot.yaml", str(events), data_dir=tmp_path)
    assert first.exit_code == second.exit_code == 0
    assert first.stdout == second.stdout != ""


def test_explain_shows_why_a_contact_is_where_it_is(tmp_path):
    events = write_events(
        tmp_path / "events.jsonl",
        [
            event_line("e-open", "a", "open", "2026-01-01T00:00:00Z"),
            event_line("e-click", "a", "click", "2026-01-02T00:00:00Z"),
            event_line("e-visit", "a", "high_intent_visit", "2026-01-03T00:00:00Z"),
        ],
    )
    assert invoke("replay", "mappings/hubspot.yaml", str(events), data_dir=tmp_path).exit_code == 0
    result = invoke("explain", "a", data_dir=tmp_path)
    assert result.exit_code == 0, result.output
    assert "Active -> Engaged" in result.stdout
    assert "engagement/score_reached_threshold" in result.stdout
    assert "cause e-visit" in result.stdout
    assert "handoff_task" in result.stdout


def test_explain_unknown_contact_is_a_clear_error(tmp_path):
    result = invoke("explain", "nobody", data_dir=tmp_path)
    assert result.exit_code == 1
    assert "has no decisions" in result.stderr


def test_validate_checks_the_vendor_and_its_options_in_one_pass(tmp_path):
    text = Path("mappings/salesforce.yaml").read_text()
    text = text.replace("vendor: salesforce", "vendor: salesforc")
    bad = tmp_path / "typo.yaml"
    bad.write_text(text + "  bulk_treshold: 10\n" if "options:" in text else text)
    result = invoke("validate", str(bad))
    assert result.exit_code == 2
    assert "unknown vendor 'salesforc'; did you mean 'salesforce'?" in result.output
    options = tmp_path / "options.yaml"
    options.write_text(
        Path("mappings/hubspot.yaml").read_text()
        + "\noptions:\n  webhook_signature: [v3]\n  property_group: Bad-Name\n"
    )
    result = invoke("validate", str(options))
    assert result.exit_code == 2, result.output
    assert "options.webhook_signature: unknown key" in result.output
    assert "did you mean 'webhook_signatures'?" in result.output
    assert "options.property_group:" in result.output
    assert "2 problems; nothing was run." in result.output


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"elasticity {version('crm-elasticity')}"


@pytest.mark.parametrize(
    "command",
    [["explain", "c-1"], ["report"], ["experiments", "promote", "mappings/hubspot.yaml", "x"]],
)
def test_an_unknown_store_name_is_a_usage_error(tmp_path, command):
    result = invoke(*command, "--store", "bogus", data_dir=tmp_path)
    assert result.exit_code == 2
    assert "unknown store 'bogus'" in result.output


def test_simulate_writes_summary_plot_and_markdown(tmp_path):
    report = tmp_path / "report"
    result = invoke(
        "simulate",
        "--contacts",
        "300",
        "--days",
        "60",
        "--seed",
        "3",
        "--report",
        str(report),
        data_dir=tmp_path,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((report / "summary.json").read_text())
    assert summary["config"]["contacts"] == 300
    assert len(summary["daily"]) == 60
    assert (
        sum(
            summary["final"][s]
            for s in ("Active", "Engaged", "Dormant", "Reactivated", "Suppressed")
        )
        == 300
    )
    saved = summary["sends_saved"]
    assert saved["actual_sends"] < saved["static_list_sends"]
    for row in summary["daily"]:  # the plot's suppression split and reactivation cycle
        assert row["Suppressed"] == row["suppressed_no_response"] + row["suppressed_compliance"]
    assert sum(row["step_1_sent"] for row in summary["daily"]) > 0
    assert (report / "audience.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Sends saved against a static list" in (report / "summary.md").read_text()


def test_simulate_and_report_give_the_same_figures_for_the_same_run(tmp_path):
    folder = tmp_path / "sim"
    result = invoke(
        "simulate",
        "--contacts",
        "2000",
        "--days",
        "120",
        "--seed",
        "5",
        "--report",
        str(folder),
        data_dir=tmp_path,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((folder / "summary.json").read_text())
    report = invoke("report", "--store", "simulate", "--format", "json", data_dir=tmp_path)
    assert report.exit_code == 0, report.output
    figures = json.loads(report.stdout)
    assert summary["sends_saved"] == figures["sends_saved"]
    assert summary["reactivation"] == figures["reactivation"]
    # Every email the simulation sent reached the ledger, reactivation steps included.
    assert sum(summary["sends"].values()) == figures["sends_saved"]["actual_sends"]
    assert summary["sends"]["reactivation"] > 0 and figures["reactivation"]["comebacks"] > 0
    markdown = invoke("report", "--store", "simulate", data_dir=tmp_path).stdout
    rate = f"{100 * figures['reactivation']['rate']:.1f}%"
    assert f"Reactivation rate: {rate}" in (folder / "summary.md").read_text()
    assert f"| {rate} |" in markdown


def test_simulate_is_reproducible_with_a_seed(tmp_path):
    runs = []
    for name in ("one", "two"):
        report = tmp_path / name
        invoke(
            "simulate",
            "--contacts",
            "200",
            "--days",
            "40",
            "--report",
            str(report),
            data_dir=tmp_path / name,
        )
        runs.append(json.loads((report / "summary.json").read_text())["daily"])
    assert runs[0] == runs[1]


def test_serve_worker_process_drains_what_the_server_recorded(tmp_path):
    """The worker `serve` starts in its own process builds its own runners and drains the
    inbox the HTTP process filled (same SQLite file)."""
    from datetime import UTC, datetime
    from functools import partial

    from crm_elasticity.connectors.server import WorkerProcess
    from crm_elasticity.core.models import Event
    from crm_elasticity.core.sqlite_store import SQLiteStore
    from tests.fakes.memory_crm import memory_runners

    store = SQLiteStore.in_data_dir(tmp_path)
    when = datetime(2026, 1, 1, tzinfo=UTC)
    store.inbox_put([Event(event_id="e1", contact_id="c1", type="open", occurred_at=when)])
    worker = WorkerProcess(partial(memory_runners, str(tmp_path)), idle_seconds=0.05)
    worker.start()
    try:
        for _ in range(400):
            if not store.inbox_take(1) and store.ledger_for("c1"):
                break
            worker.wake.set()
            worker.process.join(0.05)
    finally:
        worker.stop()
    assert store.inbox_take(1) == []
    assert [d.rule for d in store.ledger_for("c1")] == ["enroll", "engagement"]


def test_the_readme_example_events_end_where_the_readme_says(tmp_path):
    result = invoke(
        "replay",
        "mappings/hubspot.yaml",
        "examples/events.jsonl",
        "--until",
        "2026-05-15T00:00:00Z",
        data_dir=tmp_path,
    )
    assert result.exit_code == 0, result.output
    states = {
        row["contact_id"]: (row["campaign_status"], row["suppression_reason"])
        for row in map(json.loads, (line for line in result.stdout.splitlines() if line))
    }
    assert states == {
        "c-engaged": ("Active", None),
        "c-dormant": ("Reactivated", None),
        "c-unsub": ("Suppressed", "unsubscribe"),
        "c-silent": ("Active", None),
    }


@pytest.mark.parametrize("mapping", ["mappings/hubspot.yaml", "mappings/salesforce.yaml"])
def test_provision_dry_run_without_credentials_prints_the_offline_plan(mapping, monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith(("HUBSPOT_", "SALESFORCE_")):
            monkeypatch.delenv(name)
    result = invoke("provision", mapping, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "offline: nothing read from the CRM" in result.output
    assert "would change" in result.output
    without_dry_run = invoke("provision", mapping)
    assert without_dry_run.exit_code == 1


def test_help_shows_flags_by_name_with_no_type_placeholder():
    result = runner.invoke(app, ["replay", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "--strict" in result.output
    assert "<bool>" not in result.output and "<" not in result.output.split("--strict")[1][:20]


def test_validate_json_gives_the_verdict_and_every_problem(tmp_path):
    good = invoke("validate", "mappings/hubspot.yaml", "--json")
    assert good.exit_code == 0
    verdict = json.loads(good.stdout)
    assert verdict["valid"] is True and verdict["vendor"] == "hubspot" and verdict["problems"] == []
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path("mappings/hubspot.yaml").read_text() + "\nsurprise: 1\ncolour: red\n")
    result = invoke("validate", str(bad), "--json")
    assert result.exit_code == 2
    verdict = json.loads(result.stdout)
    assert verdict["valid"] is False and len(verdict["problems"]) == 2
