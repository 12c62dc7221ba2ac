"""What happened: the attempts of a run's steps, and the runs in a log, as DataFrames."""

from __future__ import annotations

from . import journal, records, settings
from .logdb import open_log


def history(run: str | None = None, *, log=None, all_runs: bool = False):
    """One row per execution attempt of a step: run, step, status, attempt, started_at,
    finished_at, duration_s, reason, forced, error, pid, host.

    ``run`` defaults to the current run (``NBDURABLE_RUN``, ``configure``, the notebook);
    ``all_runs=True`` gives every run in the log. ``status`` is running, completed, failed or
    interrupted; an attempt left ``running`` by a dead kernel stays so.
    """
    db = _log(log)
    if all_runs:
        run = None
        sql, params = records.HISTORY_SQL.format(where=""), []
    else:
        run = run or settings.run_id(_main_namespace())
        sql, params = records.HISTORY_SQL.format(where="WHERE run = ?"), [run]
    with db.lease() as con:
        if journal.recover(con, db.path):
            db.announce_write()
        frame = con.execute(sql, params).df()
    return _with_in_flight(frame, journal.live(db.path, run, include_self=True))


def _with_in_flight(frame, entries: list[list]):
    """Add the attempts other live processes are running now (from their journals)."""
    import json

    import pandas as pd

    rows = []
    for run, step, attempt, _kind, ts, body in entries:
        body = json.loads(body)
        rows.append({"run": run, "step": step, "status": "running", "attempt": attempt,
                     "started_at": pd.Timestamp(ts), "reason": body.get("reason"),
                     "forced": body.get("forced"), "pid": body.get("pid"),
                     "host": body.get("host")})
    if not rows:
        return frame
    extra = pd.DataFrame(rows).reindex(columns=frame.columns)
    merged = pd.concat([frame, extra], ignore_index=True) if len(frame) else extra
    return merged.sort_values(["started_at", "run", "step", "attempt"], ignore_index=True)


def runs(*, log=None):
    """One row per run in the log: run, notebook, created_at, last_activity, and counts of
    completed and failed attempts."""
    with _log(log).lease() as con:
        return con.execute(records.RUNS_SQL).df()


def _log(log):
    if log is None:
        return open_log(settings.log_path())
    return log if hasattr(log, "transaction") else open_log(settings.Path(log).absolute())


def _main_namespace():
    import sys

    main = sys.modules.get("__main__")
    return getattr(main, "__dict__", None)
