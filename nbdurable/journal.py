"""Attempts in flight, in a small file per process beside the log.

An attempt's "started" event must survive the death of its kernel, but writing it to DuckDB
costs a commit (1-3 ms) on every cell. Instead, the event is appended to this process's journal
(``<log>.journal/<host>-<pid>-<start>.jsonl``) with a plain ``write``: it survives the process
being killed (the operating system keeps the data), at the cost of about 20 microseconds. When
the attempt finishes, its "started" and "finished" events go to the log in one statement and
the journal is emptied.

A journal whose process is gone holds attempts that never finished: whoever next refreshes its
view of the log moves them into the log (as attempts still ``running``) and deletes the file.
Journals of live processes are read, never changed, so others see their attempts running.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
from contextlib import suppress
from datetime import datetime
from pathlib import Path

HOST = socket.gethostname().replace("-", "_") or "localhost"
_RECOVER = ("INSERT INTO events SELECT ?, ?, ?, ?, ?, ?, NULL WHERE NOT EXISTS (SELECT 1 FROM"
            " events WHERE run = ? AND step = ? AND attempt = ? AND kind = ?)")


def _start_token(pid: int) -> str:
    """When the process started (Linux), so that a reused pid is not taken for the old one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return "0"


def _alive(pid: int, token: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return token == "0" or _start_token(pid) in (token, "0")


class Journal:
    """This process's journal for one log."""

    def __init__(self, log_path: Path):
        self.dir = Path(f"{log_path}.journal")
        self.pid = os.getpid()
        self.path = self.dir / f"{HOST}-{self.pid}-{_start_token(self.pid)}.jsonl"
        self._fd: int | None = None
        self._pending = 0
        atexit.register(self.close)

    def started(self, params: list) -> None:
        """Record the parameters of an attempt_started event (run, step, attempt, kind, ts,
        body, data)."""
        if self._fd is None or self.pid != os.getpid():
            self.dir.mkdir(parents=True, exist_ok=True)
            self.pid = os.getpid()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                               0o644)
        run, step, attempt, kind, ts, body, _ = params
        line = json.dumps([run, step, attempt, kind, ts.isoformat(), body]) + "\n"
        os.write(self._fd, line.encode())
        self._pending += 1

    def finished(self) -> None:
        """The attempt's events are in the log: forget it."""
        self._pending = max(0, self._pending - 1)
        if self._pending == 0 and self._fd is not None:
            with suppress(OSError):
                os.ftruncate(self._fd, 0)

    def close(self) -> None:
        """At exit: an empty journal is removed (a non-empty one waits for recovery)."""
        if self._fd is None or self.pid != os.getpid():
            return
        with suppress(OSError):
            if os.fstat(self._fd).st_size == 0:
                self.path.unlink()
            os.close(self._fd)
        self._fd = None


def _entries(path: Path) -> list[list]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        with suppress(ValueError):
            entries.append(json.loads(line))
    return entries


def _owner(path: Path) -> tuple[str, int, str] | None:
    try:
        host, pid, token = path.stem.rsplit("-", 2)
        return host, int(pid), token
    except ValueError:
        return None


def _journals(log_path: Path):
    """(path, owner, alive) of each journal beside the log; alive is None for another host."""
    directory = Path(f"{log_path}.journal")
    if not directory.is_dir():
        return
    for path in directory.glob("*.jsonl"):
        owner = _owner(path)
        if owner is not None:
            alive = _alive(owner[1], owner[2]) if owner[0] == HOST else None
            yield path, owner, alive


def _dead(log_path: Path) -> list[Path]:
    return [path for path, _, alive in _journals(log_path) if alive is False]


def has_dead(log_path: Path) -> bool:
    """Are there attempts of dead processes waiting to be moved into the log?"""
    for path in _dead(log_path):
        with suppress(OSError):
            if path.stat().st_size:
                return True
    return False


def recover(con, log_path: Path) -> bool:
    """Move the unfinished attempts of dead processes into the log (hold the lease).
    True if anything was written."""
    wrote = False
    for path in _dead(log_path):
        for run, step, attempt, kind, ts, body in _entries(path):
            con.execute(_RECOVER, [run, step, attempt, kind, datetime.fromisoformat(ts), body,
                                   run, step, attempt, kind])
            wrote = True
        with suppress(OSError):
            path.unlink()
    return wrote


def live(log_path: Path, run: str | None = None, *, include_self: bool = False) -> list[list]:
    """attempt_started events of live processes' attempts in flight (for ``run``); this
    process's own only with ``include_self``."""
    found = []
    for path, (host, pid, _), alive in _journals(log_path):
        mine = host == HOST and pid == os.getpid()
        if alive is False or (mine and not include_self):
            continue
        found += [e for e in _entries(path) if run is None or e[0] == run]
    return found
