"""A run's status, and which process executes it now.

A batch driver (``nbdurable run``, the papermill engine) records each invocation of a run:
``run_started`` (notebook, parameters, process), ``kernel_died`` for each kernel death it
survived, and ``run_finished`` (completed, failed or crashed, and why). While it runs it holds
the run's *claim*: an exclusive ``flock`` on ``<log>.runs/<hash of the run>.lock``, whose
content names the holder. A second invocation of the same run fails at once with
:class:`RunBusyError` naming that process. The OS drops the flock when the driver dies, so an
invocation that never finished and whose claim is free has crashed.

A run without a driver (an interactive notebook, plain papermill) gets its status from its
steps: ``running`` while an attempt is in flight in a live process, ``crashed`` when one was
left in flight by a dead process, ``failed`` when a step's latest attempt failed, else
``completed``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import xxhash

from . import records, schema
from .errors import RunBusyError

RUNNING, COMPLETED, FAILED, CRASHED = "running", "completed", "failed", "crashed"
#: How long a claim waits out shared locks that `holder()` takes for microseconds.
CLAIM_PATIENCE = 0.5


def claim_path(log_path: Path, run: str) -> Path:
    return Path(f"{log_path}.runs") / f"{xxhash.xxh3_64_hexdigest(run.encode())}.lock"


class Claim:
    """This process executes ``run`` (see the module doc); a context manager."""

    def __init__(self, log_path: Path, run: str, command: str | None = None):
        self.run = run
        self.invocation = uuid.uuid4().hex
        self.path = claim_path(log_path, run)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + CLAIM_PATIENCE
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:  # maybe a status reader's brief shared lock
                    time.sleep(0.01)
                    continue
                os.close(self._fd)
                raise RunBusyError(_busy_message(run, _read_holder(self.path))) from None
        holder = {"run": run, "pid": os.getpid(), "host": records.HOST,
                  "command": command or " ".join(sys.argv), "since": str(records.now())[:19],
                  "invocation": self.invocation}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(holder).encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # drops the flock
            self._fd = -1

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(log_path: Path, run: str) -> dict | None:
    """Who holds the run's claim now (its recorded details), or None."""
    path = claim_path(log_path, run)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(path) or {"run": run}
    else:
        return None
    finally:
        os.close(fd)  # also drops our shared lock, if we got it


def describe_holder(log_path: Path, run: str) -> str:
    who = holder(log_path, run) or {}
    return (f"process {who.get('pid', '?')} on {who.get('host', '?')}, "
            f"{who.get('command', '?')}")


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _busy_message(run: str, who: dict) -> str:
    if not who.get("pid"):
        return (f"run {run!r} is being executed by another process; wait for it to end, or "
                "give another --run-id")
    return (f"run {run!r} is being executed by process {who['pid']} on {who.get('host', '?')} "
            f"({who.get('command', '?')}, since {who.get('since', '?')} UTC); wait for it to "
            "end or stop that process, or give another --run-id")


# -- the events a driver writes -----------------------------------------------------------------

def run_started(claim: Claim, *, notebook: str, output: str | None, parameters: dict,
                max_restarts: int) -> records.Statement:
    body = {"invocation": claim.invocation, "notebook": notebook, "output": output,
            "parameters": parameters, "max_restarts": max_restarts, "pid": os.getpid(),
            "host": records.HOST, "command": " ".join(sys.argv)}
    return _row(claim.run, schema.RUN_STARTED, body)


def kernel_died(claim: Claim, *, cell: int | None, restart: int) -> records.Statement:
    return _row(claim.run, schema.KERNEL_DIED, {"invocation": claim.invocation, "cell": cell,
                                                 "restart": restart})


def run_finished(claim: Claim, *, status: str, error: dict | None,
                 restarts: int) -> records.Statement:
    return _row(claim.run, schema.RUN_FINISHED, {"invocation": claim.invocation,
                                                  "status": status, "error": error,
                                                  "restarts": restarts})


def _row(run: str, kind: str, body: dict) -> records.Statement:
    return ("INSERT INTO events VALUES (?, NULL, NULL, ?, ?, ?, NULL)",
            [run, kind, records.now(), json.dumps(body, default=str)])


# -- reading a run's status ---------------------------------------------------------------------

@dataclass
class Invocation:
    """The latest driven invocation of a run, as the log tells it."""

    parameters: dict
    notebook: str | None
    started_at: object
    finished: dict | None  # the run_finished body, if any


def invocations(con, events: str = "events") -> dict[str, Invocation]:
    """run -> its latest invocation, for runs that have one."""
    rows = con.execute(
        f"SELECT s.run, s.ts, s.body, f.body FROM {events} s LEFT JOIN {events} f"
        " ON f.run = s.run AND f.kind = ? AND f.body ->> 'invocation' = s.body ->> 'invocation'"
        " WHERE s.kind = ? ORDER BY s.ts", [schema.RUN_FINISHED, schema.RUN_STARTED]).fetchall()
    found = {}
    for run, ts, started, finished in rows:
        started = json.loads(started)
        found[run] = Invocation(started.get("parameters") or {}, started.get("notebook"), ts,
                                json.loads(finished) if finished else None)
    return found


def driven_status(log_path: Path, run: str, invocation: Invocation) -> str:
    if invocation.finished is not None:
        return invocation.finished["status"]
    return RUNNING if holder(log_path, run) else CRASHED


def undriven_status(latest: list[tuple[str, int | None, str | None]]) -> str:
    """From the latest attempt of each step: (status, pid, host)."""
    in_flight = [(pid, host) for status, pid, host in latest if status == RUNNING]
    if in_flight:
        return RUNNING if any(process_alive(pid, host) for pid, host in in_flight) else CRASHED
    if any(status == FAILED for status, _, _ in latest):
        return FAILED
    return COMPLETED


def process_alive(pid: int | None, host: str | None = records.HOST) -> bool:
    """Whether process ``pid`` of ``host`` runs (a process of another machine: assumed so)."""
    if host != records.HOST:
        return True
    if not pid:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
