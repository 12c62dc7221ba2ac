"""Each process's recent events, in a file beside the log, until they are in the log.

A DuckDB statement costs 1 ms warm and 2-6 ms in a busy kernel, too much to pay on every cell.
So the events of an attempt go first to this process's journal
(``<log>.journal/<host>-<pid>-<start>.jsonl``):

- ``attempt_started`` with a plain ``write`` (~20 us): it survives the process being killed;
- ``attempt_finished`` (variables and outputs included) with ``write`` + ``fdatasync``
  (~0.3 ms): from then on the checkpoint is durable, even across a power cut. A write that
  cannot be completed (a full disk) is undone and raises :class:`CheckpointError`: the
  journal never holds a partial line of its own making.

A background thread then inserts the events into the log, those of a burst of cells (Run All)
in one statement. A batch that does not reach the log (the log is held by another program, the
disk is full) stays queued, in order, and is retried with backoff until it lands; the journal
is emptied only when everything written to it is in the log. Until then, readers see the
journal's events as if they were in the log (:func:`live_rows`), so they never disagree with
this process's caches; the DuckDB insert changes nothing they can see, so it does not bump the
write generation.

Each line is a JSON array and, after a tab, the xxh3-64 of that JSON: a line that does not
decode, parse, validate or match its checksum is damaged. Damaged lines are never copied into
the log and never stop the other lines: they are set aside in ``<log>.journal/quarantine/``
with a one-line :class:`JournalDamageWarning`. A last line without its newline is a write the
process died in the middle of (never acknowledged): it is dropped.

A journal whose process is gone is moved into the log (idempotently: rows already there are
skipped) by whoever next rebuilds its view of the log, and deleted. Process identity includes
the start time, so a reused pid is not taken for a dead process.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import json
import os
import queue
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import xxhash

from nbdurable import processes
from nbdurable.errors import CheckpointError, JournalDamageWarning, first_line
from nbdurable.processes import ProcessId
from nbdurable.store import files, schema
from nbdurable.store.sidecars import Sidecars

if TYPE_CHECKING:  # pragma: no cover
    from duckdb import DuckDBPyConnection as Connection


class _Log(Protocol):
    """What a journal needs of its log (a :class:`~nbdurable.store.logdb.LogDB`)."""

    path: Path

    def transaction(self, *, announce: bool = True,
                    urgent: bool = False) -> AbstractContextManager[Connection]: ...

    def execute(self, sql: str, params: list[Any] | None = None, *,
                announce: bool = True) -> list[tuple[Any, ...]]: ...

#: An event row as in the ``events`` table: run, step, attempt, kind, ts, body, data.
Row = list[Any]
_STAGE = "nbdurable_recovered"
_INSERT_MISSING = (f"INSERT INTO events SELECT r.* EXCLUDE (seq) FROM temp.{_STAGE} r WHERE NOT"
                   " EXISTS (SELECT 1 FROM events e WHERE e.run = r.run AND e.step IS NOT DISTINCT"
                   " FROM r.step AND e.attempt IS NOT DISTINCT FROM r.attempt AND e.kind = r.kind"
                   " AND e.ts = r.ts) ORDER BY r.seq")
_DRAIN_TIMEOUT = 10.0
_BATCH_WINDOW = 0.05  # seconds the writer waits for more attempts to insert together
_BUSY_INTERVAL = 0.5  # while events keep coming, at most one insert per this many seconds
_RETRY_FIRST, _RETRY_CAP = 0.2, 10.0  # backoff of a batch that did not reach the log
_KINDS = frozenset(schema.Kind)


# -- lines --------------------------------------------------------------------------------------

def encode(row: Row) -> bytes:
    run, step, attempt, kind, ts, body, data = row
    blob = base64.b64encode(data).decode() if data is not None else None
    payload = json.dumps([run, step, attempt, kind, ts.isoformat(), body, blob]).encode()
    return payload + b"\t" + xxhash.xxh3_64_hexdigest(payload).encode() + b"\n"


class Damaged(ValueError):
    """A journal line that must not be used."""


def decode(line: bytes) -> Row:
    """A row from one line (without its newline); :class:`Damaged` if it is not one."""
    payload, tab, check = line.rpartition(b"\t")
    if not tab:
        payload = line  # a line of nbdurable 0.1, written without a checksum
    elif xxhash.xxh3_64_hexdigest(payload).encode() != check:
        raise Damaged("its checksum does not match")
    try:
        items = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Damaged(f"it is not valid JSON ({exc.__class__.__name__})") from None
    return _validated(items)


def _validated(items: object) -> Row:
    if not isinstance(items, list) or len(items) != 7:
        raise Damaged("it is not an event row")
    run, step, attempt, kind, ts, body, blob = items
    if not (isinstance(run, str) and run and isinstance(step, (str, type(None)))
            and (attempt is None or type(attempt) is int) and kind in _KINDS
            and isinstance(ts, str) and isinstance(body, str)
            and isinstance(blob, (str, type(None)))):
        raise Damaged("a field has the wrong type")
    try:
        when = datetime.fromisoformat(ts)
        json.loads(body)
        body.encode("utf-8")  # lone surrogates would break DuckDB's JSON functions
        data = base64.b64decode(blob, validate=True) if blob is not None else None
    except (ValueError, UnicodeEncodeError, binascii.Error):
        raise Damaged("a field does not decode") from None
    return [run, step, attempt, kind, when, body, data]


@dataclass
class Contents:
    """What a journal file holds: its good rows, and its damaged lines (raw bytes)."""

    rows: list[Row] = field(default_factory=list)
    damaged: list[tuple[bytes, str]] = field(default_factory=list)


def read(path: Path) -> Contents:
    """Every row of the journal at ``path``; damaged lines apart; never raises."""
    found = Contents()
    try:
        raw = path.read_bytes()
    except OSError:
        return found
    lines = raw.split(b"\n")
    for line in lines[:-1]:  # the last piece: empty, or a write cut short by a crash
        if not line:
            continue
        try:
            found.rows.append(decode(line))
        except Damaged as exc:
            found.damaged.append((line, str(exc)))
    return found


# -- this process's journal -----------------------------------------------------------------------

class Journal:
    """This process's journal for one log, and the thread that moves it into the log."""

    def __init__(self, log: _Log):
        self.log = log
        self.dir = Sidecars.of(log.path).journal
        me = processes.me()
        self.pid = me.pid
        self.path = self.dir / f"{processes.HOST_TOKEN}-{me.pid}-{me.started or 0}.jsonl"
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._written = 0  # bytes appended
        self._applied = 0  # bytes whose rows are in the log
        self._unsent: dict[tuple[Any, ...], Row] = {}  # rows appended but not submitted yet
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()  # close() was called: insert what is left now
        self._stalled: str | None = None  # why the last insert failed, until one succeeds
        self._told = False
        atexit.register(self.close)

    def append(self, rows: list[Row], *, sync: bool = False) -> int:
        """Add event rows; with ``sync`` they are on disk when this returns. Returns the
        journal's size after them. A write that fails is undone: :class:`CheckpointError`."""
        data = b"".join(encode(r) for r in rows)
        with self._lock:
            if self._fd is None or self.pid != os.getpid():
                self._open()
            fd = self._fd
            assert fd is not None
            try:
                files.write_all(fd, data)
                if sync:
                    os.fdatasync(fd)
            except OSError as exc:
                with suppress(OSError):
                    os.ftruncate(fd, self._written)  # no partial line stays behind
                raise CheckpointError(files.describe(exc, self.path)) from None
            self._written += len(data)
            self._unsent.update((_identity(r), r) for r in rows)
            return self._written

    def submit(self, rows: list[Row], upto: int) -> None:
        """Insert ``rows`` into the log in the background; the journal up to byte ``upto`` is
        then in the log (batches are applied in the order submitted)."""
        with self._lock:
            for row in rows:
                self._unsent.pop(_identity(row), None)
        self._queue.put((rows, upto))
        if self._thread is None or not self._thread.is_alive():
            self._closing.clear()
            self._thread = threading.Thread(target=self._run, name="nbdurable-journal",
                                            daemon=True)
            self._thread.start()

    def notice(self) -> str | None:
        """Once per stall: a line saying that checkpoints wait here, safe, and why."""
        reason, pending = self._stalled, self._queue.qsize()
        if reason is None or self._told:
            return None
        self._told = True
        return (f"checkpoints of this kernel are safe in its journal {self.path} but not yet in "
                f"the log: {reason}. They move in by themselves once it is free"
                + (f" ({pending} more queued)" if pending else ""))

    def rows(self) -> list[Row]:
        """The rows in this journal not yet known to be in the log."""
        return read(self.path).rows

    def _open(self) -> None:
        files.private_dir(self.dir)
        self.pid = os.getpid()
        self._fd = files.open_private(self.path, os.O_WRONLY | os.O_APPEND)
        self._written = self._applied = os.fstat(self._fd).st_size

    def _run(self) -> None:
        pending: list[tuple[list[Row], int]] = []
        retry, stop, last = 0.0, False, -_BUSY_INTERVAL
        while not stop:
            if not pending:
                item = self._queue.get()
                if item is None:
                    return
                pending.append(item)
                # a burst (Run All) becomes one statement; a stream (children finishing)
                # one statement per _BUSY_INTERVAL: each costs an attach, a checkpoint and
                # the GIL the kernel's other threads need
                self._closing.wait(max(_BATCH_WINDOW, last + _BUSY_INTERVAL - time.monotonic()))
            stop = self._take(pending, timeout=retry)
            if self._insert(pending, again=retry > 0):
                self._mark_applied(pending[-1][1])
                pending.clear()
                retry, self._stalled, self._told = 0.0, None, False
                last = time.monotonic()
            else:
                retry = min(_RETRY_CAP, retry * 2 or _RETRY_FIRST)

    def _take(self, pending: list[Any], timeout: float) -> bool:
        """Move queued batches into ``pending``, waiting up to ``timeout`` for the first;
        True when asked to stop."""
        try:
            while True:
                item = self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
                timeout = 0
                if item is None:
                    return True
                pending.append(item)
        except queue.Empty:
            return False

    def _insert(self, pending: list[Any], *, again: bool) -> bool:
        from nbdurable.store.records import insert_rows

        rows = [r for batch, _ in pending for r in batch]
        try:
            with self.log.transaction(announce=False) as con:
                if again:  # an earlier try may have committed before it failed: skip those
                    insert_missing(con, rows)
                else:
                    insert_rows(con, rows)
        except Exception as exc:  # the log is held, full or damaged: the rows stay here
            self._stalled = first_line(exc)
            return False
        return True

    def _mark_applied(self, upto: int) -> None:
        with self._lock:
            self._applied = max(self._applied, upto)
            if self._fd is not None and self._applied == self._written and not self._unsent:
                with suppress(OSError):
                    os.ftruncate(self._fd, 0)
                self._written = self._applied = 0

    def close(self) -> None:
        """At exit: move what is left into the log (bounded wait); remove an empty journal."""
        if self.pid != os.getpid():
            return
        if self._thread is not None and self._thread.is_alive():
            self._closing.set()
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


