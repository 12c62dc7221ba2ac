"""A run's status, and which process executes it now.

A batch driver (``nbdurable run``, the papermill engine) records each invocation of a run:
``run_started`` (notebook, parameters, process), ``kernel_died`` for each kernel death it
survived, and ``run_finished`` (completed, failed or crashed, and why). While it runs, it and
its kernels hold the run's claim (:mod:`nbdurable.store.claims`). The OS drops those locks when their
processes die, so an invocation that never finished and whose claim is free has crashed: no
process of it executes the run any more.

A run without a driver (an interactive notebook, plain papermill) gets its status from its
steps: ``running`` while an attempt is in flight in a live process, ``crashed`` when one was
left in flight by a dead process, ``failed`` when a step's latest attempt failed, else
``completed``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdurable import processes
from nbdurable.processes import ProcessId
from nbdurable.store import claims, records, schema
from nbdurable.store.claims import Claim

if TYPE_CHECKING:  # pragma: no cover
    from duckdb import DuckDBPyConnection as Connection

RUNNING, COMPLETED, FAILED, CRASHED, WAITING = (
    schema.Status.RUNNING, schema.Status.COMPLETED, schema.Status.FAILED, schema.Status.CRASHED,
    schema.Status.WAITING)
INTERRUPTED = "Interrupted"  # the error of an invocation stopped by Ctrl-C / SIGINT


# -- the events a driver writes -----------------------------------------------------------------

def run_started(claim: Claim, arguments: dict[str, Any]) -> records.Statement:
    """``arguments``: what invoking the run again needs (notebook, output, parameters, ...)."""
    body = {"invocation": claim.invocation, **arguments, "pid": os.getpid(),
            "host": processes.HOST, "command": " ".join(sys.argv)}
    return _row(claim.run, schema.Kind.RUN_STARTED, body)


def kernel_died(claim: Claim, *, cell: int | None, restart: int) -> records.Statement:
    return _row(claim.run, schema.Kind.KERNEL_DIED, {"invocation": claim.invocation, "cell": cell,
                                                 "restart": restart})


def run_finished(claim: Claim, *, status: str, error: dict[str, Any] | None,
                 restarts: int) -> records.Statement:
    return _row(claim.run, schema.Kind.RUN_FINISHED, {"invocation": claim.invocation,
                                                  "status": status, "error": error,
                                                  "restarts": restarts})


def _row(run: str, kind: str, body: dict[str, Any]) -> records.Statement:
    return ("INSERT INTO events VALUES (?, NULL, NULL, ?, ?, ?, NULL)",
            [run, kind, records.now(), json.dumps(body, default=str)])


# -- reading a run's status ---------------------------------------------------------------------

@dataclass
class Invocation:
    """The latest driven invocation of a run, as the log tells it."""

    parameters: dict[str, Any]
    notebook: str | None
    started_at: object
    finished: dict[str, Any] | None  # the run_finished body, if any
    arguments: dict[str, Any]  # the run_started body: how it was invoked


def invocations(con: Connection, events: str = "events") -> dict[str, Invocation]:
    """run -> its latest invocation, for runs that have one."""
    rows = con.execute(
        f"SELECT s.run, s.ts, s.body, f.body FROM {events} s LEFT JOIN {events} f"
        " ON f.run = s.run AND f.kind = ? AND f.body ->> 'invocation' = s.body ->> 'invocation'"
        " WHERE s.kind = ? ORDER BY s.ts", [schema.Kind.RUN_FINISHED, schema.Kind.RUN_STARTED]).fetchall()
    found = {}
    for run, ts, started, finished in rows:
        started = json.loads(started)
        found[run] = Invocation(started.get("parameters") or {}, started.get("notebook"), ts,
                                json.loads(finished) if finished else None, started)
    return found


def driven_status(log_path: Path, run: str, invocation: Invocation) -> str:
    if invocation.finished is not None:
        return str(invocation.finished["status"])
    return RUNNING if claims.holder(log_path, run) else CRASHED


def undriven_status(latest: list[tuple[str, ProcessId | None]]) -> str:
    """From the latest attempt of each step: (status, the process that made it)."""
    in_flight = [process for status, process in latest if status == RUNNING]
    if in_flight:
        alive = any(p is not None and p.alive() for p in in_flight)
        return RUNNING if alive else CRASHED
    if any(status == FAILED for status, _ in latest):
        return FAILED
    return COMPLETED
