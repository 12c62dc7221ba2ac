"""What the log says about one run's steps, kept in memory while it stays true.

Reading the log costs a millisecond or more per DuckDB query, too much for every cell, and a
restarted kernel would pay ``import duckdb`` before it could replay anything. So the engine
keeps, per run, the latest attempt and the latest completed attempt of each step:

- valid while the log's write generation (:meth:`LogDB.generation`, a read of the lock file)
  is the one it was built at: every writer bumps the generation before committing;
- updated in memory by this process's own writes;
- saved as a snapshot beside the log (``<log>.index/``), tagged with its generation, just
  when this process gives the log's lease back; a restarted kernel whose log is at that
  generation, and whose file is exactly as it was then (inode, size, mtime, no WAL), loads the
  snapshot and replays without opening DuckDB at all.

A snapshot is only a cache: when its generation is not the log's, the index is rebuilt from
the log. Journals of dead processes (attempts they never finished) are moved into the log
first, which is a write and needs DuckDB.
"""

from __future__ import annotations

import os
import pickle
import threading
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from nbdurable.store import files, journal, records, schema, signing
from nbdurable.store.sidecars import Sidecars

if TYPE_CHECKING:  # pragma: no cover
    from duckdb import DuckDBPyConnection as Connection

    from nbdurable.store.logdb import LogDB

_FORMAT = 2


