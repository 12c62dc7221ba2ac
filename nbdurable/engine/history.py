"""What happened: the attempts of a run's steps, and the runs in a log, as DataFrames."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from nbdurable import settings
from nbdurable.engine import suspension
from nbdurable.engine.context import LogArg, resolve_log
from nbdurable.engine.events import list_events
from nbdurable.engine.waits import describe_outcome, describe_spec
from nbdurable.errors import UsageError
from nbdurable.processes import ProcessId
from nbdurable.store import children as child_records, forks, invocations, queries, records, schema
from nbdurable.store.runs import require_run

if TYPE_CHECKING:  # pragma: no cover

    from nbdurable.store.logdb import Connection, LogDB


def history(run: str | None = None, *, log: LogArg = None,
            all_runs: bool = False) -> Any:  # a DataFrame
    """One row per execution attempt of a step: run, step, status, attempt, started_at,
    finished_at, duration_s, reason, forced, error, pid, host.

    ``run`` defaults to the current run (``NBDURABLE_RUN``, ``configure``, the notebook);
    ``all_runs=True`` gives every run in the log. ``status`` is running, completed, failed or
    interrupted; an attempt left ``running`` by a dead kernel stays so.
    """
    db = resolve_log(log)
    run = None if all_runs else run or settings.run_id(_main_namespace())
    with db.lease() as con:
        return queries.history(con, queries.with_journals(con, db, run), run)


def sql(query: str, *, log: LogArg = None) -> Any:  # a DataFrame
    """Run one read-only SQL statement (a SELECT, EXPLAIN or SUMMARIZE) on the log under the
    lease, so no one has to hold the file open with the ``duckdb`` CLI meanwhile; a DataFrame.
    The table is ``events``; the views are ``attempts`` and ``runs``. Events still in running
    kernels' journals are not in the file yet (``history()`` and ``runs()`` include them)."""
    if not isinstance(query, str) or not query.strip():
        raise UsageError("sql() needs a SELECT statement, e.g. \"SELECT kind, count(*) FROM "
                         "events GROUP BY kind\"")
    db = resolve_log(log)
    with db.lease() as con:
        return queries.read_only(con, query)


def runs(*, log: LogArg = None) -> Any:  # a DataFrame
    """One row per run in the log: run, notebook, status (running, completed, failed, crashed,
    waiting: a batch run suspended at a wait), waiting_for (a waiting run's event keys) and
    next_deadline (its earliest sleep end or timeout), steps_completed, steps_failed,
    started_at, last_activity, parameters (JSON text, from the latest batch invocation),
    attempts, forked_from and forked_from_step (a fork's parent run and the first step it
    executed anew). Most recent activity first. A DataFrame."""
    import pandas as pd

    db = resolve_log(log)
    with db.lease() as con:
        table = run_table(con, db, queries.with_journals(con, db, None))
    return pd.DataFrame.from_records(table, columns=RUNS_COLUMNS)


def last_invocation(run: str, *, log: LogArg = None) -> invocations.Invocation | None:
    """How ``run`` was last invoked by a batch driver (``nbdurable run``), and how that ended;
    None if it never was."""
    db = resolve_log(log)
    with db.lease() as con:
        return invocations.invocations(con, queries.with_journals(con, db, run)).get(run)


CHILDREN_COLUMNS = ["step", "key", "status", "attempts", "parent_attempt", "duration_s",
                    "finished_at", "error"]


def children(run: str | None = None, *, log: LogArg = None) -> Any:  # a DataFrame
    """One row per child of ``nbdurable.map`` / ``spawn`` in a run (default: the current one):
    step, key, status (completed, failed, interrupted) and error of its latest attempt,
    attempts (how many times it ran), parent_attempt (the attempt of the step that ran it last:
    an earlier one than the step's latest means the result was reused), duration_s,
    finished_at. A DataFrame."""
    import pandas as pd

    db = resolve_log(log)
    run = run or settings.run_id(_main_namespace())
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in child_records.load_run(db, run):
        row = latest.setdefault((r.step, r.key), {"attempts": 0})
        row.update(step=r.step, key=r.key, status=str(r.status), parent_attempt=r.attempt,
                   duration_s=r.duration_s, finished_at=r.finished_at,
                   error=(r.error or {}).get("evalue") if r.error else None)
        row["attempts"] += 1
    rows = sorted(latest.values(), key=lambda row: (row["step"], _natural(row["key"])))
    return pd.DataFrame.from_records(rows, columns=CHILDREN_COLUMNS)


