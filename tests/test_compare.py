"""`elasticity compare`: two mappings replayed on the same events, and the difference reported."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crm_elasticity.connectors.cli import app

HUBSPOT = Path("mappings/hubspot.yaml")
CHROMIUM = Path("/usr/bin/chromium")
runner = CliRunner()


def invoke(*args: str, data_dir: Path):
    return runner.invoke(app, list(args), env={"ELASTICITY_DATA_DIR": str(data_dir)})


def events_file(path: Path) -> Path:
    """a and c enroll and engage once on day 0; b engages on day 20. Under a 60-day dormancy
    a and c are Dormant by day 70 and b is not yet; under 90 days nobody is."""
    rows = [
        ("e1", "a", "open", "2026-01-01T09:00:00Z"),
        ("e2", "b", "enroll", "2026-01-01T09:00:00Z"),
        ("e3", "b", "open", "2026-01-21T09:00:00Z"),
        ("e4", "c", "click", "2026-01-01T10:00:00Z"),
    ]
    path.write_text(
        "".join(
            json.dumps({"event_id": i, "contact_id": c, "type": t, "occurred_at": at}) + "\n"
            for i, c, t, at in rows
        )
    )
    return path


def candidate(tmp_path: Path, days: int) -> Path:
    text = HUBSPOT.read_text()
    assert "dormant_after_days: 90" in text
    path = tmp_path / "candidate.yaml"
    path.write_text(text.replace("dormant_after_days: 90", f"dormant_after_days: {days}"))
    return path


def test_a_mapping_compared_with_itself_is_identical(tmp_path):
    events = events_file(tmp_path / "events.jsonl")
    result = invoke(
        "compare",
        str(HUBSPOT),
        str(HUBSPOT),
        str(events),
        "--until",
        "2026-03-12T00:00:00Z",
        "--format",
        "json",
        data_dir=tmp_path,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["identical"] is True
    assert report["contacts"] == 3 and report["contacts_changed"] == 0
    assert report["final_state_moves"] == {}


def test_a_shorter_dormancy_shows_the_contacts_it_moves(tmp_path):
    events = events_file(tmp_path / "events.jsonl")
    folder = tmp_path / "report"
    result = invoke(
        "compare",
        str(HUBSPOT),
        str(candidate(tmp_path, 60)),
        str(events),
        "--until",
        "2026-03-12T00:00:00Z",
        "--report",
        str(folder),
        data_dir=tmp_path,
    )
    assert result.exit_code == 1, result.output
    report = json.loads((folder / "compare.json").read_text())
    assert report["contacts_changed"] == 2
    assert report["final_state_moves"] == {"Active -> Dormant": 2}
    assert report["samples"] == {"Active -> Dormant": ["a", "c"]}
    base, cand = (report["sides"][s]["figures"] for s in ("base", "candidate"))
    assert (base["dormancies"], cand["dormancies"]) == (0, 2)
    assert "2 of 3 contacts end in a different state" in result.stdout
    assert "| times contacts went Dormant | 0 | 2 | +2 |" in result.stdout
    page = (folder / "compare.html").read_text()
    assert re.search(r'src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page

    shown = invoke("explain", "a", "--compare", data_dir=tmp_path)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("base") and "| candidate" in lines[0]
    parted = [line for line in lines if "*|" in line]
    assert parted and "Active -> Dormant" in parted[0].split("|")[1]


def test_explain_compare_without_a_comparison_is_a_clear_error(tmp_path):
    result = invoke("explain", "a", "--compare", data_dir=tmp_path)
    assert result.exit_code == 1
    assert "run `elasticity compare` first" in result.output


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed")
def test_the_comparison_page_renders_in_headless_chromium(tmp_path):
    events = events_file(tmp_path / "events.jsonl")
    folder = tmp_path / "report"
    invoke(
        "compare",
        str(HUBSPOT),
        str(candidate(tmp_path, 60)),
        str(events),
        "--until",
        "2026-03-12T00:00:00Z",
        "--report",
        str(folder),
        data_dir=tmp_path,
    )
    shot = tmp_path / "compare.png"
    args = [
        str(CHROMIUM),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,2000",
        f"--screenshot={shot}",
        (folder / "compare.html").as_uri(),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
    assert shot.exists() and shot.stat().st_size > 10_000, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "error" in line.lower()], console
