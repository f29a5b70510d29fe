"""A/B experiments, the reactivation holdout and segment policies, compiled from the mapping.

Assignment is a pure function of (salt, experiment name, contact id), so every run, machine and
path (webhook worker, sync, replay, simulate) gives a contact the same variant without asking
the store. The engine stores the assignment on the contact when it enrolls (and on first sight
of a contact the CRM already had) and reads it when a reactivation step falls due.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from crm_elasticity.core.eligibility import Governance
from crm_elasticity.core.models import ContactState, Status
from crm_elasticity.core.policy import Policy

if TYPE_CHECKING:
    from crm_elasticity.core.mapping import ExperimentSpec, FrequencyCap, Mapping

HOLDOUT = "holdout"
HELD_OUT, TREATED = "holdout", "treated"
DEFAULT_FORMATS = ("HTML", "Plain-Text")
FORMAT_ELEMENT = "format"
MAX_STEPS = 5


def unit_hash(*parts: str) -> float:
    """A uniform number in [0, 1) from the parts; identical on every machine and Python."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 18446744073709551616.0


_SEEDED: dict[bytes, Any] = {}
"""A hash of each prefix `unit_hash_after` was given, to copy (not kept on the experiments:
they travel to worker processes, and a hash object does not pickle)."""


def unit_hash_after(prefix: bytes, last: str) -> float:
    """`unit_hash(*parts, last)` where `prefix` is `unit_prefix(*parts)`: the prefix hashed
    once, not per contact (half the cost of an assignment)."""
    seed = _SEEDED.get(prefix)
    if seed is None:
        seed = _SEEDED[prefix] = hashlib.blake2b(prefix, digest_size=8)
    h = seed.copy()
    h.update(last.encode())
    return int.from_bytes(h.digest(), "big") / 18446744073709551616.0


def unit_prefix(*parts: str) -> bytes:
    return "".join(f"{part}\x1f" for part in parts).encode()


class _Experiment:
    __slots__ = (
        "name",
        "salt",
        "variants",
        "cumulative",
        "stage",
        "element",
        "default",
        "prefix",
    )

    def __init__(self, spec: ExperimentSpec) -> None:
        self.name, self.salt, self.stage = spec.name, spec.salt, spec.stage
        self.prefix = unit_prefix(self.salt, self.name)
        self.element, self.default = spec.element.lower(), spec.default
        self.variants = tuple(v.name for v in spec.variants)
        total = sum(v.weight for v in spec.variants)
        running, bounds = 0.0, []
        for v in spec.variants[:-1]:
            running += v.weight
            bounds.append(running / total)
        self.cumulative = tuple(bounds)

    def pick(self, contact_id: str) -> str:
        u = unit_hash_after(self.prefix, contact_id)
        return self.variants[bisect_right(self.cumulative, u)]

    def applies_to_step(self, step: int) -> bool:
        return self.stage == "reactivation" or self.stage == f"reactivation_{step}"


class Assigned(Protocol):
    """What `ProgramRules.step_detail` reads from a contact (a `ContactState` or a view of a
    coded one)."""

    @property
    def experiments(self) -> dict[str, str]: ...

    @property
    def reactivation_cycle(self) -> int: ...


