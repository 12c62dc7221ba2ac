"""The read queries behind ``history``, ``runs``, ``log``, ``sql``, ``reset``, ``trust`` and ``gc``.

They read an *events relation*: the ``events`` table, plus the rows still in live processes'
journals when there are any (:func:`with_journals`), so that what a running kernel did shows
before it reaches the file. Rows come back typed.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from nbdurable.errors import UsageError, first_line
from nbdurable.store import journal, records, schema

if TYPE_CHECKING:  # pragma: no cover
    from duckdb import DuckDBPyConnection as Connection

    from nbdurable.store.logdb import LogDB

HISTORY_SQL = """
SELECT run, step, status, attempt, started_at, finished_at, duration_s, reason, forced, error,
       pid, host
FROM ({attempts}) {where} ORDER BY started_at, run, step, attempt
"""

RUNS_SQL = """
WITH a AS ({attempts}),
latest AS (SELECT * FROM a QUALIFY row_number() OVER (PARTITION BY run, step
                                                      ORDER BY attempt DESC) = 1),
steps AS (SELECT run, count(*) FILTER (WHERE status = 'completed') AS completed,
                 count(*) FILTER (WHERE status = 'failed') AS failed,
                 list([status, CAST(pid AS VARCHAR), host, CAST(process_started AS VARCHAR)])
                     AS latest
          FROM latest GROUP BY run),
counts AS (SELECT run, count(*) AS attempts FROM a GROUP BY run)
SELECT r.run, r.notebook, r.created_at, r.last_activity, coalesce(s.completed, 0),
       coalesce(s.failed, 0), coalesce(c.attempts, 0), s.latest
FROM ({runs}) r LEFT JOIN steps s USING (run) LEFT JOIN counts c USING (run)
ORDER BY r.last_activity DESC
"""


class RunRow(NamedTuple):
    """One run as ``runs()`` sums it up; ``latest``: [status, pid, host, process start] of each
    step's latest attempt (text)."""

    run: str
    notebook: str | None
    created_at: datetime
    last_activity: datetime
    completed: int
    failed: int
    attempts: int
    latest: list[list[str | None]] | None


class AttemptLine(NamedTuple):
    """One attempt of a step, as ``log()`` shows it."""

    step: str
    attempt: int
    status: str
    started_at: datetime
    duration_s: float | None
    error: str | None
    error_message: str | None


class WaitRow(NamedTuple):
    """A ``wait_started`` or ``wait_completed`` row, body decoded."""

    step: str | None
    attempt: int | None
    kind: str
    body: dict[str, Any]


class ValueRow(NamedTuple):
    """A row that refers to stored values (its body as JSON text: the caller decides what a
    damaged one means)."""

    run: str
    body: str
    data: bytes | None


# -- the events relation --------------------------------------------------------------------------

def with_journals(con: Connection, db: LogDB, run: str | None) -> str:
    """The events of the log, with dead processes' journals moved in and live ones' added
    (hold the lease): a relation to read from."""
    wrote, pending = journal.gather(con, db.path, run)
    if wrote:
        db.announce_write()
    if not pending:
        return "events"
    con.execute("CREATE OR REPLACE TEMP TABLE nbdurable_pending AS FROM events LIMIT 0")
    records.insert_rows(con, pending, into="temp.nbdurable_pending")
    return "(SELECT DISTINCT * FROM (FROM events UNION ALL FROM temp.nbdurable_pending))"


def _attempts(events: str) -> str:
    return schema.ATTEMPTS_SELECT.format(events=events)


# -- history, runs, log ---------------------------------------------------------------------------

def history(con: Connection, events: str, run: str | None) -> Any:  # a DataFrame
    """The attempts of ``run`` (every run when None), as a DataFrame."""
    where, params = ("", []) if run is None else ("WHERE run = ?", [run])
    return con.execute(HISTORY_SQL.format(attempts=_attempts(events), where=where), params).df()


def run_rows(con: Connection, events: str) -> list[RunRow]:
    """Every run, most recent activity first."""
    rows = con.execute(RUNS_SQL.format(runs=schema.RUNS_SELECT.format(events=events),
                                       attempts=_attempts(events))).fetchall()
    return [RunRow(*row) for row in rows]


def attempt_lines(con: Connection, events: str, run: str) -> list[AttemptLine]:
    rows = con.execute(
        f"SELECT step, attempt, status, started_at, duration_s, error, error_message"
        f" FROM ({_attempts(events)}) WHERE run = ? ORDER BY started_at, attempt",
        [run]).fetchall()
    return [AttemptLine(*row) for row in rows]


class StepLine(NamedTuple):
    """A step's latest attempt, as the viewer shows it; ``outcome``: its finished body (JSON
    text) or None while running."""

    step: str
    attempt: int
    attempts: int
    status: str
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    reason: str | None
    forced: bool | None
    error: str | None
    error_message: str | None
    pid: int | None
    host: str | None
    process_started: int | None
    outcome: str | None


