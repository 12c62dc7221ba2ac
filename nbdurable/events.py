"""Events: a durable mailbox per run, fed from anywhere, consumed by waits.

An event is an ``event_pushed`` row (key, JSON payload, id). Pushed before anyone waits for it,
it is kept. A wait consumes the oldest unconsumed event of its key; the consumption is part of
the ``wait_completed`` row that records the wait's outcome, so an event is consumed at most once
and never lost between a wait and its record. Pushing with an ``id`` is idempotent: a retried
push of the same id adds nothing.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import context, files, records, schema, spool
from .errors import LogError, UsageError
from .reports import require_run

MAX_KEY = 200


@dataclass(frozen=True)
class Pending:
    """An event in the mailbox, not consumed yet."""

    id: str
    key: str
    payload: Any
    pushed_at: datetime
    rowid: int = 0  # its place in the log (append-only: rowids never change)


def check_key(key: object, what: str = "an event key") -> str:
    if (not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY
            or not _encodable(key)):
        raise UsageError(f"{what} is a non-empty string of at most {MAX_KEY} characters "
                         f"(valid Unicode), got {key!r}")
    return key


def check_payload(payload: Any) -> Any:
    """The payload as plain JSON data; a clear error when it is not JSON."""
    try:
        text = json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise UsageError(f"the event payload must be JSON (dicts, lists, strings, numbers, "
                         f"true/false/null): {str(exc)[:200]}") from None
    if not _encodable(json.loads(text)):
        raise UsageError("the event payload has text that is not valid Unicode (a lone "
                         "surrogate such as '\\ud800'); send valid text")
    return json.loads(text)


def _encodable(value: Any) -> bool:
    """Whether the value's strings are valid Unicode (DuckDB's JSON rejects lone surrogates)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_same_event(event_id: str, key: str, payload: Any, earlier: dict) -> None:
    """A retried push is the same event; another event under a used id is a mistake."""
    if (earlier["key"], earlier["payload"]) != (key, payload):
        raise UsageError(f"event id {event_id!r} was already pushed, with key "
                         f"{earlier['key']!r} and another payload or key; an id names one "
                         "event: give a new id (or none)")


