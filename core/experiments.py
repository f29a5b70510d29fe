"""A/B experiments, the reactivation holdout and segment policies, compiled from the mapping.

Assignment is a pure function of (salt, experiment name, contact id), so every run, machine and
path (webhook worker, sync, replay, simulate) gives a contact the same variant without asking
the store. The engine stores the assignment on the contact when it enrolls (and on first sight
of a contact the CRM already had) and reads it when a reactivation step falls due.
"""

from __future__ import annotations

import hashlib
import json
import re
from bisect import bisect_right
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from core.models import ContactState, Status
from core.policy import Policy

if TYPE_CHECKING:
    from core.mapping import ExperimentSpec, FrequencyCap, Mapping
    from core.store import Store

HOLDOUT = "holdout"
HELD_OUT, TREATED = "holdout", "treated"
DEFAULT_FORMATS = ("HTML", "Plain-Text")
FORMAT_ELEMENT = "format"
MAX_STEPS = 5


class PromotionError(Exception):
    """No variant can be promoted (yet); the message says why."""


def unit_hash(*parts: str) -> float:
    """A uniform number in [0, 1) from the parts; identical on every machine and Python."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 18446744073709551616.0


class _Experiment:
    __slots__ = ("name", "salt", "variants", "cumulative", "stage", "element", "default")

    def __init__(self, spec: ExperimentSpec) -> None:
        self.name, self.salt, self.stage = spec.name, spec.salt, spec.stage
        self.element, self.default = spec.element.lower(), spec.default
        self.variants = tuple(v.name for v in spec.variants)
        total = sum(v.weight for v in spec.variants)
        running, bounds = 0.0, []
        for v in spec.variants[:-1]:
            running += v.weight
            bounds.append(running / total)
        self.cumulative = tuple(bounds)

    def pick(self, contact_id: str) -> str:
        u = unit_hash(self.salt, self.name, contact_id)
        return self.variants[bisect_right(self.cumulative, u)]

    def applies_to_step(self, step: int) -> bool:
        return self.stage == "reactivation" or self.stage == f"reactivation_{step}"


class ProgramRules:
    """What the engine needs from a mapping beyond the policy numbers. Plain slots: the engine
    consults it per enrollment and per reactivation step, never per ordinary event."""

    __slots__ = (
        "experiments", "running", "holdout_share", "holdout_salt", "frequency_cap",
        "segment", "policies", "snapshot", "n_keys", "_step_experiments", "governance",
        "withhold",
    )  # fmt: skip

    def __init__(self, mapping: Mapping) -> None:
        self.experiments = [_Experiment(e) for e in mapping.experiments]
        # A promoted experiment (default set) is over: new contacts get the default, unassigned.
        self.running = [e for e in self.experiments if e.default is None]
        holdout = mapping.holdout
        self.holdout_share = holdout.share if holdout is not None else None
        self.holdout_salt = holdout.salt if holdout is not None else ""
        self.frequency_cap: FrequencyCap | None = mapping.eligibility.frequency_cap
        self.segment: str | None = None
        self.policies: dict[str | None, Policy] = {}
        self.snapshot = program_snapshot(mapping)
        self.n_keys = len(self.running) + (self.holdout_share is not None)
        # Imported here: eligibility imports the mapping module, which imports this one.
        from core.eligibility import Governance

        self.governance = Governance(mapping.eligibility, mapping.segments)
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

    def policy_for(self, segment: str | None) -> Policy:
        return self.policies.get(segment) or self.policies[None]

    def assign(self, contact_id: str, have: dict[str, str] | None = None) -> dict[str, str]:
        """The contact's assignments: what it already has, plus any experiment it lacks."""
        out = dict(have) if have else {}
        for e in self.running:
            if e.name not in out:
                out[e.name] = e.pick(contact_id)
        if self.holdout_share is not None and HOLDOUT not in out:
            u = unit_hash(self.holdout_salt, HOLDOUT, contact_id)
            out[HOLDOUT] = HELD_OUT if u < self.holdout_share else TREATED
        return out

    def step_detail(self, state: ContactState, step: int) -> dict[str, Any]:
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
        return {"step": step, "cycle": state.reactivation_cycle, "format": fmt,
                "variants": variants}  # fmt: skip


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


def attach_program(mapping: Mapping) -> None:
    """Compile the mapping's program rules onto its policy and one policy per segment."""
    rules = ProgramRules(mapping)
    policies: dict[str | None, Policy] = {None: mapping.policy}
    for i, seg in enumerate(mapping.segments):
        policies[seg.name] = segment_policy(mapping.policy, seg.policy, f"segments[{i}].policy")
    rules.policies = policies
    mapping.policy.attach(rules)
    for name, policy in policies.items():
        if name is not None:
            twin = rules.for_segment(name)
            policy.attach(twin)


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


