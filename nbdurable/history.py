"""What happened: the attempts of a run's steps, and the runs in a log, as DataFrames."""

from __future__ import annotations

from . import journal, records, schema, settings
from .logdb import open_log


def history(run: str | None = None, *, log=None, all_runs: bool = False):
    """One row per execution attempt of a step: run, step, status, attempt, started_at,
    finished_at, duration_s, reason, forced, error, pid, host.

    ``run`` defaults to the current run (``NBDURABLE_RUN``, ``configure``, the notebook);
    ``all_runs=True`` gives every run in the log. ``status`` is running, completed, failed or
    interrupted; an attempt left ``running`` by a dead kernel stays so.
    """
    db = _log(log)
    if not all_runs:
        run = run or settings.run_id(_main_namespace())
    where, params = ("", []) if all_runs else ("WHERE run = ?", [run])
    with db.lease() as con:
        events = _events(con, db, None if all_runs else run)
        sql = records.HISTORY_SQL.format(attempts=schema.ATTEMPTS_SELECT.format(events=events),
                                         where=where)
        return con.execute(sql, params).df()


def _events(con, db, run: str | None) -> str:
    """The events of the log, with dead processes' journals moved in and live ones' added."""
    if journal.recover(con, db.path):
        db.announce_write()
    return _with_pending(con, journal.live_rows(db.path, run))


def _with_pending(con, rows: list) -> str:
    """A relation of the log's events plus events still in live processes' journals."""
    if not rows:
        return "events"
    con.execute("CREATE OR REPLACE TEMP TABLE nbdurable_pending AS FROM events LIMIT 0")
    con.executemany("INSERT INTO temp.nbdurable_pending VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    return "(SELECT DISTINCT * FROM (FROM events UNION ALL FROM temp.nbdurable_pending))"


def runs(*, log=None):
    """One row per run in the log: run, notebook, created_at, last_activity, and counts of
    completed and failed attempts."""
    db = _log(log)
    with db.lease() as con:
        events = _events(con, db, None)
        sql = records.RUNS_SQL.format(runs=schema.RUNS_SELECT.format(events=events),
                                      attempts=schema.ATTEMPTS_SELECT.format(events=events))
        return con.execute(sql).df()


def _log(log):
    if log is None:
        return open_log(settings.log_path())
    return log if hasattr(log, "transaction") else open_log(settings.Path(log).absolute())


def _main_namespace():
    import sys

    main = sys.modules.get("__main__")
    return getattr(main, "__dict__", None)
