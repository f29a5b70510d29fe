"""Sales hand-off tasks: exactly one HubSpot task per `HandoffTask.key`.

Each task carries a hash of its key in a task property provisioned for this purpose. Before
creating, we search for the keys; creates are never retried blindly (a create that timed out
may have happened), the runner keeps them owed and the next flush looks them up again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from crm_elasticity.connectors.base import HandoffTask, WriteResult
from crm_elasticity.connectors.hubspot.batches import BATCH_SIZE, BatchWriter, Input, chunks
from crm_elasticity.connectors.hubspot.client import HubSpotClient, Response
from crm_elasticity.connectors.hubspot.config import HubSpotOptions
from crm_elasticity.connectors.hubspot.search import Scanner, flt
from crm_elasticity.connectors.hubspot.values import iso_ms

TASKS_SCOPE = "crm.objects.contacts.write"


def key_hash(key: str) -> str:
    # Lowercase hex: HubSpot's IN filter only matches lowercase string values.
    return hashlib.sha256(key.encode()).hexdigest()[:40]


class Tasks:
    def __init__(self, client: HubSpotClient, options: HubSpotOptions) -> None:
        self.client = client
        self.options = options
        self.key_property = options.handoff_key_property
        self.writer = BatchWriter(client, retry_in_place=False)
        self.scanner = Scanner(
            client, "tasks.search", [self.key_property], "task search", TASKS_SCOPE
        )

    def create(self, tasks: Sequence[HandoffTask]) -> WriteResult:
        by_hash = {key_hash(t.key): t for t in tasks}
        existing = self._existing(list(by_hash))
        result = WriteResult(written=[by_hash[h].key for h in existing])
        missing = [self._input(h, t) for h, t in by_hash.items() if h not in existing]
        for batch in chunks(missing, BATCH_SIZE):
            written, failed, deferred = self.writer.write(
                batch, self._send_create, "task batch create"
            )
            result.written += [by_hash[h].key for h in written]
            result.failed.update({by_hash[h].key: message for h, message in failed.items()})
            result.deferred.update({by_hash[h].key: message for h, message in deferred.items()})
        return result

    def _existing(self, hashes: list[str]) -> set[str]:
        found: set[str] = set()
        for chunk in chunks(hashes, BATCH_SIZE):
            group = [flt(self.key_property, "IN", values=chunk)]
            for item in self.scanner.scan([group], None):
                value = (item.get("properties") or {}).get(self.key_property)
                if value:
                    found.add(value)
        return found

    def _input(self, hashed: str, task: HandoffTask) -> Input:
        properties = {
            "hs_task_subject": task.subject,
            "hs_task_body": task.body,
            "hs_task_priority": task.priority,
            "hs_task_status": "NOT_STARTED",
            "hs_task_type": "TODO",
            "hs_timestamp": iso_ms(task.due_at),
            self.key_property: hashed,
        }
        if task.owner_id:
            properties["hubspot_owner_id"] = task.owner_id
        association = {
            "to": {"id": task.contact_id},
            "types": [
                {
                    "associationCategory": "HUBSPOT_DEFINED",
                    "associationTypeId": self.options.task_contact_association_type_id,
                }
            ],
        }
        return {
            "properties": properties,
            "associations": [association],
            "objectWriteTraceId": hashed,
        }

    def _send_create(self, inputs: list[Input]) -> Response:
        return self.client.call(
            "tasks.batch",
            "create",
            {"inputs": inputs},
            idempotent=False,
            what=f"batch create of {len(inputs)} tasks",
            scope=TASKS_SCOPE,
        )
