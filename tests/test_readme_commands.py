"""The README's command table names every option of every command, read from the typer app
itself, so a new option without its line in the table fails here."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from crm_elasticity.connectors.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands(command, path: tuple[str, ...] = ()):
    """(command path, its long option names) for the app and every command under it."""
    yield (
        path,
        {
            o
            for p in command.params
            if p.param_type_name == "option"
            for o in p.opts
            if o.startswith("--")
        },
    )
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _commands(sub, (*path, name))


def _table_rows() -> list[str]:
    """The first cell of each row of the table under `## Command line`."""
    text = README.read_text()
    section = text[text.index("## Command line") :]
    section = section[: section.index("\n## ", 1)]
    return [m.group(1) for m in re.finditer(r"^\| `(elasticity[^`]*)` \|", section, re.M)]


def _rows_for(path: tuple[str, ...], rows: list[str]) -> list[str]:
    if not path:  # the app's own options: the row whose command is COMMAND
        return [r for r in rows if r.endswith(" COMMAND")]
    head = "elasticity " + " ".join(path)
    return [r for r in rows if r == head or r.startswith(head + " ")]


def missing_from(rows: list[str]) -> list[str]:
    """Commands without a row, and options their rows do not name."""
    missing = []
    for path, options in _commands(typer.main.get_command(app)):
        if path and getattr(_lookup(path), "commands", None):
            continue  # a group (`experiments`): its commands have their own rows
        cells = _rows_for(path, rows)
        if not cells:
            missing.append(f"no row for `elasticity {' '.join(path)}`")
            continue
        shown = set(re.findall(r"--[a-z][a-z0-9-]*", " ".join(cells)))
        missing += [f"`elasticity {' '.join(path)}`: {o}" for o in sorted(options - shown)]
    return missing


def test_every_command_and_option_is_in_the_readme_table() -> None:
    rows = _table_rows()
    assert rows, "no command table found under '## Command line'"
    missing = missing_from(rows)
    assert not missing, "missing from the README's command table:\n" + "\n".join(missing)


def _lookup(path: tuple[str, ...]):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def test_the_check_sees_a_missing_option_and_a_missing_command() -> None:
    rows = [r.replace(" [--now T]", "") for r in _table_rows()]
    assert missing_from(rows) == ["`elasticity sync`: --now"]
    rows = [r for r in _table_rows() if not r.startswith("elasticity experiments promote")]
    assert missing_from(rows) == ["no row for `elasticity experiments promote`"]
