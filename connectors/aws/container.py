"""What one Lambda execution environment builds once and reuses: mappings, connectors (with
their secrets), the DynamoDB store, the work queue and a runner per vendor.

Everything is built on first use, so a webhook function never opens DynamoDB and the worker
never looks up secrets of a vendor it has no message for.

Secrets are read again once `MAX_AGE_SECONDS` old, on whichever path asks next (webhook,
worker or sync); a changed value rebuilds the connectors and runners built from the old one.
While a `<NAME>_PREVIOUS` secret exists, a webhook the current secrets refuse (401) is verified
once more with the previous value in NAME's place: both are accepted during a rotation.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from collections.abc import Mapping as MappingABC
from pathlib import Path

from crm_elasticity.connectors.aws.queue import WorkQueue
from crm_elasticity.connectors.aws.secrets import MAX_AGE_SECONDS, load_secrets
from crm_elasticity.connectors.base import Connector, ConnectorError, WebhookRequest
from crm_elasticity.connectors.intake import HttpAnswer, handle_rotating, retiring_env
from crm_elasticity.connectors.registry import load_connector, one_program_per_vendor
from crm_elasticity.connectors.runner import Runner
from crm_elasticity.core.dynamodb_store import DynamoDBStore
from crm_elasticity.core.mapping import Mapping, load_mapping
from crm_elasticity.core.models import Event
from crm_elasticity.core.store import Store, StoreError


def mapping_paths(env: MappingABC[str, str]) -> list[Path]:
    """`ELASTICITY_MAPPINGS`: comma-separated mapping files, relative to the package root."""
    raw = env.get("ELASTICITY_MAPPINGS", "")
    paths = [p.strip() for p in raw.split(",") if p.strip()]
    if not paths:
        raise ConnectorError("ELASTICITY_MAPPINGS is not set: name the mapping file(s) to run")
    root = Path(env.get("LAMBDA_TASK_ROOT", "."))
    return [p if p.is_absolute() else root / p for p in map(Path, paths)]


log = logging.getLogger(__name__)


class Container:
    def __init__(
        self,
        env: MappingABC[str, str] | None = None,
        store: Store | None = None,
        queue: WorkQueue | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        loaded = [load_mapping(path) for path in mapping_paths(self.env)]
        one_program_per_vendor(loaded)
        self.mappings: dict[str, Mapping] = {m.vendor: m for m in loaded}
        self.clock = clock
        self._secrets: dict[str, str] | None = None
        self._secrets_read_at = 0.0
        self._connectors: dict[str, Connector] = {}
        self._previous: dict[str, Connector | None] = {}
        self._runners: dict[str, Runner] = {}
        self._store = store
        self._queue = queue
        self._dead_letters: WorkQueue | None = None

    @property
    def vendors(self) -> list[str]:
        return list(self.mappings)

    def _current_secrets(self) -> dict[str, str]:
        """The secrets, read again once `MAX_AGE_SECONDS` old; connectors and runners built
        from values that changed are dropped, to be rebuilt on their next use."""
        now = self.clock()
        if self._secrets is not None and now - self._secrets_read_at < MAX_AGE_SECONDS:
            return self._secrets
        # Our own clock decides the age: past it, SSM's answer, not a cached one.
        values = load_secrets(self.env, force=self._secrets is not None)
        if self._secrets is not None and values != self._secrets:
            changed = sorted(
                n for n in {*values, *self._secrets} if values.get(n) != self._secrets.get(n)
            )
            log.warning("secrets changed (%s): rebuilding the connectors", ", ".join(changed))
            self._drop_built()
        self._secrets, self._secrets_read_at = values, now
        return values

    def _drop_built(self) -> None:
        self._connectors.clear()
        self._previous.clear()
        self._runners.clear()

    def connector(self, vendor: str) -> Connector:
        secrets = self._current_secrets()
        if vendor not in self._connectors:
            if vendor not in self.mappings:
                raise ConnectorError(f"no mapping for vendor '{vendor}' in ELASTICITY_MAPPINGS")
            env = {**self.env, **secrets}
            self._connectors[vendor] = load_connector(self.mappings[vendor], env)
        return self._connectors[vendor]

    def previous_connector(self, vendor: str) -> Connector | None:
        """The vendor's connector with every `<NAME>_PREVIOUS` secret in NAME's place, or None
        when no secret is being rotated."""
        self.connector(vendor)  # reads the secrets again first if they are due
        if vendor not in self._previous:
            env = retiring_env({**self.env, **self._current_secrets()})
            self._previous[vendor] = (
                None if env is None else load_connector(self.mappings[vendor], env)
            )
        return self._previous[vendor]

    def answer_webhook(
        self,
        connector: Connector,
        request: WebhookRequest,
        record: Callable[[Sequence[Event]], int],
    ) -> HttpAnswer:
        """`handle_webhook`, and while a secret is being rotated, once more with the previous
        one if the current one refused the request's credentials."""
        return handle_rotating(
            connector, request, record, lambda: self.previous_connector(connector.vendor)
        )

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
        connector = self.connector(vendor)  # first: secrets due again may drop the runner
        if vendor not in self._runners:
            self._runners[vendor] = Runner(connector, self.store)
        return self._runners[vendor]

    def forget_credentials(self) -> None:
        """After an auth failure: rebuild connectors with freshly read secrets (a rotated
        token) on the next call, instead of failing until the container is recycled."""
        self._secrets_read_at = float("-inf")  # read again, past any cache, on the next call
        self._drop_built()
