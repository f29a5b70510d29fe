"""The data dir: where the embedded stores live, and what each store file is called.

One place for the default (`.elasticity`, or `ELASTICITY_DATA_DIR`), the file names and the
lookup `explain`, `report` and `audit` use to find the stores a data dir holds. The sandbox's
temporary data dir and `compare`'s stores are data dirs like any other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from pathlib import Path

ENV = "ELASTICITY_DATA_DIR"
DEFAULT = ".elasticity"

STORES = {"main": "elasticity.sqlite3", "replay": "replay.sqlite3", "simulate": "simulate.sqlite3"}
"""The named stores: `sync`/`serve` write `main`, `replay` and `simulate` their own."""

COMPARE_SIDES = ("base", "candidate")


@dataclass(frozen=True)
class DataDir:
    root: Path

    @classmethod
    def resolve(
        cls, given: str | Path | None = None, env: MappingABC[str, str] | None = None
    ) -> DataDir:
        """The dir given, else `ELASTICITY_DATA_DIR`, else `.elasticity`."""
        if given is not None:
            return cls(Path(given))
        return cls(Path((os.environ if env is None else env).get(ENV) or DEFAULT))

    @classmethod
    def temporary(cls, prefix: str = "elasticity-") -> DataDir:
        """A fresh, empty dir; whoever asked for it removes it."""
        import tempfile

        return cls(Path(tempfile.mkdtemp(prefix=prefix)))

    @property
    def main(self) -> Path:
        return self.root / STORES["main"]

    @property
    def replay(self) -> Path:
        return self.root / STORES["replay"]

    @property
    def simulate(self) -> Path:
        return self.root / STORES["simulate"]

    def compare(self, side: str) -> Path:
        """One side of `compare`: `compare-base.sqlite3` or `compare-candidate.sqlite3`."""
        if side not in COMPARE_SIDES:
            raise ValueError(f"unknown compare side {side!r}; expected one of {COMPARE_SIDES}")
        return self.root / f"compare-{side}.sqlite3"

    def existing_stores(self, name: str | None = None) -> list[tuple[str, Path]]:
        """Stores that exist here: all the named ones, the named one, or a path given outright."""
        if name is None:
            candidates = list(STORES.items())
        elif name in STORES:
            candidates = [(name, STORES[name])]
        else:
            path = Path(name)
            return [(path.name, path)] if path.is_file() else []
        return [(n, self.root / f) for n, f in candidates if (self.root / f).is_file()]
