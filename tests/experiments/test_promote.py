"""Promotion writes the significant winner into the mapping, keeping the file as it was."""

from __future__ import annotations

import difflib
import json
import shutil

import pytest

from crm_elasticity.core.mapping import load_mapping
from crm_elasticity.core.pipeline import Pipeline
from crm_elasticity.core.policy_versions import change_log
from crm_elasticity.core.promote import PromotionError, promote_winner
from crm_elasticity.core.sqlite_store import SQLiteStore

from .helpers import HUBSPOT, event


@pytest.fixture
def run(tmp_path):
    """A store where subject_line=Value opens about twice as often as Curiosity."""
    path = tmp_path / "hubspot.yaml"
    shutil.copy(HUBSPOT, path)
    m = load_mapping(path)
    store_path = tmp_path / "store.sqlite3"
    store = SQLiteStore(store_path)
    pipeline = Pipeline(store, m.policy)
    rules = m.policy.program
    events = []
    for i in range(3000):
        cid = f"p{i}"
        events += [event(f"{cid}-e", cid, "enroll", 0), event(f"{cid}-s", cid, "send", 1)]
        value = rules.assign(cid)["subject_line"] == "Value"
        if (i % 3 != 0) if value else (i % 3 == 0):
            events.append(event(f"{cid}-o", cid, "open", 1.2))
    pipeline.process(events)
    store.close()
    return path, store_path


def test_promotion_adds_one_line_and_keeps_comments_and_order(run):
    path, store_path = run
    before = path.read_text()
    message = promote_winner(path, load_mapping(path), "subject_line", store_path)
    after = path.read_text()
    assert "promoted 'Value'" in message
    added = [
        line
        for line in difflib.ndiff(before.splitlines(), after.splitlines())
        if line.startswith(("+ ", "- "))
    ]
    assert added == ["+     default: Value"]
    lines = after.splitlines()
    at = lines.index("    default: Value")
    assert lines[at - 1] == "    variants: [{name: Curiosity}, {name: Value}]"
    assert "# Elastic newsletter program on HubSpot" in after
    reloaded = load_mapping(path)
    assert reloaded.experiments[0].default == "Value"
    assert reloaded.policy.version != load_mapping(HUBSPOT).policy.version
    store = SQLiteStore(store_path)
    try:
        promotions = [e for e in change_log(store) if e["kind"] == "promotion"]
        raw = store.execute("SELECT value FROM cursors WHERE name LIKE 'changelog:%'")
    finally:
        store.close()
    assert len(promotions) == 1 and "Value" in promotions[0]["changes"][0]
    assert json.loads(raw[0][0])["to_version"] == reloaded.policy.version
    again = promote_winner(path, reloaded, "subject_line", store_path)
    assert "already the default" in again
    assert path.read_text() == after


def test_no_winner_means_no_change_and_a_reason(run):
    path, store_path = run
    before = path.read_text()
    with pytest.raises(PromotionError, match="no winner to promote: minimum sample"):
        promote_winner(path, load_mapping(path), "reactivation_format", store_path)
    with pytest.raises(PromotionError, match="no experiment named 'nope'"):
        promote_winner(path, load_mapping(path), "nope", store_path)
    assert path.read_text() == before


def test_cli_promote_and_report(run, tmp_path):
    from typer.testing import CliRunner

    from crm_elasticity.connectors.cli import app

    path, store_path = run
    runner = CliRunner()
    result = runner.invoke(
        app, ["report", "--store", str(store_path), "--format", "json", "--mapping", str(path)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    subject = next(e for e in report["experiments"] if e["name"] == "subject_line")
    assert subject["winner"] == "Value"
    result = runner.invoke(
        app, ["experiments", "promote", str(path), "cta_button", "--store", str(store_path)]
    )
    assert result.exit_code == 1
    assert "no winner to promote" in result.output
    result = runner.invoke(
        app, ["experiments", "promote", str(path), "subject_line", "--store", str(store_path)]
    )
    assert result.exit_code == 0, result.output
    assert load_mapping(path).experiments[0].default == "Value"


@pytest.mark.parametrize("source", ["hubspot.yaml", "salesforce.yaml"])
def test_write_default_on_the_last_experiment_and_over_an_existing_default(tmp_path, source):
    from crm_elasticity.core.promote import write_default

    path = tmp_path / source
    shutil.copy(HUBSPOT.parent / source, path)
    before = path.read_text()
    write_default(path, "reactivation_format", "Plain-Text")
    first = path.read_text()
    diff = [
        line
        for line in difflib.ndiff(before.splitlines(), first.splitlines())
        if line.startswith(("+ ", "- "))
    ]
    assert diff == ["+     default: Plain-Text"]
    assert load_mapping(path).experiments[-1].default == "Plain-Text"
    path.write_text(first.replace("    default: Plain-Text", "    default: Plain-Text  # chosen"))
    write_default(path, "reactivation_format", "HTML")
    second = path.read_text()
    assert "    default: HTML  # chosen\n" in second
    assert second.replace("default: HTML  # chosen", "default: Plain-Text") == first