def _identity(row: Row) -> tuple[Any, ...]:
    return tuple(row[:5])  # run, step, attempt, kind, ts


# -- every journal beside a log -------------------------------------------------------------------

def _owner(path: Path) -> ProcessId | None:
    try:
        host, pid, started = path.stem.rsplit("-", 2)
        if host == processes.HOST_TOKEN:  # this host, whose name may hold a "-"
            host = processes.HOST
        return ProcessId(int(pid), host, int(started) or None)
    except ValueError:
        return None


def _journals(log_path: Path) -> Iterator[tuple[Path, bool | None]]:
    """(path, alive) of each journal beside the log; alive is None for another host."""
    directory = Sidecars.of(log_path).journal
    if not directory.is_dir():
        return
    for path in directory.glob("*.jsonl"):
        owner = _owner(path)
        if owner is not None:
            alive = owner.alive() if owner.local else None
            yield path, alive


@dataclass
class Look:
    """One look at the journals beside a log. Each owner's liveness is judged once: a process
    that dies during the look is seen alive (its rows pending) or dead (its journal to move into
    the log), never neither (judged twice, its rows could be in neither list)."""

    live: list[Row] = field(default_factory=list)  # rows of live processes' journals
    dead: list[Path] = field(default_factory=list)  # journals of dead processes

    def dead_rows(self) -> bool:
        """Whether a dead process's journal holds rows not moved into the log yet."""
        return any(_size(path) for path in self.dead)


