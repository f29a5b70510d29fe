"""The mapping file: which CRM property holds which canonical field, which vendor signal means
which event, which lists exist, and the policy numbers. Validated on load; a bad file gets one
message per problem naming the file, the key path and what was expected, and nothing runs.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from crm_elasticity.core.experiments import compile_program, segment_policy
from crm_elasticity.core.models import CANONICAL_FIELDS, Status
from crm_elasticity.core.policy import MAX_POLICY_DAYS, Policy, StrictModel

FieldType = Literal["enumeration", "datetime", "date", "number", "string", "bool"]


class FieldSpec(StrictModel):
    """The CRM property that holds one canonical field."""

    property: str = Field(min_length=1, description="the CRM's internal property or field name")
    label: str | None = Field(None, description="label used when provisioning creates it")
    type: FieldType = Field(description="the property's type in the CRM")
    read_only: bool = Field(False, description="a vendor-native property we read, never write")


class Signal(StrictModel):
    """A vendor property whose change means a canonical event."""

    property: str = Field(min_length=1, description="the CRM property to watch")
    event: str = Field(
        min_length=1, description="canonical event type (or an engagement type with points)"
    )
    patterns: list[str] = Field(
        default_factory=list, description="regexes the new value must match"
    )
    values: list[str] = Field(default_factory=list, description="values that count (e.g. 'true')")

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"'{pattern}' is not a valid regular expression: {exc}") from exc
        return patterns

    def matches(self, value: str | None) -> bool:
        if value is None or value == "":
            return False
        if self.values and value.lower() not in {v.lower() for v in self.values}:
            return False
        return not self.patterns or any(re.search(p, value) for p in self.patterns)


class ListSpec(StrictModel):
    """A dynamic list the CRM keeps itself, filtered on the status property."""

    name: str = Field(min_length=1, description="the list's name in the CRM")
    statuses: list[Status] = Field(min_length=1, description="members have one of these states")
    suppression_reasons: list[str] = Field(
        default_factory=list, description="and, if given, one of these suppression reasons"
    )


class HandoffSpec(StrictModel):
    """The sales task created when a contact becomes Engaged."""

    enabled: bool = Field(True, description="create the task")
    subject: str = Field("Engaged contact: follow up", description="the task's subject")
    priority: Literal["LOW", "MEDIUM", "HIGH"] = Field("HIGH", description="the task's priority")
    due_in_days: float = Field(
        1, ge=0, le=MAX_POLICY_DAYS, description="the task is due this long after"
    )


class Variant(StrictModel):
    name: str = Field(min_length=1, description="the value written to the CRM property")
    weight: float = Field(1, gt=0, description="relative share of contacts")


RESERVED_ASSIGNMENT_KEYS = frozenset({"holdout"})
"""Keys of `ContactState.experiments` that are not experiment names."""


class ExperimentSpec(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="its name")
    element: str = Field(min_length=1, description="what varies (subject, cta, format)")
    property: str = Field(min_length=1, description="CRM property the templates branch on")
    stage: Literal["main", "reactivation_1", "reactivation_2", "reactivation"] = Field(
        "main", description="the sends it applies to"
    )
    metric: Literal["open", "click", "reactivation"] = Field(
        "open", description="what decides the winner"
    )
    variants: list[Variant] = Field(min_length=2, description="the arms")
    default: str | None = Field(None, description="the baseline; promote writes the winner here")
    salt: str = Field("", description="change it to reshuffle assignments")
    significance: float = Field(
        0.05, gt=0, lt=0.5, description="a winner needs a two-sided p-value below this"
    )
    min_sample: int = Field(1000, ge=1, description="exposures every variant needs first")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_ASSIGNMENT_KEYS:
            raise ValueError(f"'{name}' is reserved for the holdout group; choose another name")
        return name

    @model_validator(mode="after")
    def _default_is_a_variant(self) -> ExperimentSpec:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        if self.default is not None and self.default not in names:
            raise ValueError(f"default '{self.default}' is not one of the variants {names}")
        return self


class HoldoutSpec(StrictModel):
    """Contacts held out of reactivation sends so the sends' lift over doing nothing shows."""

    share: float = Field(0.10, ge=0, lt=1, description="share of contacts held out")
    property: str | None = Field(None, description="CRM property that records the group")
    salt: str = Field("holdout", description="change it to reshuffle the groups")
    significance: float = Field(0.05, gt=0, lt=0.5)
    min_sample: int = Field(200, ge=1, description="dormant contacts each group needs first")


