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
from typing import TYPE_CHECKING, Any

from nbdurable import processes
from nbdurable.engine import context
from nbdurable.engine.context import LogArg
from nbdurable.errors import EventIdConflictError, LogError, UsageError
from nbdurable.store import files, mailbox, spool
from nbdurable.store.runs import require_run

if TYPE_CHECKING:  # pragma: no cover
    from nbdurable.store.logdb import LogDB

MAX_KEY = 200


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


def _check_same_event(event_id: str, key: str, payload: Any, earlier: dict[str, Any]) -> None:
    """A retried push is the same event; another event under a used id is a mistake."""
    if (earlier["key"], earlier["payload"]) != (key, payload):
        raise EventIdConflictError(f"event id {event_id!r} was already pushed, with key "
                         f"{earlier['key']!r} and another payload or key; an id names one "
                         "event: give a new id (or none)")


def parse_payload(text: str) -> Any:
    """A payload typed by a person (CLI, widget field): JSON text; empty means null."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"the payload is not valid JSON ({exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}); quote strings: '\"yes\"'") from None


def push_event(key: str, payload: Any = None, *, run: str | None = None, log: LogArg = None,
               id: str | None = None) -> str:
    """Put an event in a run's mailbox; return its id. Works from any process.

    ``run``/``log`` default to the current ones (``NBDURABLE_RUN`` / ``NBDURABLE_LOG``, the
    notebook). ``id`` makes a retried push idempotent. Once a push found the run in the log,
    later pushes without ``id`` take no lease: they are spooled beside the log and moved into it
    by the next process that opens it (see :mod:`nbdurable.store.spool`).
    """
    key = check_key(key)
    payload = check_payload(payload)
    event_id = check_key(str(id), "an event id") if id is not None else uuid.uuid4().hex
    db, run = context.locate(run, log)
    body = json.dumps({"id": event_id, "key": key, "payload": payload, "pid": os.getpid(),
                       "host": processes.HOST})
    if id is None and spool.known(db.path, run):
        _spool(db, run, body)  # no lease: a waiting kernel is never kept from its mailbox
    else:
        _insert(db, run, event_id, key, payload, body)
    return event_id


def _spool(log: LogDB, run: str, body: str) -> None:
    try:
        spool.write(log.path, mailbox.push_row(run, body))
    except OSError as exc:
        raise LogError(f"the event was not pushed: {files.describe(exc, spool.folder(log.path))}"
                       ) from None
    log.announce_write()


def _insert(log: LogDB, run: str, event_id: str, key: str, payload: Any, body: str) -> None:
    """Push under the lease: checks that the run exists and that a reused id is the same event."""
    with log.transaction() as con:
        if not mailbox.push_if_new(con, run, event_id, body):
            require_run(con, log, run)  # raises for an unknown run ...
            earlier = mailbox.pushed_body(con, run, event_id)
            if earlier is None:  # ... a run known only from a live journal: insert anyway
                mailbox.append(con, run, body)
            else:
                _check_same_event(event_id, key, payload, earlier)
    spool.mark_known(log.path, run)  # the run exists: later pushes need no lease
    if context.current() is None:
        log.release()  # a push is one-off: let the waiting process in at once


def list_events(run: str | None = None, *, log: LogArg = None) -> Any:  # a DataFrame
    """The run's events, oldest first: id, key, payload (JSON text), pushed_at, status
    (pending or consumed), consumed_by (step and wait), consumed_at. A DataFrame."""
    import pandas as pd

    db, run = context.locate(run, log)
    with db.lease() as con:
        require_run(con, db, run)
        events = mailbox.pushed(con, run)
        consumed = mailbox.consumptions(con, run)
    records_ = []
    for event in events:
        used = consumed.get(event.id)
        records_.append({
            "id": event.id, "key": event.key, "payload": json.dumps(event.payload),
            "pushed_at": event.pushed_at, "status": "consumed" if used else "pending",
            "consumed_by": f"{used.step or '(no step)'} {used.wait or ''}".strip()
            if used else None,
            "consumed_at": used.at if used else None})
    columns = ["id", "key", "payload", "pushed_at", "status", "consumed_by", "consumed_at"]
    return pd.DataFrame.from_records(records_, columns=columns)
