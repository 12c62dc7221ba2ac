"""Crash points for durability tests: ``NBDURABLE_CRASH_AT=before-commit`` makes the process
SIGKILL itself at that point, so tests can kill a kernel at the worst moment exactly.

Unset (always, outside tests) this costs one set lookup.
"""

from __future__ import annotations

import os
import signal

_POINTS = frozenset(p for p in os.environ.get("NBDURABLE_CRASH_AT", "").split(",") if p)


def crashpoint(name: str) -> None:
    if name in _POINTS:
        os.kill(os.getpid(), signal.SIGKILL)