class SegmentSpec(StrictModel):
    """Policy overrides for contacts whose properties match `where` (markets, industries)."""

    name: str = Field(min_length=1, description="its name in reports and the ledger")
    where: dict[str, str | list[str]] = Field(
        min_length=1, description="CRM property -> value (or values) a contact must have"
    )
    policy: dict[str, Any] = Field(
        default_factory=dict, description="policy keys (see Policy) that differ for the segment"
    )


class FrequencyCap(StrictModel):
    """At most `max_sends` sends in any `window_days`; a due step waits for room."""

    max_sends: int = Field(ge=1, description="sends allowed in the window")
    window_days: float = Field(gt=0, le=MAX_POLICY_DAYS, description="the window's length")


class EligibilitySpec(StrictModel):
    """Who may be sent to at all, and how often."""

    consent_property: str | None = Field(None, description="CRM property holding consent")
    consent_means: Literal["opt_out", "opt_in"] = Field(
        "opt_out", description="opt_out: a true value forbids email; opt_in: only true allows it"
    )
    frequency_cap: FrequencyCap | None = None
    priority: int = Field(0, description="when a contact matches two programs, the higher wins")
    audience: dict[str, str | list[str]] = Field(
        default_factory=dict, description="contact properties a contact needs to be in scope"
    )
    competing: list[str] = Field(
        default_factory=list,
        description="mapping files (relative to this one) of the same vendor's other programs "
        "that may take the same contacts: a contact both may email belongs to the higher "
        "`priority` (equal: the program name first in alphabetical order), and the other "
        "withholds its reactivation steps (ledger reason `other_program:NAME`)",
    )


class Mapping(StrictModel):
    program: str = Field(
        min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="the program's name"
    )
    vendor: str = Field(
        min_length=1, pattern=r"^[a-z][a-z0-9_]*$", description="`hubspot` or `salesforce`"
    )
    object: Literal["contacts", "Contact", "Lead"] = Field(
        description="the CRM object: `contacts` (HubSpot), `Contact` or `Lead` (Salesforce)"
    )
    fields: dict[str, FieldSpec] = Field(
        description="every canonical field (" + ", ".join(CANONICAL_FIELDS) + ") -> its property"
    )
    signals: list[Signal] = Field(
        default_factory=list, description="CRM property changes that are engagement events"
    )
    lists: list[ListSpec] = Field(default_factory=list, description="dynamic lists to keep")
    policy: Policy = Field(default_factory=Policy, description="the program's numbers")
    handoff: HandoffSpec = Field(default_factory=HandoffSpec, description="the sales task")
    experiments: list[ExperimentSpec] = Field(default_factory=list, description="A/B tests")
    holdout: HoldoutSpec | None = Field(None, description="a group without reactivation sends")
    segments: list[SegmentSpec] = Field(
        default_factory=list, description="policy overrides by contact property"
    )
    eligibility: EligibilitySpec = Field(
        default_factory=EligibilitySpec, description="consent and frequency caps"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="vendor-specific settings, validated by the connector"
    )

    @field_validator("fields")
    @classmethod
    def _every_canonical_field(cls, fields: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        unknown = sorted(set(fields) - set(CANONICAL_FIELDS))
        if unknown:
            raise ValueError(f"unknown canonical field(s) {unknown}; expected {CANONICAL_FIELDS}")
        missing = [name for name in CANONICAL_FIELDS if name not in fields]
        if missing:
            raise ValueError(f"missing canonical field(s) {missing}")
        return fields

    @model_validator(mode="after")
    def _one_property_per_field(self) -> Mapping:
        owner: dict[str, str] = {}
        for name, spec in self.fields.items():
            if spec.property in owner:
                raise ValueError(
                    f"fields.{name}.property: '{spec.property}' is already the property of "
                    f"fields.{owner[spec.property]}; each canonical field needs its own property"
                )
            owner[spec.property] = name
        return self

    @model_validator(mode="after")
    def _signals_name_known_events(self) -> Mapping:
        for i, signal in enumerate(self.signals):
            if not self.policy.knows_event(signal.event):
                raise ValueError(
                    f"signals[{i}].event: unknown event type '{signal.event}'; expected a "
                    "canonical event or an engagement type the policy gives points"
                )
        return self

    @model_validator(mode="after")
    def _program_rules(self) -> Mapping:
        names = [e.name for e in self.experiments]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"experiments[{i}].name: '{name}' is declared twice")
        segments = [s.name for s in self.segments]
        for i, name in enumerate(segments):
            if name in segments[:i]:
                raise ValueError(f"segments[{i}].name: '{name}' is declared twice")
        for i, seg in enumerate(self.segments):  # each override must make a valid policy
            segment_policy(self.policy, seg.policy, f"segments[{i}].policy")
        return self

    def property_of(self, canonical: str) -> str:
        return self.fields[canonical].property