# ---- promotion -----------------------------------------------------------------------------


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: comments, order and flow style survive
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _scalar(value: str) -> str:
    plain = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.-]*", value) and value == value.strip()
    return value if plain and value.lower() not in _YAML_WORDS else json.dumps(value)


_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "~"}


def _edit_in_place(text: str, data: Any, index: int, variant: str) -> str | None:
    """Insert or replace the one `default:` line, leaving every other byte alone; None when
    the layout is unusual (flow-style item), and the caller falls back to a YAML dump."""
    lines = text.splitlines(keepends=True)
    items = data["experiments"]
    item = items[index]
    if item.fa.flow_style():
        return None
    if "default" in item:
        number = item.lc.key("default")[0]
        match = re.match(r"^(\s*default:\s*)([^#\n]*?)(\s*#.*)?(\r?\n)?$", lines[number])
        if match is None:
            return None
        lines[number] = (match.group(1) + _scalar(variant) + (match.group(3) or "")
                         + (match.group(4) or ""))  # fmt: skip
        return "".join(lines)
    column = item.lc.key("name")[1]
    if index + 1 < len(items):
        end = items[index + 1].lc.line
    else:
        keys = list(data.keys())
        after = keys[keys.index("experiments") + 1 :]
        end = data.lc.key(after[0])[0] if after else len(lines)
    while end > item.lc.line + 1 and (
        not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")
    ):
        end -= 1
    if end > 0 and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    lines.insert(end, " " * column + f"default: {_scalar(variant)}\n")
    return "".join(lines)


def write_default(mapping_path: Path, name: str, variant: str) -> str:
    """Set `experiments[name].default` in the file, touching nothing else; return the new text."""
    import io

    from core.mapping import parse_mapping

    yaml = _yaml()
    original = mapping_path.read_text()
    data = yaml.load(original)
    names = [item.get("name") for item in data.get("experiments") or []]
    if name not in names:
        raise PromotionError(f"{mapping_path}: no experiment named {name!r}")
    index = names.index(name)
    text = _edit_in_place(original, data, index, variant)
    if text is None or parse_mapping(text.encode(), str(mapping_path)).experiments[
        index
    ].default != variant:
        item = data["experiments"][index]
        if "default" in item:
            item["default"] = variant
        else:
            keys = list(item.keys())
            at = keys.index("variants") + 1 if "variants" in keys else len(keys)
            item.insert(at, "default", variant)
        buffer = io.StringIO()
        yaml.dump(data, buffer)
        text = buffer.getvalue()
    parse_mapping(text.encode(), str(mapping_path))  # never write a file that will not load
    tmp = mapping_path.with_name(mapping_path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(mapping_path)
    return text


def promote_winner(
    mapping_path: Path, mapping: Mapping, name: str, store_path: Path | Store
) -> str:
    """Write the experiment's significant winner into the mapping as its default and record
    the change in the store's change log. Raise `PromotionError` when there is no winner.
    `store_path` is a SQLite store file or an open store (DynamoDB) that is also a ledger
    reader; an open store is left open."""
    from core.mapping import policy_version
    from core.results import experiment_results
    from core.sqlite_store import SQLiteStore
    from core.store import Batch, Store

    spec = next((e for e in mapping.experiments if e.name == name), None)
    if spec is None:
        known = ", ".join(e.name for e in mapping.experiments) or "none"
        raise PromotionError(f"{mapping_path}: no experiment named {name!r} (known: {known})")
    opened = not isinstance(store_path, Store)
    store = SQLiteStore(store_path) if opened else store_path
    try:
        result = experiment_results(store, mapping, spec)  # type: ignore[arg-type]
        if result.winner is None:
            raise PromotionError(f"experiment {name!r}: no winner to promote: {result.verdict}")
        if spec.default == result.winner:
            return f"{name}: {result.winner!r} is already the default in {mapping_path}"
        text = write_default(Path(mapping_path), name, result.winner)
        entry = {
            "at": datetime.now(UTC).isoformat(),
            "kind": "promotion",
            "experiment": name,
            "default": result.winner,
            "previous_default": spec.default,
            "verdict": result.verdict,
            "from_version": mapping.policy.version,
            "to_version": policy_version(text.encode()),
            "mapping": str(mapping_path),
        }
        key = f"changelog:{entry['at']}:{name}"
        store.commit(Batch(cursors={key: json.dumps(entry)}))
    finally:
        if opened:
            store.close()
    return (
        f"{name}: promoted {result.winner!r} as the default in {mapping_path} "
        f"({result.verdict}); policy version {entry['from_version']} -> {entry['to_version']}"
    )


def assignment_counts(rules: ProgramRules, contact_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """How many of these contacts each variant gets: a balance check for tests and docs."""
    counts: dict[str, dict[str, int]] = {}
    for cid in contact_ids:
        for key, value in rules.assign(cid).items():
            bucket = counts.setdefault(key, {})
            bucket[value] = bucket.get(value, 0) + 1
    return counts
