"""Find the connector for a mapping's vendor: `connectors/<vendor>/` exposes `CONNECTOR`."""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
from collections.abc import Mapping as MappingABC
from pathlib import Path

from pydantic import ValidationError

from crm_elasticity import connectors
from crm_elasticity.connectors.base import Connector, ConnectorError
from crm_elasticity.core.mapping import Mapping, MappingError, MappingFile, read_mapping_file

_REGISTERED: dict[str, type[Connector]] = {}
"""Connectors that live outside `connectors/` (test fakes, private vendors)."""


def register_connector(cls: type[Connector]) -> type[Connector]:
    """Make `cls` the connector for `cls.vendor`; usable as a class decorator."""
    _REGISTERED[cls.vendor] = cls
    return cls


def connector_class(vendor: str) -> type[Connector]:
    if vendor in _REGISTERED:
        return _REGISTERED[vendor]
    try:
        module = importlib.import_module(f"crm_elasticity.connectors.{vendor}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(f"crm_elasticity.connectors.{vendor}"):
            raise ConnectorError(f"no connector for vendor '{vendor}'") from None
        raise
    return module.CONNECTOR


def load_connector(mapping: Mapping, env: MappingABC[str, str] | None = None) -> Connector:
    return connector_class(mapping.vendor).from_env(mapping, os.environ if env is None else env)


def one_program_per_vendor(mappings: list[Mapping]) -> None:
    """Refuse two programs of one vendor in one deployment (`serve`, a Lambda stage): they
    would share one store's contact rows and one webhook path. Each program runs with its own
    store and names the others under `eligibility.competing`, which decides who takes a
    contact both may email."""
    seen: dict[str, str] = {}
    for mapping in mappings:
        first = seen.setdefault(mapping.vendor, mapping.program)
        if first != mapping.program:
            raise ConnectorError(
                f"programs '{first}' and '{mapping.program}' are both {mapping.vendor} "
                "programs: run each with its own data dir (or stage), and list the other's "
                "mapping file under eligibility.competing so a contact both may email "
                "belongs to one"
            )


def known_vendors() -> list[str]:
    """Vendors with a connector: a `connectors/<vendor>/` package, or one registered."""
    packaged = [m.name for m in pkgutil.iter_modules(connectors.__path__) if m.ispkg]
    return sorted({*_REGISTERED, *(v for v in packaged if v != "aws")})


def vendor_problems(source: MappingFile) -> list[str]:
    """What the vendor's connector says of the file: an unknown vendor (with the nearest known
    name), or its `options:` checked against the vendor's own schema."""
    vendor = source.data.get("vendor")
    if not isinstance(vendor, str):
        return []  # the core schema already reports a missing or non-text vendor
    vendors = known_vendors()
    if vendor not in vendors:
        near = difflib.get_close_matches(vendor, vendors, n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        return [
            f"{source.where(('vendor',))}: unknown vendor '{vendor}'; {hint}"
            f"known: {', '.join(vendors)}"
        ]
    model = connector_class(vendor).options_model
    options = source.data.get("options", {})
    if model is None or not isinstance(options, dict):
        return []
    try:
        model.model_validate(options)
    except ValidationError as exc:
        return source.problems(exc, model, ("options",))
    return []


def check_mapping(path: str | Path) -> Mapping:
    """A mapping file validated by the core schema and by its vendor's connector, every problem
    of both reported in one `MappingError`."""
    source = read_mapping_file(path)
    problems = vendor_problems(source)
    try:
        mapping = source.validate()
    except MappingError as exc:
        raise MappingError(source.path, exc.problems + problems) from None
    if problems:
        raise MappingError(source.path, problems)
    return mapping
