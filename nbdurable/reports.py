"""What happened: the attempts of a run's steps, and the runs in a log, as DataFrames."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from . import journal, records, runstate, schema, settings
from .errors import UnknownRunError, UsageError
from .logdb import open_log


def history(run: str | None = None, *, log=None, all_runs: bool = False):
    """One row per execution attempt of a step: run, step, status, attempt, started_at,
    finished_at, duration_s, reason, forced, error, pid, host.

    ``run`` defaults to the current run (``NBDURABLE_RUN``, ``configure``, the notebook);
    ``all_runs=True`` gives every run in the log. ``status`` is running, completed, failed or
    interrupted; an attempt left ``running`` by a dead kernel stays so.
    """
    db = resolve_log(log)
    if not all_runs:
        run = run or settings.run_id(_main_namespace())
    where, params = ("", []) if all_runs else ("WHERE run = ?", [run])
    with db.lease() as con:
        events = events_relation(con, db, None if all_runs else run)
        sql = records.HISTORY_SQL.format(attempts=schema.ATTEMPTS_SELECT.format(events=events),
                                         where=where)
        return con.execute(sql, params).df()


def sql(query: str, *, log=None):
    """Run one read-only SQL statement (a SELECT, EXPLAIN or SUMMARIZE) on the log under the
    lease, so no one has to hold the file open with the ``duckdb`` CLI meanwhile; a DataFrame.
    The table is ``events``; the views are ``attempts`` and ``runs``. Events still in running
    kernels' journals are not in the file yet (``history()`` and ``runs()`` include them)."""
    import duckdb

    if not isinstance(query, str) or not query.strip():
        raise UsageError("sql() needs a SELECT statement, e.g. \"SELECT kind, count(*) FROM "
                         "events GROUP BY kind\"")
    db = resolve_log(log)
    with db.lease() as con:
        try:
            statements = con.extract_statements(query)
        except duckdb.Error as exc:
            raise UsageError(f"the query does not parse: {_first_line(exc)}") from None
        kinds = duckdb.StatementType
        if len(statements) != 1 or statements[0].type not in (kinds.SELECT, kinds.EXPLAIN):
            raise UsageError("give one SELECT (or EXPLAIN, SUMMARIZE) statement: the log is only "
                             "ever changed by nbdurable")
        con.execute("BEGIN TRANSACTION")
        try:
            return con.execute(query).df()
        except duckdb.Error as exc:
            raise UsageError(f"the query failed: {_first_line(exc)}") from None
        finally:
            con.execute("ROLLBACK")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def events_relation(con, db, run: str | None) -> str:
    """The events of the log, with dead processes' journals moved in and live ones' added."""
    wrote, pending = journal.gather(con, db.path, run)
    if wrote:
        db.announce_write()
    return _with_pending(con, pending)


def _with_pending(con, rows: list) -> str:
    """A relation of the log's events plus events still in live processes' journals."""
    if not rows:
        return "events"
    con.execute("CREATE OR REPLACE TEMP TABLE nbdurable_pending AS FROM events LIMIT 0")
    con.executemany("INSERT INTO temp.nbdurable_pending VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    return "(SELECT DISTINCT * FROM (FROM events UNION ALL FROM temp.nbdurable_pending))"


def runs(*, log=None):
    """One row per run in the log: run, notebook, status (running, completed, failed, crashed),
    steps_completed, steps_failed, started_at, last_activity, parameters (JSON text, from the
    latest batch invocation), attempts. Most recent activity first. A DataFrame."""
    import pandas as pd

    db = resolve_log(log)
    with db.lease() as con:
        table = _run_table(con, db, events_relation(con, db, None))
    return pd.DataFrame.from_records(table, columns=RUNS_COLUMNS)


def _run_table(con, db, events: str) -> list[dict]:
    """The rows of :func:`runs`, from an events relation (holding the lease)."""
    rows = con.execute(records.RUNS_SQL.format(
        runs=schema.RUNS_SELECT.format(events=events),
        attempts=schema.ATTEMPTS_SELECT.format(events=events))).fetchall()
    driven = runstate.invocations(con, events)
    table = []
    for run, notebook, started, last, done, failed, attempts, latest in rows:
        invocation = driven.get(run)
        table.append({"run": run, "notebook": (invocation and invocation.notebook) or notebook,
                      "status": _status(db, run, invocation, latest),
                      "steps_completed": done, "steps_failed": failed, "started_at": started,
                      "last_activity": last, "attempts": attempts,
                      "parameters": json.dumps(invocation.parameters, default=str)
                      if invocation is not None else None})
    return table


def _status(db, run: str, invocation, latest) -> str:
    """From the latest batch invocation if there is one, else from each step's latest attempt
    (``latest``: [status, pid, host] per step)."""
    if invocation is not None:
        return runstate.driven_status(db.path, run, invocation)
    return runstate.undriven_status([(status, int(pid) if pid else None, host)
                                     for status, pid, host in latest or []])


RUNS_COLUMNS = ["run", "notebook", "status", "steps_completed", "steps_failed", "started_at",
                "last_activity", "attempts", "parameters"]


def require_run(con, db, run: str) -> None:
    """Raise UnknownRunError naming the runs there are, unless ``run`` is in the log."""
    if con.execute("SELECT 1 FROM events WHERE run = ? LIMIT 1", [run]).fetchone():
        return
    if any(r[0] == run for r in journal.live_rows(db.path, run)):
        return
    known = [r for (r,) in con.execute("SELECT DISTINCT run FROM events ORDER BY run LIMIT 11")
             .fetchall()]
    listed = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "") if known else "none"
    raise UnknownRunError(f"run {run!r} is not in the log {db.path} (runs there: {listed}); "
                          "check the run id, or `nbdurable runs` to list them")