def _natural(key: str) -> list[Any]:
    """``map#0[2]`` before ``map#0[10]``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", key)]


def run_table(con: Connection, db: LogDB, events: str) -> list[dict[str, Any]]:
    """The rows of :func:`runs`, from an events relation (holding the lease)."""
    driven = invocations.invocations(con, events)
    parents = forks.parents(con, events)
    table = []
    for row in queries.run_rows(con, events):
        invocation = driven.get(row.run)
        parent = parents.get(row.run) or {}
        status = _status(db, row.run, invocation, row.latest)
        waiting = (suspension.waiting_run(con, events, row.run, records.now())
                   if status == schema.Status.WAITING else None)
        table.append({"run": row.run,
                      "notebook": (invocation and invocation.notebook) or row.notebook,
                      "status": status,
                      "waiting_for": ", ".join(waiting.keys()) or "a deadline"
                      if waiting is not None else None,
                      "next_deadline": waiting.next_deadline() if waiting is not None else None,
                      "steps_completed": row.completed, "steps_failed": row.failed,
                      "started_at": row.created_at, "last_activity": row.last_activity,
                      "attempts": row.attempts,
                      "parameters": json.dumps(invocation.parameters, default=str)
                      if invocation is not None else None,
                      "forked_from": parent.get("run"), "forked_from_step": parent.get("step")})
    return table


def _status(db: LogDB, run: str, invocation: invocations.Invocation | None,
            latest: list[list[str | None]] | None) -> str:
    """From the latest batch invocation if there is one, else from each step's latest attempt
    (``latest``: [status, pid, host, process start time] per step). A run suspended by its
    latest invocation, whose suspended step has gone on since (opened interactively with the
    same run id), is as its steps say."""
    if invocation is not None:
        status = invocations.driven_status(db.path, run, invocation)
        if status != schema.Status.WAITING or any(
                line[0] == schema.Status.SUSPENDED for line in latest or []):
            return status
    return invocations.undriven_status([(status or "", _process(pid, host, started))
                                     for status, pid, host, started in latest or []])


def _process(pid: str | None, host: str | None, started: str | None) -> ProcessId | None:
    if not pid:
        return None
    return ProcessId(int(pid), host or "", int(started) if started else None)


RUNS_COLUMNS = ["run", "notebook", "status", "waiting_for", "next_deadline", "steps_completed",
                "steps_failed", "started_at", "last_activity", "attempts", "parameters",
                "forked_from", "forked_from_step"]


def _main_namespace() -> dict[str, Any] | None:
    import sys

    main = sys.modules.get("__main__")
    return getattr(main, "__dict__", None)


@dataclass
class RunLog:
    """What happened in one run, step by step (see :func:`log`)."""

    run: str
    status: str
    notebook: str | None
    parameters: dict[str, Any] | None
    steps: list[dict[str, Any]] = field(default_factory=list[Any])
    events: list[dict[str, Any]] = field(default_factory=list[Any])

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "status": self.status, "notebook": self.notebook,
                "parameters": self.parameters, "steps": self.steps, "events": self.events}

    def text(self) -> str:
        lines = [f"run {self.run}: {self.status}" + (f" ({self.notebook})" if self.notebook
                                                     else "")]
        if self.parameters:
            lines.append("parameters: " + json.dumps(self.parameters, default=str))
        for s in self.steps:
            took = f"{s['duration_s']:.2f} s" if s["duration_s"] is not None else "-"
            lines.append(f"  {s['step']}: {s['status']}, {s['attempts']} attempt(s), {took}, "
                         f"last {s['last']}" + (f" ({s['replays']} replays)" if s["replays"]
                                                else "")
                         + (f" — {s['error']}" if s["error"] else ""))
            for w in s["waits"]:
                lines.append(f"    {w['wait']} {w['waiting_for']}: {w['outcome']}")
            for g in s.get("children", []):
                lines.append(f"    {g['group']}: {g['children']} children, {g['completed']} "
                             f"completed ({g['reused']} reused), {g['failed']} failed"
                             + (f", {g['interrupted']} interrupted" if g["interrupted"] else "")
                             + f"; {g['attempts']} attempts")
        for e in self.events:
            by = f" by {e['consumed_by']}" if e["consumed_by"] else ""
            at = f"{e['pushed_at']:%Y-%m-%d %H:%M:%S}"
            lines.append(f"  event {e['key']} {e['payload']} pushed {at}: {e['status']}{by}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()


def log(run: str | None = None, *, log: LogArg = None) -> RunLog:
    """Each step of ``run`` (default: the current run): status (``reset`` when ``nbdurable
    reset`` voided it), attempts, duration of the latest attempt, whether it last executed or
    replayed, its waits and their outcome; and the run's events, pending and consumed."""

    db = resolve_log(log)
    run = settings.check_run_id(run) if run else settings.run_id(_main_namespace())
    with db.lease() as con:
        require_run(con, db, run)
        events = queries.with_journals(con, db, run)
        attempts = queries.attempt_lines(con, events, run)
        replays = queries.replays(con, run)
        waits = queries.wait_rows(con, run)
        resets = records.run_resets(con, run)
        summary = next(row for row in run_table(con, db, events) if row["run"] == run)
    pushed = list_events(run, log=db).to_dict("records")
    steps = _steps(attempts, replays, _waits(waits), resets)
    _add_children(steps, child_records.load_run(db, run))
    return RunLog(run, summary["status"], summary["notebook"],
                  json.loads(summary["parameters"]) if summary["parameters"] else None,
                  steps, pushed)