def look(log_path: Path, run: str | None = None) -> Look:
    """The rows of live processes' journals (for ``run``) and the journals of dead ones."""
    seen = Look()
    for path, alive in _journals(log_path):
        if alive is False:
            seen.dead.append(path)
            continue
        contents = read(path)
        if contents.damaged:
            _warn_damaged(path, len(contents.damaged), None)
        seen.live += [r for r in contents.rows if run is None or r[0] == run]
    return seen


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def gather(con: Connection, log_path: Path, run: str | None = None) -> tuple[bool, list[Row]]:
    """Holding the lease: move dead processes' journals into the log; return whether that wrote
    anything, and the rows of live processes' journals for ``run``."""
    seen = look(log_path, run)
    return recover(con, seen.dead), seen.live


def recover(con: Connection, dead: list[Path]) -> bool:
    """Move the rows of dead processes' journals ``dead`` into the log (hold the lease); set
    their damaged lines aside. True if anything was written."""
    wrote = False
    for path in dead:
        contents = read(path)
        if contents.rows:
            insert_missing(con, contents.rows)
            wrote = True
        if contents.damaged:
            quarantine(path, contents.damaged)
        with suppress(OSError):
            path.unlink()
    return wrote


def insert_missing(con: Connection, rows: list[Row]) -> None:
    """Insert the rows the log does not hold yet (same run, step, attempt, kind and time), in
    order: staged in a temporary table, then one anti-join (one statement per row cost ~1 ms
    each: 0.5 s for a killed map's 500 children). Order matters: an attempt's start must
    precede its outcome, and a join does not keep it by itself."""
    from nbdurable.store.records import insert_rows

    unique = list({_identity(r): r for r in rows}.values())
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_STAGE} AS SELECT *, 0 AS seq FROM events LIMIT 0")
    insert_rows(con, unique, into=f"temp.{_STAGE}", seq=True)
    con.execute(_INSERT_MISSING)
    con.execute(f"DROP TABLE temp.{_STAGE}")


