"""The files nbdurable keeps beside a log: every name in one place.

``<log>`` is the DuckDB file; beside it ``<log>.wal`` (DuckDB's), ``<log>.lock`` and ``<log>.wait``
(the lease), ``<log>.blobs/`` (large values), ``<log>.journal/`` (attempts in flight),
``<log>.index/`` (run-index snapshots), ``<log>.runs/`` (claims) and ``<log>.spool/`` (pushes
made without the lease).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = ("wal", "lock", "wait", "blobs", "journal", "index", "runs", "spool")


@dataclass(frozen=True)
class Sidecars:
    """The paths beside the log file ``log``."""

    log: Path

    @classmethod
    def of(cls, log: str | os.PathLike[str]) -> Sidecars:
        return cls(Path(log))

    def _beside(self, suffix: str) -> Path:
        return Path(f"{self.log}.{suffix}")

    @property
    def wal(self) -> Path:
        return self._beside("wal")

    @property
    def lock(self) -> Path:
        return self._beside("lock")

    @property
    def wait(self) -> Path:
        return self._beside("wait")

    @property
    def blobs(self) -> Path:
        return self._beside("blobs")

    @property
    def journal(self) -> Path:
        return self._beside("journal")

    @property
    def index(self) -> Path:
        return self._beside("index")

    @property
    def runs(self) -> Path:
        return self._beside("runs")

    @property
    def spool(self) -> Path:
        return self._beside("spool")

    def owns(self, path: Path) -> bool:
        """Whether ``path`` is the log or one of the files nbdurable keeps beside it."""
        return path.parent == self.log.parent and (
            path.name == self.log.name or path.name.startswith(f"{self.log.name}."))