STEP_LINES_SQL = """
SELECT s.step, s.attempt, count(*) OVER (PARTITION BY s.step) AS attempts,
       coalesce(f.body ->> 'status', 'running'), s.ts, f.ts,
       CAST(f.body ->> 'duration_s' AS DOUBLE), s.body ->> 'reason',
       CAST(s.body ->> 'forced' AS BOOLEAN), f.body ->> '$.error.ename',
       f.body ->> '$.error.evalue', CAST(s.body ->> 'pid' AS INTEGER), s.body ->> 'host',
       CAST(s.body ->> 'started' AS BIGINT), f.body
FROM {events} s
LEFT JOIN {events} f ON f.kind = 'attempt_finished' AND f.run = s.run AND f.step = s.step
    AND f.attempt = s.attempt
WHERE s.kind = 'attempt_started' AND s.run = ?
QUALIFY row_number() OVER (PARTITION BY s.step ORDER BY s.attempt DESC) = 1
ORDER BY min(s.ts) OVER (PARTITION BY s.step), s.step
"""


def step_lines(con: Connection, events: str, run: str) -> list[StepLine]:
    """Each step's latest attempt, in the order the steps first ran."""
    rows = con.execute(STEP_LINES_SQL.format(events=events), [run]).fetchall()
    return [StepLine(*row) for row in rows]


def replays(con: Connection, run: str) -> dict[str, tuple[int, datetime]]:
    """step -> (how many times it was replayed, when last)."""
    rows = con.execute("SELECT step, count(*), max(ts) FROM events WHERE run = ? AND kind = ?"
                       " GROUP BY step", [run, schema.Kind.REPLAYED]).fetchall()
    return {step: (n, ts) for step, n, ts in rows}


def wait_rows(con: Connection, run: str) -> list[WaitRow]:
    rows = con.execute("SELECT step, attempt, kind, body FROM events WHERE run = ? AND"
                       " kind IN (?, ?) ORDER BY rowid",
                       [run, schema.Kind.WAIT_STARTED, schema.Kind.WAIT_COMPLETED]).fetchall()
    return [WaitRow(step, attempt, kind, json.loads(body)) for step, attempt, kind, body in rows]


# -- sql() ----------------------------------------------------------------------------------------

def read_only(con: Connection, query: str) -> Any:  # a DataFrame
    """Run one SELECT / EXPLAIN / SUMMARIZE statement inside a transaction that is rolled back,
    as a DataFrame; :class:`UsageError` for anything else or a query that fails."""
    import duckdb

    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise UsageError(f"the query does not parse: {first_line(exc)}") from None
    kinds = duckdb.StatementType
    if len(statements) != 1 or statements[0].type not in (kinds.SELECT, kinds.EXPLAIN):
        raise UsageError("give one SELECT (or EXPLAIN, SUMMARIZE) statement: the log is only "
                         "ever changed by nbdurable")
    con.execute("BEGIN TRANSACTION")
    try:
        return con.execute(query).df()
    except duckdb.Error as exc:
        raise UsageError(f"the query failed: {first_line(exc)}") from None
    finally:
        con.execute("ROLLBACK")


# -- reset, trust, gc -----------------------------------------------------------------------------

def step_order(con: Connection, events: str, run: str) -> list[tuple[str, int]]:
    """(step, its latest attempt) for each step of ``run``, in the order they first ran."""
    rows = con.execute(
        f"SELECT step, max(attempt) FROM {events} WHERE run = ? AND kind = ? GROUP BY step"
        " ORDER BY min(ts), step", [run, schema.Kind.ATTEMPT_STARTED]).fetchall()
    return [(step, last) for step, last in rows]


def once_keys(con: Connection, run: str, steps: set[str]) -> list[str]:
    """The ``once`` keys that the steps ``steps`` of ``run`` started."""
    rows = con.execute("SELECT DISTINCT step, body FROM events WHERE run = ? AND kind = ?",
                       [run, schema.Kind.ONCE_STARTED]).fetchall()
    return sorted({json.loads(body)["key"] for step, body in rows if step in steps})


def value_rows(con: Connection, kinds: tuple[str, ...], run: str | None = None) -> list[ValueRow]:
    """The rows of ``kinds`` (of ``run``, or every run) in log order."""
    marks = ", ".join("?" * len(kinds))
    where = f"kind IN ({marks})" + (" AND run = ?" if run else "")
    rows = con.execute(f"SELECT run, body, data FROM events WHERE {where} ORDER BY rowid",
                       [*kinds, *([run] if run else [])]).fetchall()
    return [ValueRow(*row) for row in rows]


