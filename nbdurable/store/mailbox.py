"""A run's mailbox in the log: ``event_pushed`` rows, and the ``wait_started`` /
``wait_completed`` rows of the waits that consume them (a completed wait lists the ids it
consumed). Every SQL statement about events and waits is here; the engine's ``events`` and
``waits`` modules decide, this module reads and writes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from nbdurable.store import records, schema

if TYPE_CHECKING:  # pragma: no cover
    from duckdb import DuckDBPyConnection as Connection

    from nbdurable.store.logdb import LogDB

_INSERT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)"


@dataclass(frozen=True)
class Pending:
    """An event in the mailbox, not consumed yet."""

    id: str
    key: str
    payload: Any
    pushed_at: datetime
    rowid: int = 0  # its place in the log (append-only: rowids never change)


@dataclass(frozen=True)
class Pushed:
    """An event as pushed (consumed or not)."""

    id: str
    key: str
    payload: Any
    pushed_at: datetime


@dataclass(frozen=True)
class Consumption:
    """Which wait consumed an event, and when."""

    step: str | None
    wait: str | None
    at: datetime


# -- pushing --------------------------------------------------------------------------------------

def push_row(run: str, body: str) -> list[Any]:
    """The ``event_pushed`` row of a push (written by the spool, or :func:`append`)."""
    return [run, None, None, schema.Kind.EVENT_PUSHED, records.now(), body, None]


def push_if_new(con: Connection, run: str, event_id: str, body: str) -> bool:
    """Insert the push unless its id is there already, if the run exists in the log (one
    statement in the common case); whether it was inserted."""
    return bool(con.execute(
        "INSERT INTO events SELECT ?, NULL, NULL, ?, ?, ?, NULL WHERE EXISTS (SELECT 1 FROM"
        " events WHERE run = ?) AND NOT EXISTS (SELECT 1 FROM events WHERE run = ? AND"
        " kind = ? AND body ->> 'id' = ?) RETURNING 1",
        [run, schema.Kind.EVENT_PUSHED, records.now(), body, run, run, schema.Kind.EVENT_PUSHED,
         event_id]).fetchall())


def pushed_body(con: Connection, run: str, event_id: str) -> dict[str, Any] | None:
    """The body of the push of ``event_id`` in ``run``, if there is one."""
    row = con.execute("SELECT body FROM events WHERE run = ? AND kind = ? AND body ->> 'id' = ?",
                      [run, schema.Kind.EVENT_PUSHED, event_id]).fetchone()
    return json.loads(row[0]) if row else None


def append(con: Connection, run: str, body: str) -> None:
    con.execute(_INSERT, push_row(run, body))


# -- reading the mailbox --------------------------------------------------------------------------

def pending(con: Connection, run: str, keys: Iterable[str], per_key: int | None = None,
            floor: int = 0) -> list[Pending]:
    """Unconsumed events of ``keys`` in ``run``, oldest first (hold the lease); at most the
    ``per_key`` oldest of each key (a wait needs only the first few of a long queue).

    ``floor``: a rowid below which every event of ``keys`` is known to be consumed (the log is
    append-only, so it stays true): only the rows from there on are read, and a long-lived
    mailbox costs what its recent rows cost, not its whole history. The consumption of an
    event is always written after the event, so its record is at or above the floor too.
    """
    keys = sorted(set(keys))
    if not keys:
        return []
    marks = ", ".join("?" * len(keys))
    limit = ("QUALIFY row_number() OVER (PARTITION BY body ->> 'key' ORDER BY rowid) <= ?"
             if per_key else "")
    rows = con.execute(
        f"SELECT rowid, ts, body FROM events WHERE rowid >= ? AND run = ? AND kind = ? AND"
        f" body ->> 'key' IN ({marks}) AND body ->> 'id' NOT IN (SELECT unnest("
        "json_extract_string(body, '$.consumed[*]')) FROM events WHERE rowid >= ? AND run = ?"
        f" AND kind = ?) {limit} ORDER BY rowid",
        [floor, run, schema.Kind.EVENT_PUSHED, *keys, floor, run, schema.Kind.WAIT_COMPLETED,
         *([per_key] if per_key else [])]).fetchall()
    found = []
    for rowid, ts, body in rows:
        body = json.loads(body)
        found.append(Pending(body["id"], body["key"], body["payload"], ts, rowid))
    return found


def id_at(con: Connection, rowid: int) -> str | None:
    """The id of the event pushed at ``rowid``, if the row there is one."""
    row = con.execute("SELECT body ->> 'id' FROM events WHERE rowid = ? AND kind = ?",
                      [rowid, schema.Kind.EVENT_PUSHED]).fetchone()
    return row[0] if row else None


def pushed(con: Connection, run: str) -> list[Pushed]:
    """Every event pushed to ``run``, oldest first."""
    rows = con.execute("SELECT ts, body FROM events WHERE run = ? AND kind = ? ORDER BY rowid",
                       [run, schema.Kind.EVENT_PUSHED]).fetchall()
    found = []
    for ts, body in rows:
        body = json.loads(body)
        found.append(Pushed(body["id"], body["key"], body["payload"], ts))
    return found


@dataclass(frozen=True)
class Listed:
    """An event as a viewer lists it: its payload as JSON text, who consumed it if anyone."""

    id: str
    key: str
    pushed_at: datetime
    payload: str
    consumed: Consumption | None


RECENT_SQL = """
WITH used AS (
    SELECT unnest(json_extract_string(body, '$.consumed[*]')) AS id, step, body ->> 'wait' AS wait,
           ts AS used_at
    FROM events WHERE run = ? AND kind = ?),
