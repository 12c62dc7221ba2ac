"""``nbdurable worker``: resume the suspended runs of a log when they can go on.

A batch run started with ``--suspend-after`` holds no kernel while it waits (status ``waiting``).
The worker looks at the log whenever its write generation moves (a push bumps it: one ``pread``
per look, no query) and when the earliest deadline of a waiting run passes, and resumes each run
whose wait is met now (an event pushed for a key it waits for, a sleep or timeout over) with
``nbdurable resume RUN`` in a process of its own: at most ``max_parallel`` at a time. Each resume
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

from nbdurable.batch.runner import default_log
from nbdurable.engine import suspension
from nbdurable.store import records

LOOK_EVERY = 0.25  # seconds between two reads of the write generation
LOOK_AT_LEAST = 30.0  # ... and a full look this often anyway (a clock change, a lost bump)


@dataclass
class Worker:
    """Resumes what can go on in one log."""

    log: Path
    max_parallel: int = 1
    say: Callable[[str], None] = print
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stderr: dict[str, IO[bytes]] = field(default_factory=dict)  # of each resume, a file
    stopping: threading.Event = field(default_factory=threading.Event)

    def start_ready(self) -> tuple[int, datetime | None]:
        """Start resuming the runs that can go on (room permitting); (how many started, the
        earliest deadline of the runs left waiting)."""
        from nbdurable.store.logdb import open_log

        waiting = suspension.waiting_runs(open_log(self.log), records.now())
        started = 0
        for w in waiting:
            if w.ready and w.run not in self.running and len(self.running) < self.max_parallel:
                self._resume(w)
                started += 1
        ahead = [d for w in waiting if not w.ready and (d := w.next_deadline()) is not None]
        return started, min(ahead) if ahead else None

    def _resume(self, waiting: suspension.Waiting) -> None:
        what = ", ".join(waiting.keys()) or "a deadline"
        self.say(f"resuming run {waiting.run!r} (it waited for {what})")
        self.stderr[waiting.run] = tempfile.TemporaryFile()  # a file: never a full pipe
        self.running[waiting.run] = subprocess.Popen(
            [sys.executable, "-m", "nbdurable", "resume", waiting.run, "--log", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=self.stderr[waiting.run])

    def reap(self) -> None:
        """Say how each finished resume ended."""
        for run, proc in list(self.running.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.running[run]
            err = _lines(self.stderr.pop(run))
            ended = next((text for c, text in _ENDED if c == code), f"exit {code}")
            self.say(f"run {run!r}: {ended}"
                     + (f" ({err[-1].removeprefix('nbdurable: ')})" if code and err else ""))

    def stop(self) -> None:
        """No new resume; the ones in flight stop (their runs stay resumable)."""
        self.stopping.set()
        for proc in self.running.values():
            proc.send_signal(signal.SIGINT)
        for proc in self.running.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.reap()


def _lines(file: IO[bytes]) -> list[str]:
    """What a finished resume wrote on stderr."""
    with file:
        file.seek(0)
        return file.read().decode(errors="replace").strip().splitlines()


_ENDED = ((0, "completed"), (1, "failed (a cell raised)"), (2, "not resumed"),
          (3, "crashed (the kernel died)"), (4, "waiting again"), (-2, "stopped"), (130, "stopped"))


def worker(*, log: str | os.PathLike[str] | None = None, once: bool = False,
         max_parallel: int = 1, say: Callable[[str], None] = print) -> int:
    """Resume the log's suspended runs as they become ready; with ``once``, those ready now,
    then return. Returns how many resumes were started."""
    from nbdurable.errors import UsageError
    from nbdurable.store.logdb import open_log

    if not isinstance(max_parallel, int) or max_parallel < 1:
        raise UsageError(f"max_parallel must be a whole number >= 1, got {max_parallel!r}")
    worker = Worker(default_log(log), max_parallel, say)
    db = open_log(worker.log)
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
        if any(p.poll() is not None for p in worker.running.values()):
            return
