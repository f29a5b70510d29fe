"""`replay --contacts`: the consent and segment properties decide offline as they do on the
connected path."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import yaml
from typer.testing import CliRunner

from crm_elasticity.connectors.cli import app
from crm_elasticity.core.replay import replay_file
from tests.helpers import T0

ROOT = Path(__file__).resolve().parents[1]


def governed_mapping_file(tmp_path: Path) -> Path:
    data = yaml.safe_load((ROOT / "mappings" / "hubspot.yaml").read_text())
    data["eligibility"] = {"consent_property": "email_consent", "consent_means": "opt_in"}
    data["segments"] = [
        {"name": "fast-market", "where": {"country": "DE"}, "policy": {"dormant_after_days": 30}}
    ]
    path = tmp_path / "governed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_replay_with_contact_properties_withholds_and_segments(tmp_path):
    from crm_elasticity.core.mapping import load_mapping

    mapping = load_mapping(governed_mapping_file(tmp_path))
    events = write_lines(
        tmp_path / "events.jsonl",
        [
            {
                "event_id": f"enroll-{c}",
                "contact_id": c,
                "type": "enroll",
                "occurred_at": T0.isoformat(),
            }
            for c in ("de", "fr", "silent")
        ],
    )
    properties = {
        "de": {"country": "DE", "email_consent": "true"},
        "fr": {"country": "FR", "email_consent": "true"},
        "silent": {"country": "FR", "email_consent": None},
    }
    until = datetime(2026, 5, 7, tzinfo=UTC)  # 122 days: past 90 silent + 30 cooling
    result = replay_file(
        mapping, events, tmp_path / "r.sqlite3", until=until, properties=properties
    )
    states = result.store.get_contacts(["de", "fr", "silent"])
    assert states["de"].segment == "fast-market"
    assert states["fr"].segment is None
    assert states["fr"].reactivation_step == 1
    assert states["silent"].reactivation_step == 0
    withheld = [
        a
        for d in result.store.ledger_for("silent")
        for a in d.actions
        if a.kind == "reactivation_step_withheld"
    ]
    assert withheld and withheld[0].detail["reason"] == "no_consent"
    # Without the properties every contact counts as consenting and in no segment.
    plain = replay_file(mapping, events, tmp_path / "p.sqlite3", until=until)
    assert plain.store.get_contacts(["silent"])["silent"].reactivation_step == 1


def test_replay_refuses_a_bad_contacts_file(tmp_path):
    events = write_lines(tmp_path / "events.jsonl", [])
    contacts = tmp_path / "contacts.jsonl"
    contacts.write_text('{"contact_id": "a", "properties": {}}\n["not", "a", "row"]\n')
    result = CliRunner().invoke(
        app,
        ["replay", str(governed_mapping_file(tmp_path)), str(events), "--contacts", str(contacts)],
        env={"ELASTICITY_DATA_DIR": str(tmp_path)},
    )
    assert result.exit_code == 2
    assert "contacts.jsonl:2" in result.stderr
