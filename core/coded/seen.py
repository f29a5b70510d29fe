"""Which event ids a run has already seen, exactly, in a few bytes an id.

A set of a million id strings costs ~95 MB. This keeps a 64-bit hash and the line's byte
offset per id, in sorted numpy runs merged as they grow (a log-structured set). A hash that
matches is only a candidate: the earlier line is read again and its id compared, so a hash
collision can never drop an event.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class SeenIds:
    def __init__(self, id_at: Callable[[int], str], hash_of: Callable[[str], int] = hash) -> None:
        self._id_at = id_at
        """The event id on the line starting at this byte offset."""
        self._hash = hash_of
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def first_sightings(self, ids: list[str], offsets: list[int]) -> list[bool]:
        """For each id of a batch (in file order): True unless an earlier line (in this
        batch or before it) had the same id. The new ids are remembered."""
        n = len(ids)
        fresh = [True] * n
        if not n:
            return fresh
        hashes = np.fromiter(map(self._hash, ids), dtype=np.int64, count=n)
        order = np.argsort(hashes, kind="stable")  # file order within equal hashes
        ranked = hashes[order]
        same = np.flatnonzero(ranked[1:] == ranked[:-1])
        for k in same.tolist():
            # Positions k and k+1 share a hash: compare with every earlier one of the group.
            later = int(order[k + 1])
            j = k
            while j >= 0 and ranked[j] == ranked[k + 1]:
                if ids[int(order[j])] == ids[later]:
                    fresh[later] = False
                    break
                j -= 1
        for run_hashes, run_offsets in self._runs:
            # Searched in hash order: the binary searches then walk the run's memory
            # forward (a sixth of the time of searching in file order, measured).
            at = np.searchsorted(run_hashes, ranked)
            inside = at < run_hashes.size
            hit = np.flatnonzero(
                inside & (run_hashes[np.minimum(at, run_hashes.size - 1)] == ranked)
            )
            for k in hit.tolist():
                i = int(order[k])
                if fresh[i] and self._seen_in_run(run_hashes, run_offsets, int(at[k]), ids[i]):
                    fresh[i] = False
        keep = np.flatnonzero(np.array(fresh))
        self._add(hashes[keep], np.asarray(offsets, dtype=np.int64)[keep])
        return fresh

    def _seen_in_run(
        self, run_hashes: np.ndarray, run_offsets: np.ndarray, start: int, event_id: str
    ) -> bool:
        wanted = run_hashes[start]
        k = start
        while k < run_hashes.size and run_hashes[k] == wanted:
            if self._id_at(int(run_offsets[k])) == event_id:
                return True
            k += 1
        return False

    def _add(self, hashes: np.ndarray, offsets: np.ndarray) -> None:
        if not hashes.size:
            return
        order = np.argsort(hashes, kind="stable")
        self._runs.append((hashes[order], offsets[order]))
        runs = self._runs
        while len(runs) > 1 and runs[-1][0].size >= runs[-2][0].size:
            newer, older = runs.pop(), runs.pop()
            merged_hashes = np.concatenate([older[0], newer[0]])
            merged_offsets = np.concatenate([older[1], newer[1]])
            order = np.argsort(merged_hashes, kind="stable")
            runs.append((merged_hashes[order], merged_offsets[order]))
