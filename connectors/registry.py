"""Find the connector for a mapping's vendor: `connectors/<vendor>/` exposes `CONNECTOR`."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping as MappingABC

from connectors.base import Connector, ConnectorError
from core.mapping import Mapping


def connector_class(vendor: str) -> type[Connector]:
    try:
        module = importlib.import_module(f"connectors.{vendor}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(f"connectors.{vendor}"):
            raise ConnectorError(f"no connector for vendor '{vendor}'") from None
        raise
    return module.CONNECTOR


def load_connector(mapping: Mapping, env: MappingABC[str, str] | None = None) -> Connector:
    return connector_class(mapping.vendor).from_env(mapping, os.environ if env is None else env)
