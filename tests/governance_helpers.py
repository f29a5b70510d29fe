"""Shipped mappings with the governance a careful operator adds: an opt-in consent property and
a segment with its own numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from crm_elasticity.core.mapping import Mapping, parse_mapping

ROOT = Path(__file__).resolve().parents[1]


def governed_mapping(
    vendor: str, consent: str | None = None, segment_on: str | None = None, **eligibility: Any
) -> Mapping:
    path = ROOT / "mappings" / f"{vendor}.yaml"
    data = yaml.safe_load(path.read_text())
    data["eligibility"] = {**eligibility}
    if consent is not None:
        data["eligibility"].update({"consent_property": consent, "consent_means": "opt_in"})
    if segment_on is not None:
        data["segments"] = [
            {
                "name": "fast-market",
                "where": {segment_on: "DE"},
                "policy": {"dormant_after_days": 30},
            }
        ]
    return parse_mapping(yaml.safe_dump(data).encode(), str(path))


def withheld_for(ledger: list, reason: str) -> list:
    return [
        d
        for d in ledger
        if any(
            a.kind == "reactivation_step_withheld" and a.detail.get("reason") == reason
            for a in d.actions
        )
    ]
