"""Replay workers that fail part-way, for `tests/test_coded_replay.py`. A worker is started
by name in a fresh interpreter (`spawn`), so the stand-ins for `core.coded.parallel._work`
live in a module it can import."""

from __future__ import annotations

import os
import signal
from typing import Any

from crm_elasticity.core.coded import parallel


class _FailingFeed:
    """A worker's feed that fails when its second batch arrives."""

    def __init__(self, feed: Any, how: str) -> None:
        self.feed = feed
        self.how = how
        self.batches = 0

    def recv(self) -> Any:
        item = self.feed.recv()
        self.batches += 1
        if self.batches == 2:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
            raise RuntimeError("the disk went away")
        return item

    def close(self) -> None:
        self.feed.close()


def work_raising_on_shard_1(policy: Any, path: Any, shard: int, feed: Any, answer: Any) -> None:
    parallel._work(policy, path, shard, _FailingFeed(feed, "raise") if shard == 1 else feed, answer)


def work_killed_on_shard_1(policy: Any, path: Any, shard: int, feed: Any, answer: Any) -> None:
    parallel._work(policy, path, shard, _FailingFeed(feed, "kill") if shard == 1 else feed, answer)