def resolve_log(log):
    if log is None:
        return open_log(settings.log_path())
    return log if hasattr(log, "transaction") else open_log(settings.Path(log).absolute())


def _main_namespace():
    import sys

    main = sys.modules.get("__main__")
    return getattr(main, "__dict__", None)


@dataclass
class RunLog:
    """What happened in one run, step by step (see :func:`log`)."""

    run: str
    status: str
    notebook: str | None
    parameters: dict | None
    steps: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
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
        for e in self.events:
            by = f" by {e['consumed_by']}" if e["consumed_by"] else ""
            at = f"{e['pushed_at']:%Y-%m-%d %H:%M:%S}"
            lines.append(f"  event {e['key']} {e['payload']} pushed {at}: {e['status']}{by}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()


def log(run: str | None = None, *, log=None) -> RunLog:
    """Each step of ``run`` (default: the current run): status (``reset`` when ``nbdurable
    reset`` voided it), attempts, duration of the latest attempt, whether it last executed or
    replayed, its waits and their outcome; and the run's events, pending and consumed."""
    from .events import list_events

    db = resolve_log(log)
    run = settings.check_run_id(run) if run else settings.run_id(_main_namespace())
    with db.lease() as con:
        require_run(con, db, run)
        events = events_relation(con, db, run)
        attempts = con.execute(
            f"SELECT step, attempt, status, started_at, duration_s, error, error_message"
            f" FROM ({schema.ATTEMPTS_SELECT.format(events=events)}) WHERE run = ?"
            f" ORDER BY started_at, attempt", [run]).fetchall()
        replays = dict((step, (n, ts)) for step, n, ts in con.execute(
            "SELECT step, count(*), max(ts) FROM events WHERE run = ? AND kind = ?"
            " GROUP BY step", [run, schema.REPLAYED]).fetchall())
        waits = con.execute("SELECT step, attempt, kind, body FROM events WHERE run = ? AND"
                            " kind IN (?, ?) ORDER BY rowid",
                            [run, schema.WAIT_STARTED, schema.WAIT_COMPLETED]).fetchall()
        resets = records.run_resets(con, run)
        summary = next(row for row in _run_table(con, db, events) if row["run"] == run)
    pushed = list_events(run, log=db).to_dict("records")
    return RunLog(run, summary["status"], summary["notebook"],
                  json.loads(summary["parameters"]) if summary["parameters"] else None,
                  _steps(attempts, replays, _waits(waits), resets), pushed)


def _steps(attempts, replays: dict, waits: dict, resets: dict) -> list[dict]:
    steps: dict[str, dict] = {}
    for step, number, status, started, duration, ename, evalue in attempts:
        s = steps.setdefault(step, {"step": step, "attempts": 0, "waits": waits.get(step, [])})
        if number <= resets.get(step, 0):
            status = "reset"  # voided by `nbdurable reset`: executes when next reached
        s.update(attempts=s["attempts"] + 1, status=status, duration_s=duration,
                 started_at=started, error=f"{ename}: {evalue}" if ename else None)
    for s in steps.values():
        n, replayed_at = replays.get(s["step"], (0, None))
        s["replays"] = n
        s["last"] = "replayed" if replayed_at and replayed_at > s.pop("started_at") else \
            "executed"
    return list(steps.values())


def _waits(rows) -> dict[str, list[dict]]:
    from .waits import describe_outcome, describe_spec

    found: dict[tuple, dict] = {}
    for step, attempt, kind, body in rows:
        body = json.loads(body)
        key = (step, attempt, body.get("wait"))
        w = found.setdefault(key, {"wait": body.get("wait"), "attempt": attempt,
                                   "waiting_for": describe_spec(body["spec"]),
                                   "status": "waiting", "outcome": "waiting"})
        if kind == schema.WAIT_COMPLETED:
            w["status"] = "completed"
            w["outcome"] = describe_outcome(body["spec"], body["outcome"])
    by_step: dict[str, list[dict]] = {}
    for (step, _, _), w in found.items():
        by_step.setdefault(step, []).append(w)
    return by_step
