"""docs/mapping-reference.md is generated from the mapping schema and must not go stale."""

from __future__ import annotations

from pathlib import Path

from crm_elasticity.connectors.mapping_reference import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "mapping-reference.md"


def test_the_checked_in_reference_matches_the_schema():
    assert DOC.read_text() == render(), (
        "docs/mapping-reference.md is stale: "
        "python -m crm_elasticity.connectors.mapping_reference > docs/mapping-reference.md"
    )


def test_the_reference_lists_every_key_of_every_section():
    from crm_elasticity.core.mapping import FrequencyCap, Mapping
    from crm_elasticity.core.policy import Decay

    text = render()
    for model in (Mapping, Decay, FrequencyCap):
        for name in model.model_fields:
            if name != "version":
                assert f"| `{name}` |" in text, name
    assert "## `options:` for vendor `hubspot`" in text
    assert "## `options:` for vendor `salesforce`" in text
