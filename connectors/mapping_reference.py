"""The mapping-file reference, generated from the schema the loader validates against, so the
documentation cannot drift from what `validate` accepts. `docs/mapping-reference.md` is this
module's output (a test compares them); regenerate it with

    python -m crm_elasticity.connectors.mapping_reference > docs/mapping-reference.md
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from crm_elasticity.connectors.registry import connector_class, known_vendors
from crm_elasticity.core.mapping import Mapping

_CONSTRAINTS = (
    ("gt", ">"),
    ("ge", "≥"),
    ("lt", "<"),
    ("le", "≤"),
    ("min_length", "at least"),
    ("max_length", "at most"),
)

_INTRO = """# Mapping file reference

One YAML file per deployed program. `elasticity validate MAPPING` checks it against this schema
(and the vendor's own `options:` schema) and lists every problem with its line and column.
Unknown keys are refused, so a misspelt key cannot be silently ignored.

This page is generated from the schema
(`python -m crm_elasticity.connectors.mapping_reference`); a test keeps it in step with the code.
"""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(annotation) if a is not type(None)]
        shown = " or ".join(_type(a) for a in arms)
        return shown + (" (optional)" if len(arms) < len(typing.get_args(annotation)) else "")
    if origin is list:
        return f"list of {_type(typing.get_args(annotation)[0])}"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"map of {_type(key)} to {_type(value)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    if isinstance(annotation, type) and hasattr(annotation, "__members__"):  # an Enum
        return " \\| ".join(f"`{m.value}`" for m in annotation)  # type: ignore[attr-defined]
    return {str: "text", int: "integer", float: "number", bool: "true/false"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "**required**"
    if isinstance(value, BaseModel):
        return "(see its table)"
    if value in ({}, []):
        return "empty"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{getattr(value, 'value', value)}`"


def _meaning(info: FieldInfo) -> str:
    parts = [info.description or ""]
    limits = []
    for item in info.metadata:
        for attr, word in _CONSTRAINTS:
            value = getattr(item, attr, None)
            if value is not None:
                limits.append(f"{word} {value}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            limits.append(f"matches `{pattern}`")
    if limits:
        parts.append("(" + ", ".join(limits) + ")")
    return " ".join(p for p in parts if p).replace("|", "\\|").replace("\n", " ")


def _section(model: type[BaseModel], title: str, done: set[type]) -> list[str]:
    if model in done:
        return []
    done.add(model)
    doc = " ".join((model.__doc__ or "").split())
    lines = [f"## {title}", "", f'<a id="{model.__name__.lower()}"></a>', ""]
    if doc and not doc.startswith(("Usage docs", "!!!")):
        lines += [doc, ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    nested: list[type[BaseModel]] = []
    for name, info in model.model_fields.items():
        if name == "version" and model.__name__ == "Policy":
            continue  # set by the loader from the file's content, not by the user
        lines.append(
            f"| `{name}` | {_type(info.annotation)} | {_default(info)} | {_meaning(info)} |"
        )
        nested += _models_in(info.annotation)
    lines.append("")
    for sub in nested:
        lines += _section(sub, sub.__name__, done)
    return lines


def render() -> str:
    lines = [_INTRO]
    done: set[type] = set()
    lines += _section(Mapping, "Mapping (the top level)", done)
    for vendor in known_vendors():
        model = connector_class(vendor).options_model
        if model is not None:
            lines += _section(model, f"`options:` for vendor `{vendor}`", done)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
