"""One DuckDB log file shared safely by many processes.

DuckDB lets one process at a time open a database file, and a second opener fails at once
instead of waiting. nbdurable needs two kernels, the CLI and scripts to share one log, so every
process follows this protocol:

* **Lease.** A process may have the log file attached only while it holds an exclusive
  ``flock`` on the sidecar ``<log>.lock``. Each :class:`LogDB` keeps one long-lived in-memory
  DuckDB connection, ATTACHes the file as ``log`` (``USE log``) when it takes the lease and
  DETACHes it (which checkpoints) before giving the lease back. Waiting is a loop of
  ``LOCK_EX|LOCK_NB`` attempts with jittered backoff (0.5 ms growing to 10 ms) until
  ``lock_timeout``; then :class:`~nbdurable.errors.LogBusyError` names the holder, which writes
  ``"<pid> <host> <program>"`` into the lock file when it takes the lease. A crashed holder's
  flock and DuckDB lock vanish with it, so a lease is never stale. If the flock is free but
  DuckDB still refuses (a program opened the file outside this protocol), the attach is retried
  the same way and the error names the PID DuckDB reports.
* **Linger.** After a transaction the file stays attached for ``linger`` seconds, so a burst of
  transactions (a notebook's Run All) pays ATTACH/DETACH once; a background thread detaches when
  idle.
* **Waiter signal.** A process waiting for the lease holds ``LOCK_SH`` on a second sidecar,
  ``<log>.wait``. After each transaction, and every few milliseconds while lingering, the holder
  tries ``LOCK_EX|LOCK_NB`` on it (releasing it at once): if that fails, someone waits, so the
  holder detaches and unlocks instead of lingering. A process that wants the lease while others
  already wait first lets them go (up to 50 ms), so a holder in a loop cannot starve them. No one
  ever blocks on either sidecar, so there is no deadlock.
* **Write generation.** Bytes 256..275 of ``<log>.lock`` hold a counter that every writer
  bumps, under the lease, *before* it commits. State derived from the log at generation ``g``
  (the engine's index of a run) is still true while :meth:`LogDB.generation` returns ``g``:
  checking costs one ``pread``, no lock and no DuckDB.
  Writes no cache depends on (bookkeeping, ``@step`` calls, ``once`` keys) may skip the bump.
* **Deferred writes.** :meth:`LogDB.defer` queues best-effort bookkeeping rows (replays); they
  are written with the next transaction, just before the lease is given back, or by a
  background thread shortly after if the process is not using the log.
* **Opening.** A missing log is built under a temporary name, fsynced and published with
  ``os.link`` (atomic; if someone else published first, theirs is used). An existing file is
  sniffed, then ATTACHed ``READ_ONLY`` to check ``nbdurable_meta`` before it is ever attached
  read-write, so a file that is not an nbdurable log (or is from a newer nbdurable or DuckDB) is
  never modified.

Inside a process an ``RLock`` serializes use of a :class:`LogDB` (the linger thread runs
separately). DuckDB holds a POSIX lock on the file, and closing *any* descriptor of that file in
the same process drops it, so the file itself is only opened (to sniff its header) while it is
not attached. DuckDB also refuses a second attachment of one file in one process, so use
:func:`open_log` to share one :class:`LogDB` per log per process.

Fork safety: before a fork, idle leases are detached and unlocked; a :class:`LogDB` used in a
forked child starts over with its own connection and descriptors and never touches the parent's
(which it deliberately leaks). A child forked while its parent was inside a transaction cannot
attach the log (DuckDB's in-process registry still lists it) and gets a clear error.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import secrets
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from nbdurable import interrupts, processes
from nbdurable.errors import (
    LogBusyError,
    LogCorruptError,
    LogError,
    LogVersionError,
    NbdurableError,
    NotALogError,
    UsageError,
    first_line,
)
from nbdurable.store import files, schema, spool
from nbdurable.store.blobs import BlobStore
from nbdurable.store.sidecars import Sidecars

if TYPE_CHECKING:
    import duckdb

    #: A connection to the log, as the store's functions take it (the engine names it so).
    Connection: TypeAlias = duckdb.DuckDBPyConnection
else:
    class _LazyDuckDB:
        """``import duckdb`` costs ~0.1 s (and, in a kernel, its first connection imports
        ipywidgets): pay it only when the log is really opened, not at ``import nbdurable``."""

        def __getattr__(self, name: str):
            import duckdb as module

            globals()["duckdb"] = module
            return getattr(module, name)

    duckdb = _LazyDuckDB()


def preload() -> None:
    """Import DuckDB now and make one connection (~0.1 s), in a process that will open a log
    later and wants that first open fast (the worker's warm resume process). Tried in batch
    kernels too (in a thread while the first cells run): no gain on 2 cores, so not there."""
    _connect().close()

__all__ = ["LogDB", "open_log"]

ALIAS = "log"
_BACKOFF_START = 0.0005
_BACKOFF_GROWTH = 1.5
_BACKOFF_CAP = 0.010
_URGENT_CAP = 0.001  # an urgent taker polls at least every millisecond
#: The longest a holder keeps the lease past others waiting (LogDB.hold).
HOLD_CAP = 0.1
_WAITER_POLL = 0.005  # how often a lingering holder looks for waiters
_YIELD_GRACE = 0.05  # how long a newcomer lets earlier waiters go first
_YIELD_POLL = 0.001
_FORK_WAIT = 0.1  # how long a fork waits for the lease's lock to detach an idle lease
_DEFER_DELAY = 3.0  # seconds before deferred rows are written by a process not using the log
_GENERATION_AT = 256  # byte offset of the write generation in the .lock file
_GENERATION_LEN = 20
_FOREIGN_LOCK = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


class LogDB:
    """The log database at ``path``, shared with other processes through a lease.

    No file is touched until the first :meth:`transaction`, which creates or validates the log.
    ``lock_timeout`` bounds how long to wait for the lease (then :class:`LogBusyError`);
    ``linger`` is how long the file stays attached after a transaction (0: detach at once).
    Prefer :func:`open_log`, which shares one instance per log in a process.
    """

    path: Path
    blobs: BlobStore

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 30.0, linger: float = 0.05):
        if not lock_timeout >= 0 or not linger >= 0:
            raise UsageError("lock_timeout and linger must be >= 0 seconds, "
                             f"got {lock_timeout!r}, {linger!r}")
        self.path = _resolve(path)
        self.blobs = BlobStore(Sidecars.of(self.path).blobs)
        self.lock_timeout = float(lock_timeout)
        self.linger = float(linger)
        self._lease = _Lease(self.path, self.lock_timeout, self.linger)
        self._finalizer = weakref.finalize(self, _close_quietly, self._lease)

    def __repr__(self) -> str:
        return f"LogDB({str(self.path)!r})"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._lease.closed

    @contextmanager
    def lease(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Hold the lease without a transaction: statements run in autocommit mode.

        Use it to read (each query sees committed data), or to write with :meth:`execute`.
        """
        with self._locked() as lease:
            if lease.depth:
                yield lease.con
                return
            if not lease.attached:
                lease.acquire()
            lease.drain_spool()
            try:
                yield lease.con
            finally:
                lease.after_transaction()

    def execute(self, sql: str, params: list[Any] | None = None, *,
                announce: bool = True) -> list[tuple[Any, ...]]:
        """Run one statement as its own (autocommitted) transaction; return its rows.

        One statement is atomic, and cheaper than BEGIN + statement + COMMIT. ``announce``
        bumps the write generation first; pass False for reads, and for writes that no cache
        derived from the log depends on (bookkeeping, @step calls, once keys).
        """
        with self.lease() as conn:
            if announce:
                self._lease.bump_generation()
            try:
                return conn.execute(sql, params or []).fetchall()
            except duckdb.Error as e:
                if _interrupted(e):
                    raise
                raise LogError(f"the log {self.path} refused a write: {first_line(e)}") from e

    def trusted_macs(self, digest: str) -> list[str]:
        """The signatures ``nbdurable trust`` recorded for the value named ``digest``."""
        rows = self.execute("SELECT body ->> 'mac' FROM events WHERE kind = ? AND "
                            "body ->> 'hash' = ?", [schema.Kind.VALUE_TRUSTED, digest],
                            announce=False)
        return [mac for (mac,) in rows if mac]

    def announce_write(self) -> None:
        """Tell other processes that their view of the log is stale, for changes kept beside
        the database (journals). Needs no lease: it never waits for a transaction."""
        self._sidecars().bump_generation()

    def defer(self, sql: str, params: list[Any]) -> None:
        """Queue a best-effort write (bookkeeping a crash may lose harmlessly).

        It is written with the next transaction, before the lease is given back, or by a
        background thread a few seconds later if this process is not using the log.
        """
        with self._locked() as lease:
            lease.deferred.append((sql, params))
            if not lease.attached and lease.flush_due is None:
                lease.flush_due = time.monotonic() + _DEFER_DELAY
                lease.start_linger_thread()
                lease.cond.notify_all()

    def generation(self) -> int:
        """The log's write generation now (no lock, no DuckDB: a read of the lock file).

        Every write bumps it before committing, so state derived from the log at generation
        ``g`` is still true while ``generation() == g``. -1 when it cannot be read.
        """
        try:
            return self._sidecars().read_generation()
        except LogError:
            return -1

    def before_release(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(generation)`` when the file is detached but still locked, before the
        lease is given back (to save derived state tagged with the state it is true for)."""
        with self._locked() as lease:
            if callback not in lease.release_callbacks:
                lease.release_callbacks.append(callback)

    def _sidecars(self) -> _Lease:
        """The lease with its lock files open (opened once, under the lock)."""
        lease = self._current()
        if lease.lock_fd is None:
            with self._locked():
                lease.open_sidecars()
        return lease

    @contextmanager
    def _locked(self) -> Iterator[_Lease]:
        lease = self._current()
        if not lease.lock.acquire(timeout=self.lock_timeout):
            raise LogBusyError(
                f"the log {self.path} is in use by another thread of this process for more than "
                f"{self.lock_timeout:g} s; let it finish, or raise the lock timeout"
            )
        try:
            yield lease
        except Exception as exc:
            if _interrupted(exc):  # Kernel -> Interrupt landed in a query: say so plainly
                raise KeyboardInterrupt from None
            if isinstance(exc, duckdb.Error):  # no DuckDB error leaves nbdurable raw
                raise _query_error(self.path, exc) from None
            raise
        finally:
            lease.lock.release()

    @contextmanager
    def transaction(self, *, announce: bool = True,
                    urgent: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Hold the lease, BEGIN; COMMIT on success, ROLLBACK on exception.

        Yields the connection, whose default database is the log (unqualified table names).
        Re-entrant in the same thread: a nested ``transaction()`` joins the outer one, and only
        the outermost block commits or rolls back. Do not keep the connection after the block.
        ``announce=False``: the block changes nothing that caches of the log depend on (it
        reads, or writes bookkeeping); see :meth:`execute`. ``urgent``: a consumer that others
        are waiting on (a wait reading its mailbox) does not let earlier waiters go first.
        """
        with self._locked() as lease:
            if lease.depth:
                lease.depth += 1
                try:
                    yield lease.con
                finally:
                    lease.depth -= 1
                return
            lease.begin(urgent=urgent)
            try:
                yield lease.con
                lease.run_deferred()
                if announce:
                    lease.bump_generation()
            except BaseException:
                lease.rollback()
                raise
            lease.commit()

    def hold(self, seconds: float) -> None:
        """Keep the lease for ``seconds`` after this transaction even if others wait, at most
        ``HOLD_CAP`` after it was taken: a consumer with more work queued (events pending for
        its waits) does it without paying for the lease again, without starving the others."""
        self._current().hold(seconds)

    def release(self) -> None:
        """Detach the log and give the lease back now, if held (for example before a long wait)."""
        lease = self._current()
        with lease.lock:
            if lease.depth:
                raise UsageError("release() cannot be called inside a transaction")
            lease.release()

    def close(self) -> None:
        """Release the lease and close the connection. Idempotent; also done at interpreter exit."""
        if self._lease.pid != os.getpid() or self._lease.closed:
            self._finalizer()
            return
        self._lease.close()
        self._finalizer.detach()

    def _current(self) -> _Lease:
        lease = self._lease
        if lease.pid != os.getpid():  # a forked child: never reuse the parent's connection/fds
            with _FORK_LOCK:
                if self._lease is lease:
                    was_closed = lease.closed
                    self._finalizer()  # abandons the parent's lease in this process
                    self._lease = _Lease(self.path, self.lock_timeout, self.linger)
                    self._lease.closed = was_closed
                    self._finalizer = weakref.finalize(self, _close_quietly, self._lease)
            lease = self._lease
        if lease.closed:
            raise UsageError(f"this LogDB for {self.path} was closed; open the log again with open_log()")
        return lease


_REGISTRY: dict[tuple[int, Path], LogDB] = {}
_BY_ARGUMENT: dict[tuple[int, Path | None], LogDB] = {}
_REGISTRY_LOCK = threading.Lock()
_FORK_LOCK = threading.Lock()


def open_log(path: str | os.PathLike[str]) -> LogDB:
    """The process-wide shared :class:`LogDB` for ``path`` (created on first use, default options).

    The kernel extension, ``@step`` calls and ``history()`` must share one lease: two LogDB
    objects for one file in one process would wait on each other. This small registry, keyed by
    absolute path and process id (a forked child gets its own), is nbdurable's only process-wide
    state. A closed instance is replaced by a new one.
    """
    absolute = path if isinstance(path, Path) and path.is_absolute() else None
    fast = (os.getpid(), absolute)  # the same absolute path again: skip resolving it (syscalls)
    db = _BY_ARGUMENT.get(fast) if absolute is not None else None
    if db is not None and not db.closed:
        return db
    key = (os.getpid(), _resolve(path))
    with _REGISTRY_LOCK:
        db = _REGISTRY.get(key)
        if db is None or db.closed:
            db = _REGISTRY[key] = LogDB(key[1], lock_timeout=_lock_timeout())
        if absolute is not None:
            _BY_ARGUMENT[fast] = db
        return db


def _lock_timeout() -> float:
    """``NBDURABLE_LOCK_TIMEOUT`` (seconds), default 30."""
    raw = os.environ.get("NBDURABLE_LOCK_TIMEOUT", "")
    try:
        value = float(raw) if raw else 30.0
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise UsageError(f"NBDURABLE_LOCK_TIMEOUT must be a number of seconds >= 0, got {raw!r}")
    return value


class _Lease:
    """The per-process state behind a LogDB: connection, sidecar fds, linger thread.

    It never refers to its LogDB, so the LogDB can be garbage-collected (which closes the lease).
    Every method except ``close``/``abandon``/``detach_for_fork`` expects ``lock`` to be held.
    """

    def __init__(self, path: Path, lock_timeout: float, linger: float):
        self.path = path
        self.lock_timeout = lock_timeout
        self.linger = linger
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.conn: duckdb.DuckDBPyConnection | None = None
        self.lock_fd: int | None = None
        self.wait_fd: int | None = None
        self.flocked = False
        self.attached = False
        self.validated = False
        self.closed = False
        self.depth = 0
        self.idle_deadline = 0.0
        self.thread: threading.Thread | None = None
        self.deferred: list[tuple[str, list[Any]]] = []
        self.drained: list[Path] = []  # spooled pushes moved in by the open transaction
        self.generation_lock = threading.Lock()
        self.flush_due: float | None = None
        self.release_callbacks: list[Callable[[int], None]] = []
        self.acquired_at = self.hold_until = 0.0
        _LIVE.add(self)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The connection: open from the first acquire until close."""
        assert self.conn is not None, "the log's lease has no connection"
        return self.conn

    @property
    def _lock_fd(self) -> int:
        assert self.lock_fd is not None, "the log's lock file is not open"
        return self.lock_fd

    @property
    def _wait_fd(self) -> int:
        assert self.wait_fd is not None, "the log's wait file is not open"
        return self.wait_fd

    # -- transactions ----------------------------------------------------------------------

    def begin(self, urgent: bool = False) -> None:
        if not self.attached:
            self.acquire(urgent)
        try:
            with interrupts.deferred():  # in a DuckDB transaction <=> depth 1
                self.con.execute("BEGIN TRANSACTION")
                self.depth = 1
                self.drained = self.drain_in_transaction()
        except duckdb.Error as e:
            self.reset()
            raise LogError(f"cannot start a transaction on the log {self.path}: {first_line(e)}") from e
        except BaseException:  # an interrupt held back until BEGIN was noted: undo it
            if self.depth:
                self.rollback()
            raise

    def commit(self) -> None:
        self.depth = 0
        drained, self.drained = self.drained, []
        try:
            self.con.execute("COMMIT")
        except BaseException as e:  # also KeyboardInterrupt: never leave a transaction open
            self.reset()
            if isinstance(e, duckdb.Error):
                raise LogError(f"could not commit to the log {self.path}: {first_line(e)}") from e
            raise
        spool.remove(drained)  # in the log now
        self.after_transaction()

    def rollback(self) -> None:
        self.depth = 0
        self.drained = []  # still spooled: the next transaction moves them
        try:
            self.con.execute("ROLLBACK")
        except BaseException:
            self.reset()  # dropping the connection rolls back too
            return
        self.after_transaction()

    def drain_in_transaction(self) -> list[Path]:
        """At the start of a transaction: move the pushes spooled beside the log into it (the
        caller then sees them; their files go once it committed). If that fails the
        transaction starts again without them: they stay spooled for the next one."""
        paths = spool.pending(self.path)
        if not paths:
            return []
        try:
            return spool.drain(self.con, self.path, paths)
        except duckdb.Error:
            self.con.execute("ROLLBACK")
            self.con.execute("BEGIN TRANSACTION")
            return []

    def drain_spool(self) -> None:
        """Outside a transaction (:meth:`LogDB.lease`): the same, in a transaction of its own."""
        paths = spool.pending(self.path)
        if not paths:
            return
        with interrupts.deferred():  # never leave this transaction open
            try:
                self.con.execute("BEGIN TRANSACTION")
                done = spool.drain(self.con, self.path, paths)
                self.con.execute("COMMIT")
            except duckdb.Error:
                with suppress(duckdb.Error):
                    self.con.execute("ROLLBACK")
                return
        spool.remove(done)

    def after_transaction(self) -> None:
        if not self.holding() and (self.linger <= 0 or self.waiter_present()):
            self.release()
            return
        self.idle_deadline = max(time.monotonic() + self.linger, self.hold_until)
        self.start_linger_thread()

    def hold(self, seconds: float) -> None:
        self.hold_until = min(time.monotonic() + seconds, self.acquired_at + HOLD_CAP)

    def holding(self) -> bool:
        return time.monotonic() < self.hold_until

    # -- the lease -------------------------------------------------------------------------

    def acquire(self, urgent: bool = False) -> None:
        """Take the flock, create/validate the log if needed, ATTACH it read-write."""
        deadline = time.monotonic() + self.lock_timeout
        self.open_sidecars()
        self.take_flock(deadline, urgent)
        self.acquired_at, self.hold_until = time.monotonic(), 0.0
        try:
            self.write_identity()
            if self.conn is None:
                self.conn = _connect()
            if not self.validated or not self.path.exists():
                self.prepare(deadline)
            self.attach(read_only=False, deadline=deadline)
        except duckdb.Error as e:  # not an expected condition: start over with a new connection
            self.reset()
            raise LogError(f"cannot open the log {self.path}: {first_line(e)}") from e
        except BaseException:
            if self.attached:
                with suppress(duckdb.Error):
                    self.detach()
            self.unlock()
            raise
        self.cond.notify_all()

    def release(self) -> None:
        """DETACH (checkpoints) then unlock. Order matters: the file must be closed first."""
        if self.attached and self.deferred:
            self.flush_deferred()
        was_attached = self.attached
        try:
            if self.attached:
                try:
                    self.detach()
                except duckdb.Error:
                    self.reset()
            if was_attached and self.flocked:
                # Detached (the file is final) but still locked (nobody else can write yet).
                generation = self.read_generation()
                for callback in list(self.release_callbacks):
                    with suppress(Exception):  # derived state only: never block the release
                        callback(generation)
        finally:
            self.unlock()

    def reset(self) -> None:
        """After an unexpected DuckDB failure: drop the connection (a new one is made later)."""
        self.depth, self.drained = 0, []
        conn, self.conn, self.attached = self.conn, None, False
        if conn is not None:
            with suppress(duckdb.Error):
                conn.close()
        self.unlock()

    def open_sidecars(self) -> None:
        if self.lock_fd is not None:
            return
        try:
            files.private_dir(self.path.parent)
            self.lock_fd = files.open_private(Sidecars.of(self.path).lock, os.O_RDWR)
            self.wait_fd = files.open_private(Sidecars.of(self.path).wait, os.O_RDWR)
        except OSError as e:
            self.close_fds()
            raise LogError(
                f"cannot create the lock files beside the log {self.path}: {e.strerror}; "
                "check the directory's permissions or point NBDURABLE_LOG elsewhere"
            ) from e

    def take_flock(self, deadline: float, urgent: bool = False) -> None:
        others_wait = self.waiter_present()
        if not others_wait and _try_flock(self._lock_fd, fcntl.LOCK_EX):
            self.flocked = True
            return
        if others_wait and not urgent:
            self.yield_to_waiters(deadline)
        waiting = False
        backoff = _Backoff(_URGENT_CAP if urgent else _BACKOFF_CAP)
        try:
            while True:
                if not waiting:
                    waiting = _try_flock(self._wait_fd, fcntl.LOCK_SH)
                if _try_flock(self._lock_fd, fcntl.LOCK_EX):
                    break
                if time.monotonic() >= deadline:
                    raise LogBusyError(self.busy_message())
                backoff.sleep(deadline)
        finally:
            if waiting:
                fcntl.flock(self._wait_fd, fcntl.LOCK_UN)
        self.flocked = True

    def yield_to_waiters(self, deadline: float) -> None:
        """Others already wait: let one of them take the lease first (bounded by a grace time)."""
        until = min(deadline, time.monotonic() + _YIELD_GRACE)
        while self.waiter_present() and time.monotonic() < until:
            time.sleep(_YIELD_POLL)

    def waiter_present(self) -> bool:
        """Whether another process (or LogDB) holds ``LOCK_SH`` on ``.wait``. Never blocks."""
        if self.wait_fd is None:
            return False
        if not _try_flock(self._wait_fd, fcntl.LOCK_EX):
            return True
        fcntl.flock(self._wait_fd, fcntl.LOCK_UN)
        return False

    def unlock(self) -> None:
        if self.flocked:
            self.flocked = False
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def write_identity(self) -> None:
        """Tell waiters who holds the lease (for their error message only: failures are ignored)."""
        data = f"{os.getpid()} {processes.HOST_TOKEN} {processes.program()}".encode("utf-8", "replace")
        data = data[: _GENERATION_AT - 1].ljust(_GENERATION_AT - 1) + b"\n"
        with suppress(OSError):
            os.pwrite(self._lock_fd, data, 0)

    def read_generation(self) -> int:
        try:
            raw = os.pread(self._lock_fd, _GENERATION_LEN, _GENERATION_AT)
            return int(raw) if raw.strip() else 0
        except (OSError, ValueError):
            return -1  # unreadable: treat as "someone else wrote"

    def bump_generation(self) -> None:
        """Before a write commits: tell other processes their caches may be stale.

        Atomic across processes (a POSIX record lock on the counter's bytes, independent of the
        lease's flock) and threads, so that no increment is lost: a lost one could leave a
        reader believing stale state is current.
        """
        fd = self._lock_fd
        with self.generation_lock, suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_EX, _GENERATION_LEN, _GENERATION_AT)
            try:
                generation = max(self.read_generation(), 0) + 1
                os.pwrite(fd, b"%0*d" % (_GENERATION_LEN, generation), _GENERATION_AT)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, _GENERATION_LEN, _GENERATION_AT)

    def run_deferred(self) -> None:
        """Inside an open transaction: write the queued bookkeeping rows."""
        pending, self.deferred = self.deferred, []
        for sql, params in pending:
            self.con.execute(sql, params)

    def flush_deferred(self) -> None:
        """Before giving the lease back: deferred rows in one transaction (best effort)."""
        try:
            self.con.execute("BEGIN TRANSACTION")
            self.run_deferred()  # bookkeeping: no cache depends on it, the generation stays
            self.con.execute("COMMIT")
        except duckdb.Error:
            self.deferred = []
            with suppress(duckdb.Error):
                self.con.execute("ROLLBACK")

    def busy_message(self) -> str:
        try:
            raw = os.pread(self._lock_fd, _GENERATION_AT, 0).decode("utf-8", "replace")
            words = raw.splitlines()[0].strip().split(" ", 2)
        except (OSError, IndexError):
            words = []
        if len(words) == 3 and words[0].isdigit():
            holder = f"PID {words[0]} on {words[1]} ({words[2]})"
        else:
            holder = "another process"
        if words[:2] == [str(os.getpid()), processes.HOST_TOKEN]:
            return (
                f"could not get the log {self.path} within {self.lock_timeout:g} s: another LogDB of this "
                f"process (PID {words[0]}) holds it; share one per log with nbdurable.store.logdb.open_log()"
            )
        return (
            f"could not get the log {self.path} within {self.lock_timeout:g} s: it is held by "
            f"{holder}; let that process finish or stop it, or raise the lock timeout"
        )

    # -- attaching -------------------------------------------------------------------------

    def attach(self, *, read_only: bool, deadline: float) -> None:
        """ATTACH the file as ``log`` and ``USE`` it; retry while a foreign process holds it."""
        options = "TYPE duckdb, READ_ONLY" if read_only else "TYPE duckdb"
        sql = f"ATTACH {_quote(self.path)} AS {ALIAS} ({options})"
        backoff = _Backoff()
        while True:
            try:
                with interrupts.deferred():  # attached in DuckDB <=> self.attached
                    self.con.execute(sql)
                    self.attached = True
                    self.con.execute(f"USE {ALIAS}")
                return
            except duckdb.Error as e:
                foreign = _FOREIGN_LOCK.search(str(e))
                if foreign is None and "Could not set lock" not in str(e):
                    raise _attach_error(self.path, e) from e
                if time.monotonic() >= deadline:
                    raise LogBusyError(_foreign_message(self.path, self.lock_timeout, foreign)) from e
                backoff.sleep(deadline)

    def detach(self) -> None:
        with interrupts.deferred():
            self.attached = False
            self.con.execute("USE memory")
            self.con.execute(f"DETACH {ALIAS}")

    def prepare(self, deadline: float) -> None:
        """Create the log if it is missing, then validate it (read-only). Holds the flock."""
        if not os.path.lexists(self.path):
            self.create()
        sniff(self.path)
        self.attach(read_only=True, deadline=deadline)
        try:
            meta = self.read_meta()
        finally:
            self.detach()
        _check_meta(self.path, meta)
        self.validated = True

    def read_meta(self) -> dict[str, str] | None:
        try:
            [(found,)] = self.con.execute(
                "SELECT count(*) FROM duckdb_tables() "
                "WHERE database_name = ? AND table_name = 'nbdurable_meta'",
                [ALIAS],
            ).fetchall()
            if not found:
                return None
            rows = self.con.execute("SELECT key, value FROM nbdurable_meta ORDER BY rowid").fetchall()
        except duckdb.Error as e:
            why = f"its nbdurable_meta table is unreadable: {first_line(e)}"
            raise NotALogError(_not_a_log(self.path, why)) from e
        meta: dict[str, str] = {}
        for key, value in rows:
            meta.setdefault(key, value)
        return meta

    def create(self) -> None:
        """Build a new log under a temporary name and publish it atomically with ``os.link``."""
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            self.build(tmp)
            os.chmod(tmp, files.file_mode())  # DuckDB creates it with the umask's mode
            files.sync(tmp)
            _publish(tmp, self.path)
        except duckdb.Error as e:
            raise LogError(f"cannot create the log {self.path}: {first_line(e)}") from e
        except OSError as e:
            raise LogError(
                f"cannot create the log {self.path}: {e.strerror or e}; "
                "check the directory's permissions or point NBDURABLE_LOG elsewhere"
            ) from e
        finally:
            for leftover in (tmp, Path(f"{tmp}.wal")):
                with suppress(OSError):
                    os.unlink(leftover)

    def build(self, tmp: Path) -> None:
        conn = self.con
        conn.execute(f"ATTACH {_quote(tmp)} AS nbdurable_new (TYPE duckdb)")
        try:
            conn.execute("USE nbdurable_new")
            conn.execute("BEGIN TRANSACTION")
            try:
                for ddl in schema.DDL:
                    conn.execute(ddl)
                conn.executemany("INSERT INTO nbdurable_meta VALUES (?, ?)", _meta_rows())
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.execute("USE memory")
            conn.execute("DETACH nbdurable_new")

    # -- the linger thread -----------------------------------------------------------------

    def start_linger_thread(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            name = f"nbdurable-linger {self.path.name}"
            self.thread = threading.Thread(target=self.linger_loop, name=name, daemon=True)
            self.thread.start()

    def linger_loop(self) -> None:
        """Detach once idle for ``linger`` seconds, or as soon as another process waits."""
        with self.cond:
            while not self.closed and self.pid == os.getpid():
                if not self.attached:
                    self.flush_when_due()
                    continue
                remaining = self.idle_deadline - time.monotonic()
                if self.depth == 0 and (remaining <= 0 or (self.waiter_present()
                                                           and not self.holding())):
                    try:
                        self.release()
                    except Exception:  # never die holding the lease
                        self.reset()
                    continue
                self.cond.wait(min(remaining, _WAITER_POLL) if remaining > 0 else _WAITER_POLL)

    def flush_on_close(self) -> None:
        """Deferred rows at exit: try briefly to write them; never hang an exiting process."""
        timeout, self.lock_timeout = self.lock_timeout, min(self.lock_timeout, 1.0)
        try:
            self.acquire()
        except Exception:
            self.deferred = []
        finally:
            self.lock_timeout = timeout

    def flush_when_due(self) -> None:
        """Not attached: wait, and write deferred rows once they are due (lease taken briefly)."""
        if not self.deferred or self.flush_due is None:
            self.flush_due = None
            self.cond.wait()
            return
        remaining = self.flush_due - time.monotonic()
        if remaining > 0:
            self.cond.wait(remaining)
            return
        self.flush_due = None
        try:
            self.acquire()
            self.release()
        except Exception:  # best effort: bookkeeping is dropped rather than blocking anyone
            self.deferred = []
            with suppress(Exception):
                self.unlock()

    # -- closing and forking ---------------------------------------------------------------

    def close(self, wait: float | None = None) -> None:
        """Release and close; the caller must not be inside a transaction."""
        if self.pid != os.getpid():
            self.abandon()
            return
        if not self.lock.acquire(timeout=self.lock_timeout if wait is None else wait):
            raise LogBusyError(f"cannot close the log {self.path}: "
                               "another thread of this process is using it")
        try:
            if self.closed:
                return
            if self.depth:
                raise UsageError("close() cannot be called inside a transaction")
            self.closed = True
            try:
                if self.deferred and not self.attached:
                    self.flush_on_close()
                self.release()
            finally:
                if self.conn is not None:
                    with suppress(duckdb.Error):
                        self.conn.close()
                    self.conn = None
                self.close_fds()
                self.cond.notify_all()
        finally:
            self.lock.release()

    def abandon(self) -> None:
        """In a forked child: forget the parent's lease without touching its connection or locks."""
        self.closed = True
        self.flocked = self.attached = False
        self.close_fds()  # closing our copies of the descriptors does not release the parent's flock
        if self.conn is not None:
            _leak(self.conn)
            self.conn = None

    def close_fds(self) -> None:
        for fd in (self.lock_fd, self.wait_fd):
            if fd is not None:
                with suppress(OSError):
                    os.close(fd)
        self.lock_fd = self.wait_fd = None

    def detach_for_fork(self) -> None:
        """Before ``fork()``: give an idle lease back so the child can attach the log itself."""
        # Bounded wait: the linger thread may be in the middle of a DETACH (milliseconds).
        if self.pid != os.getpid() or not self.lock.acquire(timeout=_FORK_WAIT):
            return
        try:
            if self.depth == 0 and not self.closed:
                self.release()
        except Exception:
            pass
        finally:
            self.lock.release()


_LIVE: weakref.WeakSet[_Lease] = weakref.WeakSet()
_LEAKED: list[object] = []


def _interrupted(exc: Exception) -> bool:
    """DuckDB turns a SIGINT during a query into an exception of its own."""
    module = sys.modules.get("duckdb")
    return ((module is not None and isinstance(exc, module.InterruptException))
            or (isinstance(exc, RuntimeError) and str(exc) == "Query interrupted"))


def _close_quietly(lease: _Lease) -> None:
    if lease.conn is None and not lease.flocked and not lease.deferred:
        lease.close_fds()  # never connected: nothing to flush, and no need to import duckdb
        return
    with suppress(NbdurableError, OSError, duckdb.Error):
        lease.close(wait=1.0)  # at interpreter exit, do not hang on a stuck daemon thread


def _before_fork() -> None:
    for _ in range(3):
        try:
            leases = list(_LIVE)
            break
        except RuntimeError:  # another thread created a LogDB meanwhile
            leases = []
    for lease in leases:
        lease.detach_for_fork()


def _after_fork_in_child() -> None:
    global _REGISTRY_LOCK, _FORK_LOCK
    _REGISTRY_LOCK = threading.Lock()
    _FORK_LOCK = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _leak(obj: object) -> None:
    """Keep ``obj`` alive forever: destroying a parent's DuckDB connection in a forked child
    could checkpoint stale state into the parent's file."""
    import ctypes

    _LEAKED.append(obj)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


# -- helpers -----------------------------------------------------------------------------------


class _Backoff:
    """Jittered exponential sleeps: 0.5 ms growing to ``cap`` (10 ms), never past the
    deadline."""

    def __init__(self, cap: float = 0.010) -> None:
        self.delay, self.cap = _BACKOFF_START, cap

    def sleep(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        time.sleep(max(0.0, min(self.delay * random.uniform(0.5, 1.5), remaining)))
        self.delay = min(self.delay * _BACKOFF_GROWTH, self.cap)


def _try_flock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _connect() -> duckdb.DuckDBPyConnection:
    config: dict[str, str | bool | int | float | list[str]] = {
        "threads": 1, "autoinstall_known_extensions": False, "autoload_known_extensions": False,
        # a name missing from the log must be an error, never a Python variable of the
        # caller's frame that happens to have that name (DuckDB's replacement scans)
        "python_enable_replacements": False}
    return duckdb.connect(":memory:", config=config)


def _resolve(path: str | os.PathLike[str]) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (TypeError, OSError) as e:
        raise UsageError(f"invalid log path {path!r}: {e}") from None


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _not_a_log(path: Path, why: str) -> str:
    return f"{path} is not an nbdurable log ({why}); point NBDURABLE_LOG at another file or delete it"


def sniff(path: Path) -> None:
    """Reject files that are not DuckDB databases before DuckDB sees them (never writes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except IsADirectoryError:
        raise NotALogError(_not_a_log(path, "it is a directory")) from None
    except OSError as e:
        raise LogError(f"cannot read the log {path}: {e.strerror or e}") from e
    if not head:
        raise NotALogError(_not_a_log(path, "it is an empty file"))
    if head[8:12] != b"DUCK":
        raise NotALogError(_not_a_log(path, "it is not a DuckDB database file"))


def _check_meta(path: Path, meta: dict[str, str] | None) -> None:
    if meta is None:
        raise NotALogError(_not_a_log(path, "a DuckDB database without an nbdurable_meta table"))
    if "format" not in meta:
        raise NotALogError(_not_a_log(path, "its nbdurable_meta table has no format row"))
    if meta["format"] != schema.FORMAT:
        raise NotALogError(_not_a_log(path, f"its format is {meta['format']!r}, not {schema.FORMAT!r}"))
    version = meta.get("schema_version", "")
    if not version.isdigit():
        raise NotALogError(_not_a_log(path, f"its schema_version {version!r} is not a number"))
    if int(version) > schema.SCHEMA_VERSION:
        raise LogVersionError(
            f"the log {path} has schema version {version}, but this nbdurable reads versions up to "
            f"{schema.SCHEMA_VERSION}; upgrade nbdurable (pip install -U nbdurable) to use it"
        )


def _attach_error(path: Path, e: duckdb.Error) -> NbdurableError:
    text = str(e)
    if "storage version" in text or "newer version of DuckDB" in text:
        return LogVersionError(
            f"the log {path} was written by a newer DuckDB than {duckdb.__version__} "
            f"({first_line(e)}); upgrade nbdurable and duckdb to use it"
        )
    if "not a valid DuckDB database" in text:
        return NotALogError(_not_a_log(path, "it is not a DuckDB database file"))
    if "Corrupt database" in text or "checksum" in text:
        return LogCorruptError(
            f"the log {path} is damaged ({first_line(e)}); restore it from a backup, "
            "or point NBDURABLE_LOG at another file"
        )
    if "Unique file handle conflict" in text:
        return LogError(
            f"the log {path} is already open in this process outside nbdurable's lease (a plain "
            "duckdb connection, or this process was forked while its parent was writing the log); "
            "close that connection, or start worker processes with the 'spawn' method"
        )
    return LogError(f"cannot open the log {path}: {first_line(e)}")


def _query_error(path: Path, e: duckdb.Error) -> NbdurableError:
    """One line, with what to do, for a DuckDB error while using the log."""
    text, first = str(e), first_line(e)
    if "No space left" in text or "disk is full" in text.lower():
        return LogError(f"the disk holding the log {path} is full ({first}); free some space "
                        "(checkpoints wait safely in the kernels' journals meanwhile)")
    if isinstance(e, (duckdb.CatalogException, duckdb.BinderException)):
        return LogCorruptError(f"the log {path} lacks nbdurable's tables or columns ({first}): "
                               "it was changed by hand or damaged; restore it from a backup, or "
                               "move it away to start a new log")
    if isinstance(e, duckdb.IOException):
        return LogError(f"the log {path} cannot be read or written ({first}); check the disk "
                        "and the file's permissions")
    return LogError(f"the log {path} refused an operation: {first}")


def _foreign_message(path: Path, timeout: float, found: re.Match[str] | None) -> str:
    who = f"PID {found['pid']} ({found['exe']})" if found else "another program"
    return (
        f"could not get the log {path} within {timeout:g} s: {who} opened it outside nbdurable; "
        "close that program's connection to it (for example a duckdb shell) and retry"
    )


def _meta_rows() -> list[tuple[str, str]]:
    return [
        ("format", schema.FORMAT),
        ("schema_version", str(schema.SCHEMA_VERSION)),
        ("created_at", datetime.now(UTC).isoformat()),
        ("created_by", _created_by()),
    ]


def _created_by() -> str:
    try:
        from importlib.metadata import version

        return f"nbdurable {version('nbdurable')}"
    except Exception:
        pass
    package = sys.modules.get(__package__ or "nbdurable")
    found = getattr(package, "__version__", None)
    return f"nbdurable {found}" if found else "nbdurable"


def _publish(tmp: Path, path: Path) -> None:
    """Make ``tmp`` appear at ``path`` atomically, unless someone else published a log first."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        return
    except OSError:
        if os.path.lexists(path):  # no hard links on this file system; we hold the lease
            return
        os.rename(tmp, path)
    files.sync(path.parent)