def _add_children(steps: list[dict[str, Any]], kids: list[child_records.ChildRecord]) -> None:
    """Per step, per map / spawn group: children, completed, failed, interrupted, reused
    (completed by an earlier attempt of the step than its latest), attempts."""
    latest: dict[tuple[str, str], child_records.ChildRecord] = {}
    attempts: dict[tuple[str, str], int] = {}
    for r in kids:
        latest[r.step, r.key] = r
        attempts[r.step, r.key] = attempts.get((r.step, r.key), 0) + 1
    last_attempt = {s["step"]: s.get("last_attempt", 0) for s in steps}
    for s in steps:
        groups: dict[str, dict[str, Any]] = {}
        for (step, key), r in latest.items():
            if step != s["step"]:
                continue
            g = groups.setdefault(key.split("[", 1)[0], {
                "group": key.split("[", 1)[0], "children": 0, "completed": 0, "failed": 0,
                "interrupted": 0, "reused": 0, "attempts": 0})
            g["children"] += 1
            g[str(r.status)] = g.get(str(r.status), 0) + 1
            g["attempts"] += attempts[step, key]
            g["reused"] += r.status == schema.Status.COMPLETED and \
                r.attempt < last_attempt.get(step, 0)
        s["children"] = list(groups.values())


def _steps(attempts: list[queries.AttemptLine], replays: dict[str, tuple[int, datetime]],
           waits: dict[str, list[dict[str, Any]]],
           resets: dict[str, int]) -> list[dict[str, Any]]:
    steps: dict[str, dict[str, Any]] = {}
    for step, number, status, started, duration, ename, evalue in attempts:
        s = steps.setdefault(step, {"step": step, "attempts": 0, "waits": waits.get(step, [])})
        if number <= resets.get(step, 0):
            status = "reset"  # voided by `nbdurable reset`: executes when next reached
        s.update(attempts=s["attempts"] + 1, status=status, duration_s=duration,
                 started_at=started, error=f"{ename}: {evalue}" if ename else None,
                 last_attempt=number)
    for s in steps.values():
        n, replayed_at = replays.get(s["step"], (0, None))
        s["replays"] = n
        s["last"] = "replayed" if replayed_at and replayed_at > s.pop("started_at") else \
            "executed"
    return list(steps.values())


def _waits(rows: list[queries.WaitRow]) -> dict[str, list[dict[str, Any]]]:
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for step, attempt, kind, body in rows:
        key = (step, attempt, body.get("wait"))
        w = found.setdefault(key, {"wait": body.get("wait"), "attempt": attempt,
                                   "waiting_for": describe_spec(body["spec"]),
                                   "status": "waiting", "outcome": "waiting"})
        if kind == schema.Kind.WAIT_COMPLETED:
            w["status"] = "completed"
            w["outcome"] = describe_outcome(body["spec"], body["outcome"])
    by_step: dict[str, list[dict[str, Any]]] = {}
    for (step, _, _), w in found.items():
        by_step.setdefault(step, []).append(w)
    return by_step
