"""What a connected run owes the CRM for the contacts a batch decided.

The pipeline works it out with the decisions (`core.pipeline.Applied.writes` and `.tasks`), so
a connector's runner only persists it in the outbox and flushes it: it does not reach back into
the experiments or the mapping to find what to write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crm_elasticity.core.experiments import experiment_property_values
from crm_elasticity.core.models import ContactState, Decision

if TYPE_CHECKING:
    from crm_elasticity.core.mapping import Mapping


@dataclass(frozen=True)
class ContactWrite:
    """One contact's values for the CRM."""

    fields: dict[str, Any]
    """Canonical field -> value, for the fields the mapping writes (not read-only)."""
    properties: dict[str, Any] = field(default_factory=dict)
    """CRM property -> value the templates branch on: experiment variants, the holdout flag.
    Strings, booleans or None."""


@dataclass(frozen=True)
class WriteBack:
    """What the mapping has written back for a decided contact."""

    fields: tuple[str, ...] = ()
    mapping: Mapping | None = None
    """Set when the program has CRM properties to write (experiments, a holdout property)."""
    handoff: bool = False
    """Whether an Engaged hand-off owes a sales task."""

    @classmethod
    def of(cls, mapping: Mapping) -> WriteBack:
        holdout = mapping.holdout
        program = bool(mapping.experiments or (holdout is not None and holdout.property))
        return cls(
            fields=tuple(n for n, f in mapping.fields.items() if not f.read_only),
            mapping=mapping if program else None,
            handoff=mapping.handoff.enabled,
        )

    def contact(self, state: ContactState) -> ContactWrite:
        values = state.canonical_values()
        properties = (
            experiment_property_values(self.mapping, state) if self.mapping is not None else {}
        )
        return ContactWrite({n: values[n] for n in self.fields}, properties)

    def tasks(self, decisions: list[Decision]) -> list[Decision]:
        """The decisions that owe a sales task (one each)."""
        if not self.handoff:
            return []
        return [d for d in decisions for a in d.actions if a.kind == "handoff_task"]
