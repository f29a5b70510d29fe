"""CRM search that never loses a record to HubSpot's limits.

HubSpot answers at most 200 records a page, never past the 10,000th result of one query, and
takes at most 5 filter groups x 6 filters (18 in all). So every scan sorts by `hs_object_id`
ascending and asks each page afresh with `hs_object_id > last id seen` in every group (a query
never reaches 10,000 results deep), splits filter groups over several queries when they do not
fit one, and merges the queries' streams by id.
"""

from __future__ import annotations

import heapq
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from crm_elasticity.connectors.hubspot.client import SEARCH, HubSpotClient

PAGE_SIZE = 200
MAX_GROUPS, MAX_FILTERS_PER_GROUP, MAX_FILTERS = 5, 6, 18
ID = "hs_object_id"

Filter = dict[str, Any]
Group = list[Filter]


def flt(prop: str, operator: str, value: Any = None, values: list[str] | None = None) -> Filter:
    out: Filter = {"propertyName": prop, "operator": operator}
    if values is not None:
        out["values"] = values
    elif value is not None:
        out["value"] = str(value)
    return out


def plan_queries(groups: list[Group]) -> list[list[Group]]:
    """Pack filter groups (ORed) into as few queries as HubSpot's limits allow. Each group will
    also carry the id cursor filter, so it counts one more."""
    unique: list[Group] = []
    for group in groups:
        if group not in unique:
            unique.append(group)
    queries: list[list[Group]] = []
    current: list[Group] = []
    used = 0
    for group in unique:
        size = len(group) + 1
        if size > MAX_FILTERS_PER_GROUP:
            raise ValueError(f"a filter group needs {size} filters; HubSpot allows 6")
        if current and (len(current) == MAX_GROUPS or used + size > MAX_FILTERS):
            queries.append(current)
            current, used = [], 0
        current.append(group)
        used += size
    if current or not queries:
        queries.append(current)
    return queries


class Scanner:
    """Streams search results for a set of filter groups, ascending by id, resumable."""

    def __init__(
        self, client: HubSpotClient, api: str, properties: list[str], what: str, scope: str
    ) -> None:
        self.client = client
        self.api = api
        self.properties = properties
        self.what = what
        self.scope = scope

    def scan(self, groups: list[Group], after: str | None) -> Iterator[dict[str, Any]]:
        streams = [self._query(query, after) for query in plan_queries(groups)]
        if len(streams) == 1:
            yield from streams[0]
            return
        last = None
        for record in heapq.merge(*streams, key=lambda r: int(r["id"])):
            if record["id"] != last:  # a record matching groups of two queries comes twice
                last = record["id"]
                yield record

    def _query(self, groups: list[Group], after: str | None) -> Iterator[dict[str, Any]]:
        # Every page is a fresh query above the last id seen, never an `after` offset: offsets
        # shift when our own writes move records out of the result set (a due contact we just
        # made Dormant), which would silently skip records, and they stop at 10,000.
        cursor = after
        while True:
            page = self._page(groups, cursor)
            results = page.get("results") or []
            yield from results
            if len(results) < PAGE_SIZE or not (page.get("paging") or {}).get("next"):
                return
            cursor = results[-1]["id"]

    def _page(self, groups: list[Group], cursor: str | None) -> dict:
        id_filter = [flt(ID, "GT", cursor)] if cursor else []
        filter_groups = [{"filters": group + id_filter} for group in groups]
        if not groups and id_filter:
            filter_groups = [{"filters": id_filter}]
        body: dict[str, Any] = {
            "filterGroups": filter_groups,
            "sorts": [{"propertyName": ID, "direction": "ASCENDING"}],
            "properties": self.properties,
            "limit": PAGE_SIZE,
        }
        response = self.client.call(
            self.api, "do_search", body, what=self.what, scope=self.scope, budget=SEARCH
        )
        return response.data or {}


def pages(
    records: Iterator[dict[str, Any]], size: int, convert: Callable[[dict], Any]
) -> Iterator[list[Any]]:
    page: list[Any] = []
    for record in records:
        page.append(convert(record))
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


_DONE = object()


def prefetch(source: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run `source` ahead in a thread by up to `depth` items: the next search pages are
    fetched (at the search budget) while the caller decides and writes the current one."""
    if depth <= 0:
        yield from source
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stopping = threading.Event()

    def put(item: Any) -> bool:
        while not stopping.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            put((_DONE, exc))

    worker = threading.Thread(target=produce, name="hubspot-search-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = buffer.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stopping.set()
        worker.join(timeout=5)
