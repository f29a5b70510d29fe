"""Runners for local mode: a mapping's connector on the embedded store in the data dir."""

from __future__ import annotations

from pathlib import Path

from crm_elasticity.connectors.registry import load_connector
from crm_elasticity.connectors.runner import Runner
from crm_elasticity.core.mapping import Mapping, load_mapping
from crm_elasticity.core.sqlite_store import SQLiteStore


def build_runner(mapping: Mapping, data_dir: Path) -> Runner:
    return Runner(load_connector(mapping), SQLiteStore.in_data_dir(data_dir))


def runners_for(mapping_paths: list[str], data_dir: str) -> list[Runner]:
    """What `serve`'s worker process builds for itself (it shares files, not connections)."""
    return [build_runner(load_mapping(path), Path(data_dir)) for path in mapping_paths]
