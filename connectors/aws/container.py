"""What one Lambda execution environment builds once and reuses: mappings, connectors (with
their secrets), the DynamoDB store, the work queue and a runner per vendor.

Everything is built on first use, so a webhook function never opens DynamoDB and the worker
never looks up secrets of a vendor it has no message for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping as MappingABC
from pathlib import Path

from connectors.aws.queue import WorkQueue
from connectors.aws.secrets import load_secrets
from connectors.base import Connector, ConnectorError
from connectors.registry import load_connector
from connectors.runner import Runner
from core.dynamodb_store import DynamoDBStore
from core.mapping import Mapping, load_mapping
from core.store import Store, StoreError


def mapping_paths(env: MappingABC[str, str]) -> list[Path]:
    """`ELASTICITY_MAPPINGS`: comma-separated mapping files, relative to the package root."""
    raw = env.get("ELASTICITY_MAPPINGS", "")
    paths = [p.strip() for p in raw.split(",") if p.strip()]
    if not paths:
        raise ConnectorError("ELASTICITY_MAPPINGS is not set: name the mapping file(s) to run")
    root = Path(env.get("LAMBDA_TASK_ROOT", "."))
    return [p if p.is_absolute() else root / p for p in map(Path, paths)]


class Container:
    def __init__(
        self,
        env: MappingABC[str, str] | None = None,
        store: Store | None = None,
        queue: WorkQueue | None = None,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        self.mappings: dict[str, Mapping] = {}
        for path in mapping_paths(self.env):
            mapping = load_mapping(path)
            self.mappings[mapping.vendor] = mapping
        self._secrets: dict[str, str] | None = None
        self._connectors: dict[str, Connector] = {}
        self._runners: dict[str, Runner] = {}
        self._store = store
        self._queue = queue
        self._dead_letters: WorkQueue | None = None

    @property
    def vendors(self) -> list[str]:
        return list(self.mappings)

    def connector(self, vendor: str) -> Connector:
        if vendor not in self._connectors:
            if vendor not in self.mappings:
                raise ConnectorError(f"no mapping for vendor '{vendor}' in ELASTICITY_MAPPINGS")
            if self._secrets is None:
                self._secrets = load_secrets(self.env)
            env = {**self.env, **self._secrets}
            self._connectors[vendor] = load_connector(self.mappings[vendor], env)
        return self._connectors[vendor]

    def built_connectors(self) -> list[Connector]:
        return list(self._connectors.values())

    def connector_for_path(self, path: str) -> Connector | None:
        path = path.rstrip("/")
        for vendor in self.vendors:
            connector = self.connector(vendor)
            if path in {p.rstrip("/") for p in connector.webhook_paths}:
                return connector
        return None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = DynamoDBStore.from_env(self.env)
        return self._store

    @property
    def queue(self) -> WorkQueue:
        if self._queue is None:
            self._queue = WorkQueue.from_env(self.env)
        return self._queue

    @property
    def dead_letters(self) -> WorkQueue:
        if self._dead_letters is None:
            name = self.env.get("DEAD_LETTER_QUEUE_NAME")
            if not name:
                raise StoreError("DEAD_LETTER_QUEUE_NAME is not set")
            self._dead_letters = WorkQueue(name)
        return self._dead_letters

    def runner(self, vendor: str) -> Runner:
        if vendor not in self._runners:
            self._runners[vendor] = Runner(self.connector(vendor), self.store)
        return self._runners[vendor]

    def forget_credentials(self) -> None:
        """After an auth failure: rebuild connectors with freshly read secrets (a rotated
        token) on the next call, instead of failing until the container is recycled."""
        self._secrets = None
        self._connectors.clear()
        self._runners.clear()
        load_secrets(self.env, force=True)
