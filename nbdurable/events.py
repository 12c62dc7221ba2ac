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

from . import context, records, schema
from .errors import UsageError
from .reports import require_run

MAX_KEY = 200


@dataclass(frozen=True)
class Pending:
    """An event in the mailbox, not consumed yet."""

    id: str
    key: str
    payload: Any
    pushed_at: datetime


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
    notebook). ``id`` makes a retried push idempotent.
    """
    key = check_key(key)
    payload = check_payload(payload)
    event_id = check_key(str(id), "an event id") if id is not None else uuid.uuid4().hex
    log, run = context.locate(run, log)
    body = json.dumps({"id": event_id, "key": key, "payload": payload, "pid": os.getpid(),
                       "host": records.HOST})
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
    if context.current() is None:
        log.release()  # a push is one-off: let the waiting process in at once
    return event_id


def mailbox(con, run: str, keys) -> list[Pending]:
    """Unconsumed events of ``keys`` in ``run``, oldest first (hold the lease)."""
    keys = sorted(set(keys))
    if not keys:
        return []
    marks = ", ".join("?" * len(keys))
    rows = con.execute(
        f"SELECT ts, body FROM events WHERE run = ? AND kind = ? AND body ->> 'key' IN ({marks})"
        " AND body ->> 'id' NOT IN (SELECT unnest(json_extract_string(body, '$.consumed[*]'))"
        " FROM events WHERE run = ? AND kind = ?) ORDER BY rowid",
        [run, schema.EVENT_PUSHED, *keys, run, schema.WAIT_COMPLETED]).fetchall()
    found = []
    for ts, body in rows:
        body = json.loads(body)
        found.append(Pending(body["id"], body["key"], body["payload"], ts))
    return found


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
