"""The policy numbers of the rules (README, "How it works"), every one set from the mapping file."""

from __future__ import annotations

from collections.abc import Mapping as MappingABC
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from crm_elasticity.core.models import ENGAGEMENT_EVENTS, NON_ENGAGEMENT_EVENTS

if TYPE_CHECKING:
    from crm_elasticity.core.experiments import ProgramRules
    from crm_elasticity.core.models import ContactState

MAX_POLICY_DAYS = 36_500
"""Every duration a policy sets is at most a century: with event times before 2200
(`core.models.LATEST_INSTANT`) every due time the engine computes stays a representable date."""

DEFAULT_POINTS = {"open": 5.0, "click": 10.0, "high_intent_visit": 15.0}


class StrictModel(BaseModel):
    """The base of every model a mapping file fills: unknown keys refused, frozen once built."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Decay(StrictModel):
    """How a score fades while no new engagement comes."""

    factor: float = Field(0.5, gt=0, le=1, description="the score is multiplied by this")
    after_days: float = Field(
        30, ge=0, le=MAX_POLICY_DAYS, description="first decay, days after the last engagement"
    )
    every_days: float = Field(
        30, gt=0, le=MAX_POLICY_DAYS, description="then again every this many days"
    )
    floor: float = Field(1.0, ge=0, description="a decayed score below this becomes 0")


class Compiled:
    """Policy numbers in the units the engine's hot path uses."""

    __slots__ = (
        "points",
        "threshold",
        "max_unanswered_sends",
        "dormant_after",
        "cooling",
        "steps",
        "step_wait",
        "max_cycles",
        "decay_factor",
        "decay_after",
        "decay_every",
        "decay_floor",
        "handoff",
        "program",
        "cap_max",
        "cap_window",
        "known",
        "version",
        "_decay_offsets",
    )

    def __init__(self, policy: Policy) -> None:
        self.points = dict(policy.points)
        self.threshold = policy.threshold
        self.max_unanswered_sends = policy.max_unanswered_sends
        self.dormant_after = timedelta(days=policy.dormant_after_days)
        self.cooling = timedelta(days=policy.cooling_days)
        self.steps = policy.reactivation_steps
        self.step_wait = timedelta(days=policy.step_wait_days)
        self.max_cycles = policy.max_reactivation_cycles
        self.decay_factor = policy.decay.factor
        self.decay_after = timedelta(days=policy.decay.after_days)
        self.decay_every = timedelta(days=policy.decay.every_days)
        self.decay_floor = policy.decay.floor
        self._decay_offsets = tuple(self.decay_after + k * self.decay_every for k in range(64))
        self.handoff = policy.handoff_on_engaged
        self.version = policy.version
        self.known = frozenset(policy.points) | ENGAGEMENT_EVENTS | NON_ENGAGEMENT_EVENTS
        # Experiments, holdout, segment and frequency cap of the mapping (core.experiments).
        self.program = policy._program
        cap = getattr(self.program, "frequency_cap", None)
        self.cap_max = cap.max_sends if cap is not None else 0
        self.cap_window = timedelta(days=cap.window_days) if cap is not None else timedelta(0)

    def decay_offset(self, steps: int) -> timedelta:
        """How long after the last engagement decay step `steps` + 1 falls due."""
        offsets = self._decay_offsets
        return offsets[steps] if steps < 64 else self.decay_after + steps * self.decay_every


class Policy(StrictModel):
    """The program's numbers. A segment's `policy:` overrides any of them for its contacts."""

    points: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_POINTS),
        description="score per engagement type; a custom type (e.g. form_submit) counts once "
        "it has points",
    )
    threshold: float = Field(20, gt=0, description="score at which a contact becomes Engaged")
    max_unanswered_sends: int = Field(
        3, ge=1, description="sends without engagement that make a contact Dormant (at that send)"
    )
    dormant_after_days: float = Field(
        90, gt=0, le=MAX_POLICY_DAYS, description="days of silence that make Dormant"
    )
    cooling_days: float = Field(
        30, ge=0, le=MAX_POLICY_DAYS, description="Dormant this long before step 1 is due"
    )
    reactivation_steps: int = Field(2, ge=1, le=5, description="emails in a reactivation cycle")
    step_wait_days: float = Field(
        7,
        gt=0,
        le=MAX_POLICY_DAYS,
        description="days between steps, and after the last one before no_response",
    )
    max_reactivation_cycles: int = Field(
        2, ge=0, description="cycles a contact may use; after them, Suppressed (no_response)"
    )
    decay: Decay = Field(default_factory=Decay, description="score decay")
    handoff_on_engaged: bool = Field(True, description="create a sales task when Engaged")
    version: str = Field("unversioned", description="content hash of the mapping it came from")

    _program: ProgramRules | None = PrivateAttr(default=None)
    """The program rules compiled from the mapping that declared this policy (the mapping
    loader gives them, `core.experiments.compile_program`); None for a bare policy."""

    @model_validator(mode="after")
    def _points_are_engagement(self) -> Policy:
        for name, value in self.points.items():
            if name in NON_ENGAGEMENT_EVENTS:
                raise ValueError(f"points.{name}: '{name}' is not an engagement event")
            if value < 0:
                raise ValueError(f"points.{name}: expected a number >= 0, got {value}")
        return self

    @cached_property
    def compiled(self) -> Compiled:
        return Compiled(self)

    @property
    def program(self) -> ProgramRules | None:
        return self._program

    def for_contact(self, who: ContactState | str | None) -> Policy:
        """The policy that governs a contact, or the contacts of a segment named outright: the
        segment's overrides on these numbers (same version). This policy for a contact without
        a segment, a segment the mapping does not declare, or a policy without a program. A
        contact's segment is fixed when it enrolls."""
        name = who if who is None or isinstance(who, str) else who.segment
        program = self._program
        if name is None or program is None:
            return self
        return program.policies.get(name, self)

    def attach(self, program: ProgramRules) -> None:
        """Give the engine the mapping's experiments, holdout, segment and frequency cap."""
        self._program = program
        self.__dict__.pop("compiled", None)

    def model_copy(
        self, *, update: MappingABC[str, Any] | None = None, deep: bool = False
    ) -> Policy:
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("compiled", None)  # the numbers may differ: compile again
        return copied

    def knows_event(self, event_type: str) -> bool:
        return event_type in self.compiled.known