pushes AS (
    SELECT rowid AS place, ts, body ->> 'id' AS id, body ->> 'key' AS key,
           CAST(body -> 'payload' AS VARCHAR) AS payload
    FROM events WHERE run = ? AND kind = ?),
listed AS (
    SELECT p.*, u.step, u.wait, u.used_at, u.id IS NOT NULL AS used,
           count(*) OVER (PARTITION BY u.id IS NOT NULL) AS total,
           row_number() OVER (PARTITION BY u.id IS NOT NULL ORDER BY p.place DESC) AS newest
    FROM pushes p LEFT JOIN used u USING (id))
SELECT id, key, ts, payload, used, step, wait, used_at, total FROM listed WHERE newest <= ?
ORDER BY place
"""


def recent(con: Connection, run: str, limit: int) -> tuple[list[Listed], dict[str, int]]:
    """The ``limit`` most recent pending and consumed events of ``run`` (oldest first), and how
    many there are of each (``{"pending": n, "consumed": m}``): counted by the database, only
    those listed are decoded."""
    rows = con.execute(RECENT_SQL, [run, schema.Kind.WAIT_COMPLETED, run,
                                    schema.Kind.EVENT_PUSHED, limit]).fetchall()
    totals = {"pending": 0, "consumed": 0}
    listed = []
    for event_id, key, ts, payload, used, step, wait, at, total in rows:
        totals["consumed" if used else "pending"] = total
        listed.append(Listed(event_id, key, ts, payload or "null",
                             Consumption(step, wait, at) if used else None))
    return listed, totals


def consumptions(con: Connection, run: str) -> dict[str, Consumption]:
    """id -> the wait that consumed it."""
    rows = con.execute("SELECT step, ts, body FROM events WHERE run = ? AND kind = ?"
                       " ORDER BY rowid", [run, schema.Kind.WAIT_COMPLETED]).fetchall()
    consumed = {}
    for step, ts, body in rows:
        body = json.loads(body)
        for event_id in body.get("consumed", []):
            consumed[event_id] = Consumption(step, body.get("wait"), ts)
    return consumed


# -- waits ----------------------------------------------------------------------------------------

def wait_row(run: str, step: str | None, attempt: int | None, kind: str, body: str) -> list[Any]:
    """A ``wait_started`` or ``wait_completed`` row."""
    return [run, step, attempt, kind, records.now(), body, None]


def write_wait(con: Connection, row: list[Any]) -> None:
    con.execute(_INSERT, row)


def write_wait_deferred(log: LogDB, row: list[Any]) -> None:
    """Write a wait's row under a lease of its own, telling no cache (nothing they hold
    changes)."""
    log.execute(_INSERT, row, announce=False)


def recorded_wait(con: Connection, run: str, step: str, wait: str, source_hash: str,
                  since: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The latest ``wait_started`` body of this wait of the step's current source (attempts
    from ``since`` on), and its ``wait_completed`` body if it completed after it."""
    rows = con.execute(
        "SELECT kind, body FROM events WHERE run = ? AND step = ? AND kind IN (?, ?)"
        " AND body ->> 'wait' = ? AND body ->> 'source_hash' = ? AND attempt >= ?"
        " ORDER BY rowid", [run, step, schema.Kind.WAIT_STARTED, schema.Kind.WAIT_COMPLETED, wait,
                            source_hash, since]).fetchall()
    started = completed = None
    for kind, body in rows:
        if kind == schema.Kind.WAIT_STARTED:
            started, completed = json.loads(body), None
        else:
            completed = json.loads(body)
    return started, completed
