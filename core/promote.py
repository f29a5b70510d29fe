"""`experiments promote`: write an experiment's significant winner into the mapping file as
its default, touching nothing else in the file, and record the change in the store's change log.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crm_elasticity.core.cursors import Cursors
from crm_elasticity.core.experiment_results import experiment_results
from crm_elasticity.core.mapping import Mapping, parse_mapping, policy_version
from crm_elasticity.core.sqlite_store import SQLiteStore
from crm_elasticity.core.store import Batch, Store


class PromotionError(Exception):
    """No variant can be promoted (yet); the message says why."""


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
        lines[number] = (
            match.group(1) + _scalar(variant) + (match.group(3) or "") + (match.group(4) or "")
        )
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

    yaml = _yaml()
    original = mapping_path.read_text()
    data = yaml.load(original)
    names = [item.get("name") for item in data.get("experiments") or []]
    if name not in names:
        raise PromotionError(f"{mapping_path}: no experiment named {name!r}")
    index = names.index(name)
    text = _edit_in_place(original, data, index, variant)
    if (
        text is None
        or parse_mapping(text.encode(), str(mapping_path)).experiments[index].default != variant
    ):
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
    spec = next((e for e in mapping.experiments if e.name == name), None)
    if spec is None:
        known = ", ".join(e.name for e in mapping.experiments) or "none"
        raise PromotionError(f"{mapping_path}: no experiment named {name!r} (known: {known})")
    opened = not isinstance(store_path, Store)
    store: Store = store_path if isinstance(store_path, Store) else SQLiteStore(store_path)
    try:
        result = experiment_results(store, mapping, spec)
        if result.winner is None:
            raise PromotionError(f"experiment {name!r}: no winner to promote: {result.verdict}")
        if spec.default == result.winner:
            return f"{name}: {result.winner!r} is already the default in {mapping_path}"
        text = write_default(Path(mapping_path), name, result.winner)
        at = datetime.now(UTC).isoformat()
        entry = {
            "at": at,
            "kind": "promotion",
            "experiment": name,
            "default": result.winner,
            "previous_default": spec.default,
            "verdict": result.verdict,
            "from_version": mapping.policy.version,
            "to_version": policy_version(text.encode()),
            "mapping": str(mapping_path),
        }
        key = Cursors.changelog(at, name)
        store.commit(Batch(cursors={key: json.dumps(entry)}))
    finally:
        if opened:
            store.close()
    return (
        f"{name}: promoted {result.winner!r} as the default in {mapping_path} "
        f"({result.verdict}); policy version {entry['from_version']} -> {entry['to_version']}"
    )
