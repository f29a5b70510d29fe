"""Find the connector for a mapping's vendor: `connectors/<vendor>/` exposes `CONNECTOR`."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping as MappingABC

from connectors.base import Connector, ConnectorError
from core.mapping import Mapping

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
        module = importlib.import_module(f"connectors.{vendor}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(f"connectors.{vendor}"):
            raise ConnectorError(f"no connector for vendor '{vendor}'") from None
        raise
    return module.CONNECTOR


def load_connector(mapping: Mapping, env: MappingABC[str, str] | None = None) -> Connector:
    return connector_class(mapping.vendor).from_env(mapping, os.environ if env is None else env)
