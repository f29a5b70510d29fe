"""Contacts: batch read, batch write-back, and the paged scans the scheduled sync uses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from crm_elasticity.connectors.base import CrmRecord, WriteRequest, WriteResult
from crm_elasticity.connectors.hubspot.batches import BATCH_SIZE, BatchWriter, Input, chunks
from crm_elasticity.connectors.hubspot.client import HubSpotClient, Response
from crm_elasticity.connectors.hubspot.search import Group, Scanner, pages
from crm_elasticity.connectors.hubspot.values import (
    encode,
    encode_raw,
    read_properties,
    record_from_properties,
)
from crm_elasticity.core.mapping import Mapping

READ_SCOPE = "crm.objects.contacts.read"
WRITE_SCOPE = "crm.objects.contacts.write"
LIST_PAGE = 100


class Contacts:
    def __init__(self, client: HubSpotClient, mapping: Mapping, page_size: int = 200) -> None:
        self.client = client
        self.mapping = mapping
        self.page_size = page_size
        self.properties = read_properties(mapping)
        self.writer = BatchWriter(client)
        self.scanner = Scanner(
            client, "contacts.search", self.properties, "contact search", READ_SCOPE
        )

    def _record(self, item: dict[str, Any]) -> CrmRecord:
        return record_from_properties(self.mapping, str(item["id"]), item.get("properties") or {})

    # ---- read ------------------------------------------------------------------------------

    def read(self, contact_ids: Sequence[str]) -> dict[str, CrmRecord]:
        found: dict[str, CrmRecord] = {}
        for chunk in chunks(list(dict.fromkeys(contact_ids)), BATCH_SIZE):
            body = {
                "inputs": [{"id": cid} for cid in chunk],
                "properties": self.properties,
                "propertiesWithHistory": [],
            }
            response = self.client.call(
                "contacts.batch",
                "read",
                body,
                archived=False,
                what=f"batch read of {len(chunk)} contacts",
                scope=READ_SCOPE,
            )
            # A 207 names ids HubSpot no longer has (deleted or merged): they are just absent.
            for item in (response.data or {}).get("results") or []:
                record = self._record(item)
                found[record.contact_id] = record
        return found

    # ---- write -----------------------------------------------------------------------------

    def write(self, requests: Sequence[WriteRequest]) -> WriteResult:
        inputs = [self._input(r) for r in requests]
        inputs = [i for i in inputs if i["properties"]]
        result = WriteResult()
        batches = chunks(inputs, BATCH_SIZE)
        if not batches:
            return result
        workers = min(self.client.settings.write_concurrency, len(batches))
        if workers == 1:
            outcomes = [self._write_batch(b) for b in batches]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="hubspot-write") as pool:
                outcomes = list(pool.map(self._write_batch, batches))
        for written, failed, deferred in outcomes:
            result.written += written
            result.failed.update(failed)
            result.deferred.update(deferred)
        return result

    def _input(self, request: WriteRequest) -> Input:
        properties = {}
        for name, value in request.fields.items():
            spec = self.mapping.fields.get(name)
            if spec is not None and not spec.read_only:
                properties[spec.property] = encode(spec, value)
        for prop, value in request.raw_properties.items():
            properties[prop] = encode_raw(value)
        cid = request.contact_id
        return {"id": cid, "properties": properties, "objectWriteTraceId": cid}

    def _write_batch(self, batch: list[Input]) -> tuple[list[str], dict[str, str], dict[str, str]]:
        return self.writer.write(batch, self._send_update, "contact batch update")

    def _send_update(self, inputs: list[Input]) -> Response:
        return self.client.call(
            "contacts.batch",
            "update",
            {"inputs": inputs},
            what=f"batch update of {len(inputs)} contacts",
            scope=WRITE_SCOPE,
        )

    # ---- scans -----------------------------------------------------------------------------

    def search(self, groups: list[Group], after: str | None) -> Iterator[list[CrmRecord]]:
        return pages(self.scanner.scan(groups, after), self.page_size, self._record)

    def list_all(self, after: str | None) -> Iterator[list[CrmRecord]]:
        """Every contact through the list endpoint (no 10,000 cap, no search budget)."""
        return pages(self._listed(after), self.page_size, self._record)

    def _listed(self, after: str | None) -> Iterator[dict[str, Any]]:
        floor = int(after) if after else None
        cursor = after
        while True:
            response = self.client.call(
                "contacts.basic",
                "get_page",
                limit=LIST_PAGE,
                after=cursor,
                properties=self.properties,
                archived=False,
                what="contact list page",
                scope=READ_SCOPE,
            )
            data = response.data or {}
            for item in data.get("results") or []:
                # HubSpot's `after` is an opaque cursor; resuming from a contact id must not
                # repeat that contact whichever way HubSpot reads it.
                if floor is None or int(item["id"]) > floor:
                    yield item
            cursor = ((data.get("paging") or {}).get("next") or {}).get("after")
            if not cursor:
                return