class MappingError(Exception):
    """A mapping file that cannot run. `problems` holds one line per problem."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


Loc = tuple[str | int, ...]

MAX_SHOWN_INPUT = 80
"""Characters of an offending value an error repeats: enough to recognise it, never the file."""


def _key_path(loc: Loc) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif str(item).startswith("function-"):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, MAX_SHOWN_INPUT, MAX_SHOWN_INPUT
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 4


def _shown(value: object) -> str:
    # reprlib stops early: a full repr() of a value built from nested aliases is gigabytes.
    text = _REPR.repr(value)
    return text if len(text) <= MAX_SHOWN_INPUT else text[: MAX_SHOWN_INPUT - 3] + "..."


MAX_PROBLEM_CHARS = 500
"""A problem line's length at most, whatever a validator quotes (a pattern, a list of names)."""

MAX_YAML_NODES = 100_000
"""Nodes a mapping may hold once every alias is expanded. A real mapping has a few hundred;
nine nested aliases of nine items each (a few hundred bytes) expand to hundreds of millions,
which validation would walk."""


class AliasBombError(yaml.YAMLError):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = None


def expanded_size(root: yaml.Node | None, limit: int = MAX_YAML_NODES) -> int:
    """How many nodes `root` stands for with every alias expanded, counted without expanding
    (an alias is the node it names: count each distinct node once and multiply). Raises
    `AliasBombError` past `limit` or on an alias inside itself (a structure with no end)."""
    if root is None:
        return 0
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > limit:
                raise AliasBombError(
                    f"aliases expand to more than {limit:,} nodes; a mapping needs a few "
                    "hundred (use fewer or smaller aliases)"
                )
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise AliasBombError("an alias refers to a node that contains it (no end)")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _model_at(model: Any, loc: Loc) -> type[BaseModel] | None:
    """The schema model that holds the keys at `loc` (None where the schema is open)."""
    current: Any = model
    for part in loc:
        current = _narrow(current, part)
        if current is None:
            return None
    current = _narrow(current, None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _narrow(annotation: Any, part: str | int | None) -> Any:
    """One step down a schema annotation: a model's field, a list's item or a dict's value."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(annotation) if a is not type(None)]
        for arm in arms:
            found = _narrow(arm, part)
            if found is not None:
                return found
        return None
    if part is None:
        return annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        info = annotation.model_fields.get(part) if isinstance(part, str) else None
        return info.annotation if info is not None else None
    if origin is list and isinstance(part, int):
        return typing.get_args(annotation)[0]
    if origin is dict and isinstance(part, str):
        return typing.get_args(annotation)[1]
    return None


def _yaml_positions(root: yaml.Node) -> dict[Loc, tuple[int, int]]:
    """Line and column (1-based) of every key and item, by key path. An aliased node is walked
    once, so an alias bomb costs its size in nodes, not its expansion."""
    positions: dict[Loc, tuple[int, int]] = {(): (1, 1)}
    walked: set[int] = set()
    stack: list[tuple[Loc, yaml.Node]] = [((), root)]
    while stack:
        loc, node = stack.pop()
        if id(node) in walked:
            continue
        walked.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    child = (*loc, key.value)
                    mark = key.start_mark
                    positions.setdefault(child, (mark.line + 1, mark.column + 1))
                    stack.append((child, value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                child = (*loc, i)
                positions.setdefault(child, (item.start_mark.line + 1, item.start_mark.column + 1))
                stack.append((child, item))
    return positions


@dataclass
class MappingFile:
    """A mapping file read and parsed, not yet validated: it can say where each key stands."""

    path: str
    raw: bytes
    data: dict[str, Any]
    positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def where(self, loc: Loc) -> str:
        """`file:line:column: key.path` for the nearest key of `loc` found in the file."""
        clean = tuple(p for p in loc if not str(p).startswith("function-"))
        for end in range(len(clean), -1, -1):
            if clean[:end] in self.positions:
                line, column = self.positions[clean[:end]]
                return f"{self.path}:{line}:{column}: {_key_path(clean)}"
        return f"{self.path}: {_key_path(clean)}"

    def problems(
        self, error: ValidationError, model: type[BaseModel], prefix: Loc = ()
    ) -> list[str]:
        """One line per error: where, what was expected, and a suggestion for a near-miss key."""
        problems = []
        for item in error.errors(include_url=False):
            loc = prefix + tuple(item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = "unknown key (not part of the mapping schema)"
                holder = _model_at(model, tuple(item["loc"])[:-1])
                if holder is not None and isinstance(loc[-1], str):
                    near = difflib.get_close_matches(loc[-1], list(holder.model_fields), n=1)
                    if near:
                        message += f"; did you mean '{near[0]}'?"
            elif item["type"] == "missing":
                message = "required key is missing"
            elif "input" in item and item["type"] != "value_error":
                message = f"{message}, got {_shown(item['input'])}"
            # Cross-field validators name their own sub-path ("signals[0].event: ...").
            match = re.match(r"^([\w.\[\]]+): (.*)$", message)
            if match and (not loc or "[" in match.group(1) or "." in match.group(1)):
                own = tuple(
                    int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", match.group(1))
                )
                problem = f"{self.where(prefix + own)}: {match.group(2)}"
            else:
                problem = f"{self.where(loc)}: {message}"
            clipped = problem[: MAX_PROBLEM_CHARS - 3] + "..."
            problems.append(problem if len(problem) <= MAX_PROBLEM_CHARS else clipped)
        return problems

    def validate(self, competing: bool = True) -> Mapping:
        data = self.data
        version = policy_version(self.raw)
        policy = data.get("policy")
        if isinstance(policy, dict):
            data = {**data, "policy": {**policy, "version": version}}
        elif policy is None:
            data = {**data, "policy": {"version": version}}
        try:
            mapping = Mapping.model_validate(data)
        except ValidationError as exc:
            raise MappingError(self.path, self.problems(exc, Mapping)) from None
        compile_program(mapping)
        if competing and mapping.eligibility.competing:
            self._attach_competing(mapping)
        return mapping

    def _attach_competing(self, mapping: Mapping) -> None:
        """Read the programs named in `eligibility.competing` (their own `competing` is not
        followed) and give their eligibility to this program's governance."""
        from crm_elasticity.core.eligibility import Rival

        rivals: list[Rival] = []
        problems: list[str] = []
        base = Path(self.path).parent
        for i, name in enumerate(mapping.eligibility.competing):
            where = self.where(("eligibility", "competing", i))
            try:
                other = read_mapping_file(base / name).validate(competing=False)
            except MappingError as exc:
                problems.append(
                    f"{where}: the competing program's file has problems: "
                    + "; ".join(exc.problems[:3])
                )
                continue
            if other.vendor != mapping.vendor:
                problems.append(
                    f"{where}: '{name}' is a {other.vendor} program; only programs "
                    f"of the same vendor ({mapping.vendor}) share contacts"
                )
            elif other.program == mapping.program:
                problems.append(
                    f"{where}: '{name}' is this program ({mapping.program}); "
                    "competing programs need names of their own"
                )
            else:
                rivals.append(Rival(other.program, other.eligibility))
        if problems:
            raise MappingError(self.path, problems)
        mapping.policy.program.governance.compete(rivals)  # type: ignore[union-attr]


def format_validation_error(path: str, error: ValidationError, prefix: Loc = ()) -> list[str]:
    """Problems of a model validated outside a file (no line numbers to give)."""
    return MappingFile(path, b"", {}).problems(error, BaseModel, prefix)


def read_mapping_file(path: str | Path) -> MappingFile:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MappingError(str(path), [f"{path}: cannot read the file: {exc.strerror}"]) from None
    return parse_mapping_file(raw, str(path))


def parse_mapping_file(raw: bytes, path: str) -> MappingFile:
    loader = yaml.SafeLoader(raw)
    try:
        node = loader.get_single_node()
        expanded_size(node)  # before any Python object is built from it
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise MappingError(path, [f"{path}: {where}not valid YAML: {problem}"]) from None
    finally:
        loader.dispose()
    if node is None or not isinstance(data, dict):
        raise MappingError(
            path, [f"{path}: (top level): expected a mapping of keys, got {_shown(data)}"]
        )
    return MappingFile(path, raw, data, _yaml_positions(node))


def load_mapping(path: str | Path) -> Mapping:
    """Read, validate and version a mapping file, or raise `MappingError` listing every problem."""
    return read_mapping_file(path).validate()


def parse_mapping(raw: bytes, path: str) -> Mapping:
    return parse_mapping_file(raw, path).validate()


def policy_version(raw: bytes) -> str:
    """A short content hash: the same file gives the same version on every machine."""
    return hashlib.sha256(raw).hexdigest()[:12]