class RunIndex:
    def __init__(self, log: LogDB, run: str):
        self.log, self.run = log, run
        self.generation: int | None = None
        self._last: dict[str, records.Attempt] = {}
        self._completed: dict[str, records.Attempt] = {}
        self._reset: dict[str, int] = {}  # step -> highest attempt voided by `nbdurable reset`
        self._since: dict[str, int] = {}  # step -> first attempt whose calls and waits count
        self._dirty = False
        self._saved_file: tuple[Any, ...] | None = None
        self._lock = threading.RLock()  # the release callback runs in the log's linger thread
        log.before_release(self._save)

    # -- keeping it true ------------------------------------------------------------------------
    def ensure(self) -> None:
        """Make the index true now; without touching DuckDB when it already is."""
        generation = self.log.generation()
        if generation >= 0 and generation == self.generation:
            return
        if self.generation is None and generation > 0 and self._load_snapshot(generation):
            return
        with self.log.lease() as con:
            self.ensure_locked(con)

    def ensure_locked(self, con: Connection) -> None:
        """Same, holding the lease (so that a write can follow on a true index)."""
        generation = self.log.generation()
        if generation >= 0 and generation == self.generation:
            return
        seen = journal.look(self.log.path, self.run)
        if journal.recover(con, seen.dead):
            self.log.announce_write()
        generation = self.log.generation()  # before reading: a later change is then noticed
        pending = seen.live
        attempts = records.run_attempts(con, self.run, pending)
        resets = records.run_resets(con, self.run)
        with self._lock:
            self._last.clear()
            self._completed.clear()
            self._since.clear()
            self._reset = resets
            for attempt in attempts:
                self._note(attempt)
            self.generation = generation
            self._dirty = True

    def wrote(self, before: int, after: int) -> None:
        """This process wrote and moved the generation from before to after."""
        with self._lock:
            self.generation = after if self.generation == before else None
            self._dirty = True

    def note(self, attempt: records.Attempt) -> None:
        """Take an attempt into account (loaded, or just written by this process)."""
        with self._lock:
            self._note(attempt)

    def _note(self, attempt: records.Attempt) -> None:
        step, number = attempt.step, attempt.attempt
        last = self._last.get(step)
        if last is None or number >= last.attempt:
            self._last[step] = attempt
        if number <= self._reset.get(step, 0):
            return  # voided by a reset: neither a checkpoint nor a source of calls and waits
        if attempt.forced:
            self._since[step] = max(self._since.get(step, 1), number)
        done = self._completed.get(step)
        if attempt.status == schema.Status.COMPLETED and (done is None or number >= done.attempt):
            self._completed[step] = attempt

    # -- answers --------------------------------------------------------------------------------
    def last(self, step: str) -> records.Attempt | None:
        return self._last.get(step)

    def checkpoint(self, step: str) -> records.Attempt | None:
        """The most recent completed attempt of ``step``."""
        return self._completed.get(step)

    def reset_pending(self, step: str) -> bool:
        """``nbdurable reset`` voided the step and no attempt ran since."""
        last = self._last.get(step)
        return last is not None and last.attempt <= self._reset.get(step, 0)

    def since(self, step: str) -> int:
        """The first attempt whose recorded calls and waits a new attempt may reuse."""
        return max(self._since.get(step, 1), self._reset.get(step, 0) + 1)

    def next_number(self, step: str) -> int:
        last = self._last.get(step)
        return 1 if last is None else last.attempt + 1

    # -- snapshots ------------------------------------------------------------------------------
    def _snapshot_path(self) -> Path:
        name = xxhash.xxh3_64_hexdigest(self.run.encode())
        return Sidecars.of(self.log.path).index / f"{name}.pickle"

    def _save(self, generation: int) -> None:
        """Called holding the lease just before it is given back."""
        with self._lock:
            self._save_locked(generation)

    def _save_locked(self, generation: int) -> None:
        file_state = _file_state(self.log.path)
        if self.generation != generation or generation <= 0:
            return
        if not self._dirty and file_state == self._saved_file:
            return  # the snapshot on disk is still exact
        path = self._snapshot_path()
        state = {"format": _FORMAT, "run": self.run, "generation": generation,
                 "file": file_state, "last": self._last, "completed": self._completed,
                 "reset": self._reset, "since": self._since}
        data = pickle.dumps(state, protocol=5)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            files.private_dir(path.parent)
            files.write_private(tmp, signing.sign([data]).encode() + b"\n" + data)
            os.replace(tmp, path)
        except OSError:  # only a cache: the next reader rebuilds it from the log
            with suppress(OSError):
                tmp.unlink()
            return
        self._dirty, self._saved_file = False, file_state

    def _load_snapshot(self, generation: int) -> bool:
        seen = journal.look(self.log.path, self.run)
        if seen.dead_rows():
            return False  # their attempts must be moved into the log first
        state = _read_snapshot(self._snapshot_path())
        if (state is None or state.get("format") != _FORMAT or state.get("run") != self.run
                or state.get("generation") != generation
                # changed by anything else than nbdurable (it would have bumped the generation)
                or state.get("file") != _file_state(self.log.path)
                or self.log.generation() != generation):  # someone wrote while we read it
            return False
        rows = [tuple(r[1:]) for r in seen.live]
        with self._lock:
            self._last, self._completed = state["last"], state["completed"]
            self._reset, self._since = state["reset"], state["since"]
            for attempt in records.assemble(self.run, rows):
                self._note(attempt)
            self.generation = generation
        return True


def _read_snapshot(path: Path) -> dict[str, Any] | None:
    """A snapshot's state if its signature checks and it unpickles to the expected shape;
    None on any doubt (it is only a cache). Nothing unsigned is ever unpickled."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    mac, newline, data = raw.partition(b"\n")
    if not newline or not signing.verify(mac.decode("ascii", "replace"), [data]):
        return None
    try:
        state = pickle.loads(data)
        typed = all(isinstance(state.get(k), dict) for k in ("last", "completed", "reset",
                                                             "since"))
        ok = typed and all(isinstance(a, records.Attempt) for k in ("last", "completed")
                           for a in state[k].values())
    except Exception:  # a signed snapshot of another version: rebuild
        return None
    return state if ok else None


def _file_state(path: Path) -> tuple[Any, ...] | None:
    """Identity of the log file as last written: any write outside nbdurable changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, Sidecars.of(path).wal.exists())
