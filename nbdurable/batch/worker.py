"""``nbdurable worker``: resume the suspended runs of a log when they can go on.

A batch run started with ``--suspend-after`` holds no kernel while it waits (status ``waiting``).
The worker looks at the log whenever its write generation moves (a push bumps it: one ``pread``
per look, no query) and when the earliest deadline of a waiting run passes, and resumes each run
whose wait is met now (an event pushed for a key it waits for, a sleep or timeout over) with
``nbdurable resume RUN`` in a process of its own: at most ``max_parallel`` at a time. A long-lived
worker keeps one such process warm (``nbdurable resume -``: papermill and the rest imported, ~1.6 s,
then it reads the run id on stdin), so that a resume costs a kernel start, not an interpreter's
start-up too. Each resume
holds the run's claim, so a run is never executed by two processes; a resume that finds the run
taken (another worker) is refused and says so. Ctrl-C / SIGTERM: no new resume starts, the ones in
flight are interrupted and the worker exits; the next worker resumes those runs (as it does a
resume killed with its machine), once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from nbdurable.batch.runner import EXIT_USAGE, default_log
from nbdurable.engine import suspension
from nbdurable.store import records

LOOK_EVERY = 0.05  # seconds between two reads of the write generation (a pread each)
LOOK_AT_LEAST = 30.0  # ... and a full look this often anyway (a clock change, a lost bump)


@dataclass
class _Process:
    """One ``nbdurable resume`` process: its stderr (a file: never a full pipe) and, once it was
    given a run, when that run's latest invocation started."""

    proc: subprocess.Popen[bytes]
    err: IO[bytes]
    since: object = None

    def hand(self, run: str) -> bool:
        """Give ``run`` to this warm process; False (and it is discarded) if it died."""
        try:
            assert self.proc.stdin is not None
            if self.proc.poll() is None:
                self.proc.stdin.write(run.encode() + b"\n")
                self.proc.stdin.close()
                return True
        except OSError:  # a broken pipe: it died just now
            pass
        self.discard()
        return False

    def discard(self) -> None:
        """End a warm process that runs nothing (yet)."""
        self.proc.kill()
        self.proc.wait()
        self.err.close()


@dataclass
class Worker:
    """Resumes what can go on in one log."""

    log: Path
    max_parallel: int = 1
    say: Callable[[str], None] = print
    running: dict[str, _Process] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)
    # runs whose resume was refused (exit 2: the notebook gone, another worker on it...): left
    # alone while their latest invocation is the one refused
    refused: dict[str, object] = field(default_factory=dict)
    warm: bool = False  # keep a spare resume process ready (a long-lived worker)
    spare: _Process | None = None

    def start_ready(self) -> tuple[int, datetime | None]:
        """Start resuming the runs that can go on (room permitting); (how many started, the
        earliest deadline of the runs left waiting)."""
        from nbdurable.store.logdb import open_log

        waiting = suspension.waiting_runs(open_log(self.log), records.now())
        started = 0
        for w in waiting:
            if w.ready and w.run not in self.running and len(self.running) < self.max_parallel \
                    and self.refused.get(w.run, self) != w.since:
                self._resume(w)
                started += 1
        ahead = [d for w in waiting if not w.ready and (d := w.next_deadline()) is not None]
        return started, min(ahead) if ahead else None

    def _resume(self, waiting: suspension.Waiting) -> None:
        what = ", ".join(waiting.keys()) or "a deadline"
        self.say(f"resuming run {waiting.run!r} (it waited for {what})")
        process, self.spare = self.spare, None
        if process is None or not process.hand(waiting.run):
            process = self._start(waiting.run)
        process.since = waiting.since
        self.running[waiting.run] = process
        self.keep_warm()

    def keep_warm(self) -> None:
        """Start the spare resume process, if this worker keeps one and has none alive."""
        if not self.warm or self.stopping.is_set():
            return
        if self.spare is not None and self.spare.proc.poll() is not None:  # it died
            self.spare.discard()
            self.spare = None
        if self.spare is None:
            self.spare = self._start("-")

    def _start(self, run: str) -> _Process:
        """``nbdurable resume RUN`` (``-``: the run id comes on stdin)."""
        err = tempfile.TemporaryFile()
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbdurable", "resume", run, "--log", str(self.log)],
            stdin=subprocess.PIPE if run == "-" else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=err)
        return _Process(proc, err)

    def reap(self) -> None:
        """Say how each finished resume ended."""
        for run, process in list(self.running.items()):
            code = process.proc.poll()
            if code is None:
                continue
            del self.running[run]
            err = _lines(process.err)
            ended = next((text for c, text in _ENDED if c == code), f"exit {code}")
            why = f" ({err[-1].removeprefix('nbdurable: ')})" if code and err else ""
            if code == EXIT_USAGE:
                self.refused[run] = process.since
                why += "; left alone until it is resumed by hand or the worker restarts"
            self.say(f"run {run!r}: {ended}{why}")

    def stop(self) -> None:
        """No new resume; the ones in flight stop (their runs stay resumable)."""
        self.stopping.set()
        if self.spare is not None:
            self.spare.discard()
            self.spare = None
        for process in self.running.values():
            process.proc.send_signal(signal.SIGINT)
        for process in self.running.values():
            try:
                process.proc.wait(30)
            except subprocess.TimeoutExpired:
                process.proc.kill()
        self.reap()


def _lines(file: IO[bytes]) -> list[str]:
    """What a finished resume wrote on stderr."""
    with file:
        file.seek(0)
        return file.read().decode(errors="replace").strip().splitlines()


_ENDED = ((0, "completed"), (1, "failed (a cell raised)"), (2, "not resumed"),
          (3, "crashed (the kernel died)"), (4, "waiting again"), (-2, "stopped"), (130, "stopped"))


def worker(*, log: str | os.PathLike[str] | None = None, once: bool = False,
           max_parallel: int = 1, say: Callable[[str], None] = print,
           stop: threading.Event | None = None) -> int:
    """Resume the log's suspended runs as they become ready; with ``once``, those ready now,
    then return; else until Ctrl-C or ``stop`` is set (from another thread: ``nbdurable serve
    --worker``). Returns how many resumes were started."""
    from nbdurable.errors import UsageError
    from nbdurable.store.logdb import open_log

    if not isinstance(max_parallel, int) or max_parallel < 1:
        raise UsageError(f"max_parallel must be a whole number >= 1, got {max_parallel!r}")
    worker = Worker(default_log(log), max_parallel, say, warm=not once)
    if stop is not None:
        worker.stopping = stop
    db = open_log(worker.log)
    worker.keep_warm()
    total = 0
    try:
        while not worker.stopping.is_set():
            worker.reap()
            started, deadline = worker.start_ready()
            total += started
            if once and not started and not worker.running:
                return total
            _sleep_until_change(db, worker, deadline)
    except KeyboardInterrupt:
        say("stopping: runs in flight stay resumable")
    finally:
        worker.stop()
    return total


def _sleep_until_change(db: Any, worker: Worker, deadline: datetime | None) -> None:
    """Until the log's write generation moves, a resume ends, a deadline passes or
    ``LOOK_AT_LEAST``."""
    last = db.generation()
    until = records.now() + timedelta(seconds=LOOK_AT_LEAST)
    if deadline is not None:
        until = min(until, deadline)
    while records.now() < until and not worker.stopping.is_set():
        if worker.stopping.wait(LOOK_EVERY) or db.generation() != last:
            return
        if any(p.proc.poll() is not None for p in worker.running.values()):
            return
