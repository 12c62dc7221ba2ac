"""Which runs a log holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nbdurable.errors import UnknownRunError
from nbdurable.store import journal, schema

if TYPE_CHECKING:  # pragma: no cover
    from duckdb import DuckDBPyConnection as Connection

    from nbdurable.store.logdb import LogDB


def run_exists(con: Connection, db: LogDB, run: str) -> bool:
    """Whether the log, or a live process's journal, holds an event of ``run``."""
    if con.execute("SELECT 1 FROM events WHERE run = ? LIMIT 1", [run]).fetchone():
        return True
    return any(r[0] == run for r in journal.live_rows(db.path, run))


def notebook_of(con: Connection, events: str, run: str) -> str | None:
    """The notebook ``run`` was first created from, if it said."""
    row = con.execute(f"SELECT arg_min(body ->> 'notebook', ts) FROM {events} WHERE run = ? AND"
                      " kind = ?", [run, schema.Kind.RUN_CREATED]).fetchone()
    return row[0] if row else None


def require_run(con: Connection, db: LogDB, run: str) -> None:
    """Raise UnknownRunError naming the runs there are, unless ``run`` is in the log."""
    if run_exists(con, db, run):
        return
    known = [r for (r,) in con.execute("SELECT DISTINCT run FROM events ORDER BY run LIMIT 11")
             .fetchall()]
    listed = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "") if known else "none"
    raise UnknownRunError(f"run {run!r} is not in the log {db.path} (runs there: {listed}); "
                          "check the run id, or `nbdurable runs` to list them", run=run,
                          known=known[:10])
