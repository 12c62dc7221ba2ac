"""The children of durable steps (``nbdurable.map`` / ``spawn``): their rows and their reads.

Each attempt of a child ends in one ``child_finished`` event, written by the kernel (never by a
worker) to its journal as the result arrives: ``step`` and ``attempt`` are the parent's,
``body`` holds the child's key, the fingerprint of its function and arguments, its status, which
try it was, how long it ran, its error and a reference to its result (inline in ``data`` or a
blob file, like a ``@step`` call's result).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from nbdurable.store import journal, schema
from nbdurable.store.records import Payloads, StoredRef, dumps, now, process_fields, stored_ref
from nbdurable.store.schema import Kind, Status

if TYPE_CHECKING:  # pragma: no cover
    from duckdb import DuckDBPyConnection as Connection

    from nbdurable.store.logdb import LogDB

#: An event row as in the ``events`` table: run, step, attempt, kind, ts, body, data.
Row = list[Any]


@dataclass(frozen=True)
class ChildRecord:
    """One finished attempt of a child, as the log holds it."""

    run: str
    step: str
    attempt: int  # the parent step's attempt
    key: str
    fingerprint: str
    status: Status
    tries: int  # 1 for the first attempt of this child, 2 for its first retry...
    finished_at: datetime
    duration_s: float | None = None
    result: StoredRef | None = None
    error: dict[str, Any] | None = None
    unstorable: str | None = None  # why the result could not be stored (the child runs again)

    @property
    def reusable(self) -> bool:
        """Completed with a stored result: a later execution returns it instead of running."""
        return self.status == Status.COMPLETED and self.result is not None


def child_finished(record: ChildRecord) -> Row:
    """The event row of one finished child attempt."""
    payloads = Payloads()
    body = {"key": record.key, "fingerprint": record.fingerprint, "status": record.status,
            "tries": record.tries, "duration_s": record.duration_s,
            "result": payloads.add(record.result), "error": record.error,
            "unstorable": record.unstorable, **process_fields()}
    return [record.run, record.step, record.attempt, Kind.CHILD_FINISHED, record.finished_at,
            dumps(body), payloads.data()]


class Recorded(NamedTuple):
    """What a step's children recorded: key -> their attempts (oldest first), and key ->
    their own ``@step`` calls (call key -> fingerprint and result)."""

    children: dict[str, list[ChildRecord]]
    calls: dict[str, dict[str, tuple[str, StoredRef | None]]]


def load(db: LogDB, run: str, step: str, since: int) -> Recorded:
    """:func:`recorded` and :func:`calls_of_children`, from the log and the journals beside it
    (taking the lease)."""
    with db.lease() as con:
        pending = _pending(con, db, run)
        return Recorded(recorded(con, run, step, since, pending),
                        calls_of_children(con, run, step, since, pending))


def call_step(step: str, child: str) -> str:
    """The ``step`` column of a child's own ``@step`` calls: ``<parent step>/<child key>``."""
    return f"{step}/{child}"


def calls_of_children(con: Connection, run: str, step: str, since: int,
                      pending: Sequence[Row] = ()) -> dict[str, dict[str, tuple[str, Any]]]:
    """child key -> call key -> (fingerprint, result) of the children's own ``@step`` calls
    (latest first wins), parent attempts ``since`` on."""
    prefix = call_step(step, "")
    rows = con.execute("SELECT step, body, data FROM events WHERE run = ? AND kind = ? AND"
                       " attempt >= ? AND starts_with(step, ?) ORDER BY rowid",
                       [run, Kind.CALL_COMPLETED, since, prefix]).fetchall()
    rows += [(r[1], r[5], r[6]) for r in pending if r[0] == run and r[3] == Kind.CALL_COMPLETED
             and isinstance(r[1], str) and r[1].startswith(prefix) and (r[2] or 0) >= since]
    found: dict[str, dict[str, tuple[str, Any]]] = {}
    for call_step_, body, data in rows:
        fields = json.loads(body)
        found.setdefault(call_step_[len(prefix):], {})[fields["key"]] = (
            fields["fingerprint"], stored_ref(fields["result"], data))
    return found


def load_run(db: LogDB, run: str) -> list[ChildRecord]:
    """:func:`of_run`, from the log and the journals beside it (taking the lease)."""
    with db.lease() as con:
        return of_run(con, run, _pending(con, db, run))


def _pending(con: Connection, db: LogDB, run: str) -> list[Row]:
    wrote, pending = journal.gather(con, db.path, run)
    if wrote:
        db.announce_write()
    return pending


def run_result(run: str, result: StoredRef) -> Row:
    """The row of ``nbdurable.set_result`` in a child run: the latest one is its result."""
    payloads = Payloads()
    body = {"result": payloads.add(result), **process_fields()}
    return [run, None, None, Kind.RUN_RESULT, now(), dumps(body), payloads.data()]


def result_of(db: LogDB, run: str) -> tuple[bool, StoredRef | None]:
    """(whether the run set a result, the stored result) — the latest ``run_result``."""
    with db.lease() as con:
        rows = con.execute("SELECT body, data FROM events WHERE run = ? AND kind = ? ORDER BY"
                           " rowid DESC LIMIT 1", [run, Kind.RUN_RESULT]).fetchall()
        rows += [(r[5], r[6]) for r in _pending(con, db, run) if r[3] == Kind.RUN_RESULT][-1:]
    if not rows:
        return False, None
    body, data = rows[-1]
    return True, stored_ref(json.loads(body).get("result"), data)


_SELECT = ("SELECT run, step, attempt, ts, body, data FROM events WHERE run = ? AND kind = ?")


def recorded(con: Connection, run: str, step: str, since: int,
             pending: Sequence[Row] = ()) -> dict[str, list[ChildRecord]]:
    """key -> every recorded attempt of that child of ``step`` (parent attempts ``since`` on),
    oldest first, from the log plus ``pending`` journal rows."""
    rows = con.execute(_SELECT + " AND step = ? AND attempt >= ? ORDER BY rowid",
                       [run, Kind.CHILD_FINISHED, step, since]).fetchall()
    rows += [(r[0], r[1], r[2], r[4], r[5], r[6]) for r in pending
             if r[0] == run and r[1] == step and r[3] == Kind.CHILD_FINISHED and r[2] >= since]
    found: dict[str, list[ChildRecord]] = {}
    for record in _records(rows):
        found.setdefault(record.key, []).append(record)
    return found


def of_run(con: Connection, run: str, pending: Sequence[Row] = ()) -> list[ChildRecord]:
    """Every recorded child attempt of a run, in the order they were written."""
    rows = con.execute(_SELECT + " ORDER BY rowid", [run, Kind.CHILD_FINISHED]).fetchall()
    rows += [(r[0], r[1], r[2], r[4], r[5], r[6]) for r in pending
             if r[0] == run and r[3] == Kind.CHILD_FINISHED]
    return list(_records(rows))


def _records(rows: Sequence[Sequence[Any]]) -> list[ChildRecord]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for run, step, attempt, ts, body, data in rows:
        if (step, attempt, ts) in seen:  # a journal row already moved into the log
            continue
        seen.add((step, attempt, ts))
        out.append(_record(run, step, attempt, ts, json.loads(body), data))
    return out


def _record(run: str, step: str, attempt: int, ts: datetime, body: dict[str, Any],
            data: bytes | None) -> ChildRecord:
    return ChildRecord(run, step, attempt, body["key"], body["fingerprint"],
                       schema.Status(body["status"]), int(body.get("tries") or 1), ts,
                       body.get("duration_s"), stored_ref(body.get("result"), data),
                       body.get("error"), body.get("unstorable"))
