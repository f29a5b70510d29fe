"""`report` on a simulated run: every section, every format, the window and the roll-up."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crm_elasticity.core.mapping import load_mapping
from crm_elasticity.core.pipeline import Pipeline
from crm_elasticity.core.report import build, render_report
from crm_elasticity.core.simulate import SimulationConfig, run_simulation
from crm_elasticity.core.sqlite_store import SQLiteStore

from .helpers import HUBSPOT, event, mapping

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "simulate.sqlite3"
    m = load_mapping(HUBSPOT)
    # The object pipeline's text ledger, which these tests count row by row (the coded path's
    # roll-up and report are held to this one in tests/test_coded_simulate.py).
    run_simulation(
        SimulationConfig(contacts=1500, days=120, seed=11), m.policy, path, engine="object"
    )
    return path, m


def test_rollup_counts_every_ledger_decision(simulated):
    path, _ = simulated
    db = sqlite3.connect(path)
    ledger = dict(db.execute("SELECT rule, COUNT(*) FROM ledger GROUP BY rule").fetchall())
    rolled = dict(db.execute("SELECT rule, SUM(n) FROM ledger_rollup GROUP BY rule").fetchall())
    assert ledger == rolled
    db.close()


def test_json_report_has_every_section_with_consistent_numbers(simulated):
    path, m = simulated
    report = json.loads(render_report(path, "json", None, m))
    db = sqlite3.connect(path)
    total = db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
    now = dict(db.execute("SELECT campaign_status, COUNT(*) FROM contacts GROUP BY 1"))
    db.close()
    assert report["overview"]["decisions"] == total
    levels = report["funnel"]["levels"]
    assert {s: levels[s][-1] for s in levels} == {s: now.get(s, 0) for s in levels}
    assert {e["name"] for e in report["experiments"]} == {
        "subject_line",
        "cta_button",
        "reactivation_format",
    }
    for exp in report["experiments"]:
        for arm in exp["arms"]:
            assert arm["low"] <= arm["rate"] <= arm["high"]
    holdout = {a["name"]: a for a in report["holdout"]["arms"]}
    assert holdout["holdout"]["cycles"] > 0 and holdout["treated"]["cycles"] > 0
    assert report["sends_saved"]["sends_saved"] > 0
    assert report["suppression"]["now"].get("no_response", 0) > 0
    assert (
        report["transitions_by_reason"][0]["count"] >= report["transitions_by_reason"][-1]["count"]
    )
    assert report["change_log"][0]["version"] == m.policy.version
    assert {r["version"] for r in report["transitions_by_policy_version"]} == {m.policy.version}


def test_since_mid_day_counts_exactly_what_the_ledger_holds_after_it(simulated):
    path, m = simulated
    since = datetime(2026, 3, 3, 13, 30, tzinfo=UTC)
    report = build(path, since, m)
    db = sqlite3.connect(path)
    expected = db.execute(
        "SELECT COUNT(*) FROM ledger WHERE at >= ?", (since.isoformat(),)
    ).fetchone()[0]
    moves = db.execute(
        "SELECT COUNT(*) FROM ledger WHERE at >= ? AND "
        "(from_status IS NULL OR from_status <> to_status)",
        (since.isoformat(),),
    ).fetchone()[0]
    db.close()
    assert 0 < report["overview"]["decisions"] == expected
    assert sum(r["count"] for r in report["transitions_by_reason"]) == moves
    assert report["overview"]["first_day"] == "2026-03-03"


def test_markdown_report_reads_as_tables(simulated):
    path, m = simulated
    text = render_report(path, "md", None, m)
    for title in (
        "## Funnel by state over time",
        "## Transitions by reason",
        "## Reactivation rate by cycle",
        "## Sends saved against a static list",
        "## Suppression by reason",
        "## Experiment: subject_line",
        "## Holdout: reactivation sends against none",
        "## Policy change log",
        "## Data quality",
    ):
        assert title in text
    assert "| variant | exposures |" in text


def test_html_report_is_one_self_contained_file(simulated, tmp_path):
    path, m = simulated
    page = render_report(path, "html", None, m)
    assert page.startswith("<!DOCTYPE html>")
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)) == 2
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script" not in page
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report.html").write_text(page)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed")
def test_html_report_renders_in_headless_chromium_without_console_errors(simulated, tmp_path):
    path, m = simulated
    page = tmp_path / "report.html"
    page.write_text(render_report(path, "html", None, m))
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    args = [
        str(CHROMIUM),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,4000",
        f"--screenshot={shot}",
        page.as_uri(),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    assert shot.exists() and shot.stat().st_size > 10_000, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "error" in line.lower()], console


def test_policy_versions_show_their_transitions_and_what_changed(tmp_path):
    first = mapping()
    second = mapping(replace={"  threshold: 20": "  threshold: 25"})
    store = SQLiteStore(tmp_path / "v.sqlite3")
    Pipeline(store, first.policy).process(
        [event("a1", "a", "click", 0), event("a2", "a", "click", 1)]
    )
    Pipeline(store, second.policy).process(
        [
            event("b1", "b", "click", 2),
            event("b2", "b", "click", 3),
            event("b3", "b", "open", 4),
            event("b4", "b", "open", 5),
        ]
    )
    store.close()
    report = build(tmp_path / "v.sqlite3", None, None)
    log = report["change_log"]
    assert [e["version"] for e in log] == [first.policy.version, second.policy.version]
    assert log[1]["changes"] == ["policy.threshold: 20.0 -> 25.0"]
    engaged = {
        r["version"]: r["count"]
        for r in report["transitions_by_policy_version"]
        if r["to"] == "Engaged"
    }
    assert engaged == {first.policy.version: 1, second.policy.version: 1}


def test_a_store_from_before_the_rollup_gets_it_rebuilt(simulated, tmp_path):
    path, _ = simulated
    copy = tmp_path / "old.sqlite3"
    shutil.copy(path, copy)
    db = sqlite3.connect(copy)
    before = db.execute(
        "SELECT rule, reason, cycle, SUM(n) FROM ledger_rollup GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ).fetchall()
    db.execute("DROP TABLE ledger_rollup")
    db.commit()
    db.close()
    SQLiteStore(copy).close()
    db = sqlite3.connect(copy)
    after = db.execute(
        "SELECT rule, reason, cycle, SUM(n) FROM ledger_rollup GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ).fetchall()
    db.close()
    assert after == before


def test_an_empty_store_reads_as_empty_not_none(tmp_path):
    path = tmp_path / "empty.sqlite3"
    SQLiteStore(path).close()
    text = render_report(path, "md")
    assert "None" not in text
    assert "0 decisions (all time; nothing decided yet); 0 contacts in the store." in text


def test_experiment_table_labels_and_units():
    from crm_elasticity.core.report_render import experiment_table

    arm = {
        "exposures": 10,
        "sends": 10,
        "opens": 1,
        "clicks": 0,
        "cycles": 0,
        "reactivations": 0,
        "rate": 0.1,
        "low": 0.01,
        "high": 0.4,
        "lift": None,
        "lift_low": None,
        "lift_high": None,
        "p_value": None,
    }
    no_base = {
        "metric": "open",
        "baseline": "A",
        "arms": [
            {**arm, "name": "A", "exposures": 0, "diff": None, "diff_low": None, "diff_high": None},
            {**arm, "name": "B", "diff": None, "diff_low": None, "diff_high": None},
        ],
    }
    _, rows = experiment_table(no_base)
    assert [r[9] for r in rows] == ["baseline", "- (no baseline exposures)"]
    with_base = {
        "metric": "open",
        "baseline": "A",
        "arms": [
            {**arm, "name": "A", "diff": None, "diff_low": None, "diff_high": None},
            {**arm, "name": "B", "diff": 0.05, "diff_low": -0.02, "diff_high": 0.12},
        ],
    }
    _, rows = experiment_table(with_base)
    assert rows[1][9] == "+5.00 pts" and rows[1][10] == "[-2.00, +12.00] pts"
