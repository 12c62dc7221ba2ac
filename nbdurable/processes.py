"""Which process is which: identity that survives PID reuse, liveness, program names.

A process is named by its pid, its host and its start time (Linux: field 22 of
``/proc/PID/stat``, in clock ticks since boot), so a pid the OS gave to a new process after the
old one died is not taken for the old one: a kernel restarted in a container often gets its
old pid back. Elsewhere the start time is unknown and only the pid is compared.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from dataclasses import asdict, dataclass
from typing import Any

HOST = socket.gethostname() or "localhost"
#: The host name as a token of file names and lock files (no "-", no white space).
HOST_TOKEN = re.sub(r"[\s\-/]", "_", HOST)


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None where unknown."""
    return _stat(pid)[1]


def _stat(pid: int) -> tuple[bytes, int | None]:
    """(state letter, start time) of process ``pid`` from ``/proc``; (b"", None) where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return b"", None


def me() -> ProcessId:
    """This process (computed once per process: a forked child gets its own)."""
    pid = os.getpid()
    found = _me.get(pid)
    if found is None:
        _me.clear()
        found = _me[pid] = ProcessId.current()
    return found


_me: dict[int, ProcessId] = {}  # pid -> identity: a forked child finds none of its parent's


def program() -> str:
    """This process's program, without its arguments (they may hold secrets):
    ``nbdurable``, ``papermill``, ``python -m ipykernel_launcher``."""
    argv = getattr(sys, "orig_argv", None) or sys.argv or [""]
    python = os.path.basename(argv[0]) or "python"
    if len(argv) > 2 and argv[1] == "-m":
        return f"{python} -m {argv[2]}"[:80]
    if len(argv) > 1 and argv[1] == "-c":
        return f"{python} -c"
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else python
    return name.replace("\n", " ")[:80]


@dataclass(frozen=True)
class ProcessId:
    """One process, for as long as it lives."""

    pid: int
    host: str = HOST
    started: int | None = None
    program: str = ""

    @classmethod
    def current(cls) -> ProcessId:
        pid = os.getpid()
        return cls(pid, HOST, start_time(pid), program())

    @classmethod
    def from_dict(cls, data: object) -> ProcessId | None:
        """From :meth:`to_dict`'s output as read back from a file; None if it is not one."""
        if not isinstance(data, dict):
            return None
        pid, started = data.get("pid"), data.get("started")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None
        return cls(pid, str(data.get("host") or ""),
                   started if isinstance(started, int) else None,
                   str(data.get("program") or "")[:80])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def local(self) -> bool:
        return self.host == HOST

    def alive(self) -> bool:
        """Whether this process still runs (a process of another host: assumed so)."""
        if not self.local:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        state, now = _stat(self.pid)
        if state in (b"Z", b"X"):  # killed, not reaped yet by its parent: it runs no more
            return False
        return self.started is None or now is None or now == self.started

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}" + (f" ({self.program})"
                                                       if self.program else "")


def kill(pid: int, pgid: int | None = None, *, spare_group: int | None = None) -> None:
    """SIGKILL process group ``pgid`` (the process and what it started), or only ``pid`` when
    the group is unknown or is ``spare_group`` (a group that holds other processes too)."""
    try:
        if pgid and pgid > 1 and pgid != spare_group:
            os.killpg(pgid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