def live_rows(log_path: Path, run: str | None = None) -> list[Row]:
    """Events in the journals of live processes (this one included), for ``run``."""
    return look(log_path, run).live


_warned: set[tuple[str, int]] = set()


def quarantine(path: Path, damaged: list[tuple[bytes, str]], *,
               loss: str = "the attempts they recorded will execute again") -> Path:
    """Keep the damaged lines of ``path`` in the quarantine folder beside it; warn once,
    saying what is lost (``loss``)."""
    folder = path.parent / "quarantine"
    files.private_dir(folder)
    target = folder / f"{path.stem}-{int(time.time())}.bad"
    lines = b"".join(f"# {why}\n".encode() + line + b"\n" for line, why in damaged)
    with suppress(OSError):
        files.write_private(target, lines)
    _warn_damaged(path, len(damaged), target, loss)
    return target


def _warn_damaged(path: Path, count: int, target: Path | None,
                  loss: str = "the attempts they recorded will execute again") -> None:
    if (str(path), count) in _warned:
        return
    _warned.add((str(path), count))
    where = f"set aside in {target}" if target else "skipped"
    warnings.warn(f"{count} damaged line(s) in {path} were {where}, never copied into the "
                  f"log; {loss}",
                  JournalDamageWarning, stacklevel=3)
