"""Each process's recent events, in a file beside the log, until they are in the log.

A DuckDB statement costs 1 ms warm and 2-6 ms in a busy kernel, too much to pay on every cell.
So the events of an attempt go first to this process's journal
(``<log>.journal/<host>-<pid>-<start>.jsonl``):

- ``attempt_started`` with a plain ``write`` (~20 us): it survives the process being killed;
- ``attempt_finished`` (variables and outputs included) with ``write`` + ``fdatasync``
  (~0.3 ms): from then on the checkpoint is durable, even across a power cut.

A background thread then inserts the events into the log, those of a burst of cells (Run All)
in one statement, and empties the journal once everything in it is in the log. Until then, readers see the journal's events as
if they were in the log (:func:`live_rows`); the DuckDB insert changes nothing they can see, so
it does not bump the write generation.

A journal whose process is gone is moved into the log (idempotently: rows already there are
skipped) by whoever next rebuilds its view of the log, and deleted. Process identity includes
the start time, so a reused pid is not taken for a dead process.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import queue
import socket
import threading
import time
from contextlib import suppress
from datetime import datetime
from pathlib import Path

HOST = socket.gethostname().replace("-", "_") or "localhost"
#: An event row as in the ``events`` table: run, step, attempt, kind, ts, body, data.
Row = list
_RECOVER = ("INSERT INTO events SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM"
            " events WHERE run = ? AND step IS NOT DISTINCT FROM ? AND attempt IS NOT DISTINCT"
            " FROM ? AND kind = ?)")
_DRAIN_TIMEOUT = 10.0
_BATCH_WINDOW = 0.05  # seconds the writer waits for more attempts to insert together


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


def _encode(row: Row) -> bytes:
    run, step, attempt, kind, ts, body, data = row
    blob = base64.b64encode(data).decode() if data is not None else None
    return (json.dumps([run, step, attempt, kind, ts.isoformat(), body, blob]) + "\n").encode()


def _decode(line: str) -> Row:
    run, step, attempt, kind, ts, body, blob = json.loads(line)
    data = base64.b64decode(blob) if blob is not None else None
    return [run, step, attempt, kind, datetime.fromisoformat(ts), body, data]


class Journal:
    """This process's journal for one log, and the thread that moves it into the log."""

    def __init__(self, log):
        self.log = log
        self.dir = Path(f"{log.path}.journal")
        self.pid = os.getpid()
        self.path = self.dir / f"{HOST}-{self.pid}-{_start_token(self.pid)}.jsonl"
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._written = 0  # bytes appended
        self._applied = 0  # bytes whose rows are in the log
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        atexit.register(self.close)

    def append(self, rows: list[Row], *, sync: bool = False) -> int:
        """Add event rows; with ``sync`` they are on disk when this returns. Returns the
        journal's size after them."""
        data = b"".join(_encode(r) for r in rows)
        with self._lock:
            if self._fd is None or self.pid != os.getpid():
                self._open()
            os.write(self._fd, data)
            if sync:
                os.fdatasync(self._fd)
            self._written += len(data)
            return self._written

    def submit(self, rows: list[Row], upto: int) -> None:
        """Insert ``rows`` into the log in the background; the journal up to byte ``upto`` is
        then in the log."""
        self._queue.put((rows, upto))
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="nbdurable-journal",
                                            daemon=True)
            self._thread.start()

    def rows(self) -> list[Row]:
        """The rows in this journal not yet known to be in the log."""
        return rows_of(self.path)

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                           0o644)
        self._written = self._applied = os.fstat(self._fd).st_size

    def _run(self) -> None:
        from .records import combine_rows

        while True:
            item = self._queue.get()
            if item is None:
                return
            time.sleep(_BATCH_WINDOW)  # a burst of cells (Run All) becomes one statement
            batch = [item]
            stop = False
            while not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                self.log.execute(*combine_rows([r for rows, _ in batch for r in rows]),
                                 announce=False)
            except Exception:  # the log is busy or gone: the rows stay in the journal, and
                pass           # the next process to rebuild its view moves them in
            else:
                self._mark_applied(max(upto for _, upto in batch))
            if stop:
                return

    def _mark_applied(self, upto: int) -> None:
        with self._lock:
            self._applied = max(self._applied, upto)
            if self._fd is not None and self._applied == self._written:
                with suppress(OSError):
                    os.ftruncate(self._fd, 0)
                self._written = self._applied = 0

    def close(self) -> None:
        """At exit: move what is left into the log (bounded wait); remove an empty journal."""
        if self.pid != os.getpid():
            return
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(_DRAIN_TIMEOUT)
        with self._lock:
            if self._fd is None:
                return
            with suppress(OSError):
                if os.fstat(self._fd).st_size == 0:
                    self.path.unlink()
                os.close(self._fd)
            self._fd = None


def rows_of(path: Path) -> list[Row]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        with suppress(ValueError, TypeError):
            rows.append(_decode(line))
    return rows


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
    """Are there events of dead processes waiting to be moved into the log?"""
    for path in _dead(log_path):
        with suppress(OSError):
            if path.stat().st_size:
                return True
    return False


def recover(con, log_path: Path) -> bool:
    """Move the events of dead processes' journals into the log (hold the lease).
    True if anything was written."""
    wrote = False
    for path in _dead(log_path):
        for row in rows_of(path):
            run, step, attempt, kind = row[:4]
            con.execute(_RECOVER, [*row, run, step, attempt, kind])
            wrote = True
        with suppress(OSError):
            path.unlink()
    return wrote


def live_rows(log_path: Path, run: str | None = None) -> list[Row]:
    """Events in the journals of live processes (this one included), for ``run``."""
    found = []
    for path, _owner_, alive in _journals(log_path):
        if alive is not False:
            found += [r for r in rows_of(path) if run is None or r[0] == run]
    return found
