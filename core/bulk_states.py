"""Contact states a bulk run (`SQLiteStore.bulk`) has committed but not yet written, with a
due-time index so the run's scheduled ticks find due contacts without scanning them all.

The states are the run's own: `get` hands out the held object, which the pipeline changes in
place and commits back. A copy per contact per batch cost more than the rules applied to it
(~2.5 us, and a 1M-event replay makes ~0.9M of them); the store makes a run whose batch failed
unusable instead, so a half-changed state is never written."""

from __future__ import annotations

from datetime import datetime
from heapq import heapify, heappop, heappush

from crm_elasticity.core.models import ContactState


class BulkStates:
    def __init__(self) -> None:
        self._held: dict[str, tuple[ContactState, datetime | None]] = {}
        # (due, contact id) for every due time ever indexed; an entry is live while it matches
        # the contact's current due. Popped once its time has come, into `_ready`.
        self._heap: list[tuple[datetime, str]] = []
        self._ready: set[str] = set()
        # Put since the last `due`: indexed then, once each, however many batches put them.
        self._dirty: set[str] = set()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, contact_id: str) -> bool:
        return contact_id in self._held

    def put(self, state: ContactState, due: datetime | None) -> None:
        """Hold `state` as committed, due at `due`."""
        self._held[state.contact_id] = (state, due)
        self._dirty.add(state.contact_id)

    def get(self, contact_id: str) -> ContactState | None:
        """The held state itself: changing it changes the run."""
        held = self._held.get(contact_id)
        return None if held is None else held[0]

    def due(self, now: datetime, after: str = "", limit: int = 5000) -> list[str]:
        """Ids (> `after`, ascending) of held contacts due at or before `now`."""
        self._index_dirty()
        heap, ready, held = self._heap, self._ready, self._held
        while heap and heap[0][0] <= now:
            at, cid = heappop(heap)
            if held[cid][1] == at:
                ready.add(cid)
        found = []
        for cid in list(ready):
            due_at = held[cid][1]
            if due_at is None or due_at > now:
                ready.discard(cid)  # it moved on; a later `now` finds it in the heap again
                if due_at is not None:
                    heappush(heap, (due_at, cid))
            elif cid > after:
                found.append(cid)
        found.sort()
        return found[:limit]

    def drain(self) -> list[tuple[ContactState, datetime | None]]:
        """Everything held, in contact id order, and forget it."""
        items = [self._held[cid] for cid in sorted(self._held)]
        self._held.clear()
        self._heap.clear()
        self._ready.clear()
        self._dirty.clear()
        return items

    def _index_dirty(self) -> None:
        heap, held = self._heap, self._held
        for cid in self._dirty:
            at = held[cid][1]
            if at is not None:
                heappush(heap, (at, cid))
        self._dirty.clear()
        if len(heap) > 4 * len(held) + 1024:
            self._compact()

    def _compact(self) -> None:
        ready = self._ready
        self._heap = [
            (at, cid) for cid, (_, at) in self._held.items() if at is not None and cid not in ready
        ]
        heapify(self._heap)