class ProgramRules:
    """What the engine needs from a mapping beyond the policy numbers. Plain slots: the engine
    consults it per enrollment and per reactivation step, never per ordinary event."""

    __slots__ = (
        "experiments",
        "running",
        "holdout_share",
        "holdout_salt",
        "holdout_prefix",
        "frequency_cap",
        "segment",
        "policies",
        "snapshot",
        "n_keys",
        "_step_experiments",
        "governance",
        "withhold",
    )

    def __init__(self, mapping: Mapping) -> None:
        self.experiments = [_Experiment(e) for e in mapping.experiments]
        # A promoted experiment (default set) is over: new contacts get the default, unassigned.
        self.running = [e for e in self.experiments if e.default is None]
        holdout = mapping.holdout
        self.holdout_share = holdout.share if holdout is not None else None
        self.holdout_salt = holdout.salt if holdout is not None else ""
        self.holdout_prefix = unit_prefix(self.holdout_salt, HOLDOUT)
        self.frequency_cap: FrequencyCap | None = mapping.eligibility.frequency_cap
        self.segment: str | None = None
        self.policies: dict[str | None, Policy] = {}
        self.snapshot = program_snapshot(mapping)
        self.n_keys = len(self.running) + (self.holdout_share is not None)
        self.governance = Governance(mapping.eligibility, mapping.segments, mapping.program)
        self.withhold: str | None = None
        """Why reactivation steps are withheld for the contacts this twin governs (no consent,
        out of the audience); None for everyone the program may email."""
        self._step_experiments = {
            step: [e for e in self.experiments if e.applies_to_step(step)]
            for step in range(1, MAX_STEPS + 1)
        }

    def _twin(self) -> ProgramRules:
        twin = object.__new__(ProgramRules)
        for slot in ProgramRules.__slots__:
            object.__setattr__(twin, slot, getattr(self, slot))
        return twin

    def for_segment(self, name: str) -> ProgramRules:
        twin = self._twin()
        twin.segment = name
        return twin

    def withholding(self, reason: str) -> ProgramRules:
        """These rules for contacts the program may not email: steps fall due but nothing is
        sent, and the ledger says why."""
        twin = self._twin()
        twin.withhold = reason
        return twin

    def assign(self, contact_id: str, have: dict[str, str] | None = None) -> dict[str, str]:
        """The contact's assignments: what it already has, plus any experiment it lacks."""
        out = dict(have) if have else {}
        for e in self.running:
            if e.name not in out:
                out[e.name] = e.pick(contact_id)
        if self.holdout_share is not None and HOLDOUT not in out:
            u = unit_hash_after(self.holdout_prefix, contact_id)
            out[HOLDOUT] = HELD_OUT if u < self.holdout_share else TREATED
        return out

    def step_detail(self, state: Assigned, step: int) -> dict[str, Any]:
        """What a reactivation step sends: its format and the variant of every element."""
        variants: dict[str, str] = {}
        fmt: str | None = None
        assigned = state.experiments
        exact = [e for e in self._step_experiments.get(step, ()) if e.stage != "reactivation"]
        for e in self._step_experiments.get(step, ()):
            first = e.default or assigned.get(e.name) or e.variants[0]
            if e.stage == "reactivation":
                if e.element == FORMAT_ELEMENT and any(x.element == e.element for x in exact):
                    continue  # a step-specific format experiment decides this step
                # Later steps rotate through the variants: step 2 gets the other format.
                value = e.variants[(e.variants.index(first) + step - 1) % len(e.variants)]
            else:
                value = first
            variants[e.element] = value
            if e.element == FORMAT_ELEMENT:
                fmt = value
        if fmt is None:
            fmt = DEFAULT_FORMATS[(step - 1) % len(DEFAULT_FORMATS)]
        return {
            "step": step,
            "cycle": state.reactivation_cycle,
            "format": fmt,
            "variants": variants,
        }


def program_snapshot(mapping: Mapping) -> dict[str, Any]:
    """Everything in a mapping that changes decisions, as plain JSON, for the change log."""
    data = mapping.model_dump(
        mode="json", include={"policy", "experiments", "holdout", "segments", "eligibility"}
    )
    data["policy"].pop("version", None)
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def segment_policy(base: Policy, override: dict[str, Any], where: str) -> Policy:
    """The base policy with a segment's overrides (nested keys merge), same version."""
    data = _merge(base.model_dump(exclude={"version"}), override)
    try:
        return Policy.model_validate({**data, "version": base.version})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        path = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown policy key"
        raise ValueError(f"{where}.{path}: {message}") from None


def compile_program(mapping: Mapping) -> ProgramRules:
    """Compile a validated mapping's program rules and give them to its policy and to one
    policy per segment (the engine reads them from the policy it is handed). The mapping
    loader calls this once per file; validating a mapping compiles nothing."""
    rules = ProgramRules(mapping)
    policies: dict[str | None, Policy] = {None: mapping.policy}
    for i, seg in enumerate(mapping.segments):
        policies[seg.name] = segment_policy(mapping.policy, seg.policy, f"segments[{i}].policy")
    rules.policies = policies
    mapping.policy.attach(rules)
    for name, policy in policies.items():
        if name is not None:
            policy.attach(rules.for_segment(name))
    return rules


def experiment_property_values(mapping: Mapping, state: ContactState) -> dict[str, Any]:
    """CRM property -> value the templates branch on, for the connector to write back.

    A reactivation-stage format experiment writes the format of the contact's current step
    (step 2 gets the other format), so the CRM template needs one branch, not a step table.
    """
    rules: ProgramRules | None = mapping.policy.program
    values: dict[str, Any] = {}
    step = state.reactivation_step if state.campaign_status is Status.DORMANT else 0
    detail = rules.step_detail(state, step) if rules is not None and step else None
    for spec in mapping.experiments:
        value = spec.default or state.experiments.get(spec.name)
        if (
            detail is not None
            and spec.stage == "reactivation"
            and detail["variants"].get(spec.element.lower())
        ):
            value = detail["variants"][spec.element.lower()]
        values[spec.property] = value
    holdout = mapping.holdout
    if holdout is not None and holdout.property:
        group = state.experiments.get(HOLDOUT)
        values[holdout.property] = None if group is None else group == HELD_OUT
    return values


def assignment_counts(rules: ProgramRules, contact_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """How many of these contacts each variant gets: a balance check for tests and docs."""
    counts: dict[str, dict[str, int]] = {}
    for cid in contact_ids:
        for key, value in rules.assign(cid).items():
            bucket = counts.setdefault(key, {})
            bucket[value] = bucket.get(value, 0) + 1
    return counts