def parse_payload(text: str) -> Any:
    """A payload typed by a person (CLI, widget field): JSON text; empty means null."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"the payload is not valid JSON ({exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}); quote strings: '\"yes\"'") from None


def push_event(key: str, payload: Any = None, *, run: str | None = None, log=None,
               id: str | None = None) -> str:
    """Put an event in a run's mailbox; return its id. Works from any process.

    ``run``/``log`` default to the current ones (``NBDURABLE_RUN`` / ``NBDURABLE_LOG``, the
    notebook). ``id`` makes a retried push idempotent. Once a push found the run in the log,
    later pushes without ``id`` take no lease: they are spooled beside the log and moved into it
    by the next process that opens it (see :mod:`nbdurable.spool`).
    """
    key = check_key(key)
    payload = check_payload(payload)
    event_id = check_key(str(id), "an event id") if id is not None else uuid.uuid4().hex
    log, run = context.locate(run, log)
    body = json.dumps({"id": event_id, "key": key, "payload": payload, "pid": os.getpid(),
                       "host": records.HOST})
    if id is None and spool.known(log.path, run):
        _spool(log, run, body)  # no lease: a waiting kernel is never kept from its mailbox
    else:
        _insert(log, run, event_id, key, payload, body)
    return event_id


def _spool(log, run: str, body: str) -> None:
    try:
        spool.write(log.path, [run, None, None, schema.EVENT_PUSHED, records.now(), body, None])
    except OSError as exc:
        raise LogError(f"the event was not pushed: {files.describe(exc, spool.folder(log.path))}"
                       ) from None
    log.announce_write()


def _insert(log, run: str, event_id: str, key: str, payload: Any, body: str) -> None:
    """Push under the lease: checks that the run exists and that a reused id is the same event."""
    with log.transaction() as con:
        # one statement in the common case: insert unless the id is there, if the run exists
        inserted = con.execute(
            "INSERT INTO events SELECT ?, NULL, NULL, ?, ?, ?, NULL WHERE EXISTS (SELECT 1 FROM"
            " events WHERE run = ?) AND NOT EXISTS (SELECT 1 FROM events WHERE run = ? AND"
            " kind = ? AND body ->> 'id' = ?) RETURNING 1",
            [run, schema.EVENT_PUSHED, records.now(), body, run, run, schema.EVENT_PUSHED,
             event_id]).fetchall()
        if not inserted:
            require_run(con, log, run)  # raises for an unknown run ...
            earlier = con.execute("SELECT body FROM events WHERE run = ? AND kind = ? AND"
                                  " body ->> 'id' = ?", [run, schema.EVENT_PUSHED,
                                                        event_id]).fetchone()
            if earlier is None:  # ... a run known only from a live journal: insert anyway
                con.execute("INSERT INTO events VALUES (?, NULL, NULL, ?, ?, ?, NULL)",
                            [run, schema.EVENT_PUSHED, records.now(), body])
            else:
                _check_same_event(event_id, key, payload, json.loads(earlier[0]))
    spool.mark_known(log.path, run)  # the run exists: later pushes need no lease
    if context.current() is None:
        log.release()  # a push is one-off: let the waiting process in at once


def mailbox(con, run: str, keys, per_key: int | None = None, floor: int = 0) -> list[Pending]:
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
        [floor, run, schema.EVENT_PUSHED, *keys, floor, run, schema.WAIT_COMPLETED,
         *([per_key] if per_key else [])]).fetchall()
    found = []
    for rowid, ts, body in rows:
        body = json.loads(body)
        found.append(Pending(body["id"], body["key"], body["payload"], ts, rowid))
    return found


def id_at(con, rowid: int) -> str | None:
    """The id of the event pushed at ``rowid``, if the row there is one."""
    row = con.execute("SELECT body ->> 'id' FROM events WHERE rowid = ? AND kind = ?",
                      [rowid, schema.EVENT_PUSHED]).fetchone()
    return row[0] if row else None


def consumed_ids(con, run: str) -> dict[str, dict]:
    """id -> the wait that consumed it (step, wait key, when)."""
    rows = con.execute("SELECT step, ts, body FROM events WHERE run = ? AND kind = ?"
                       " ORDER BY rowid", [run, schema.WAIT_COMPLETED]).fetchall()
    consumed = {}
    for step, ts, body in rows:
        body = json.loads(body)
        for event_id in body.get("consumed", []):
            consumed[event_id] = {"step": step, "wait": body.get("wait"), "consumed_at": ts}
    return consumed


def list_events(run: str | None = None, *, log=None):
    """The run's events, oldest first: id, key, payload (JSON text), pushed_at, status
    (pending or consumed), consumed_by (step and wait), consumed_at. A DataFrame."""
    import pandas as pd

    log, run = context.locate(run, log)
    with log.lease() as con:
        require_run(con, log, run)
        rows = con.execute("SELECT ts, body FROM events WHERE run = ? AND kind = ?"
                           " ORDER BY rowid", [run, schema.EVENT_PUSHED]).fetchall()
        consumed = consumed_ids(con, run)
    records_ = []
    for ts, body in rows:
        body = json.loads(body)
        used = consumed.get(body["id"])
        records_.append({
            "id": body["id"], "key": body["key"], "payload": json.dumps(body["payload"]),
            "pushed_at": ts, "status": "consumed" if used else "pending",
            "consumed_by": f"{used['step'] or '(no step)'} {used['wait'] or ''}".strip()
            if used else None,
            "consumed_at": used["consumed_at"] if used else None})
    columns = ["id", "key", "payload", "pushed_at", "status", "consumed_by", "consumed_at"]
    return pd.DataFrame.from_records(records_, columns=columns)
