"""Every event nbdurable writes to the log and how it reads them back.

Writers build a :data:`Statement` (one INSERT into ``events``) that the caller runs with
``log.execute``: one statement is one atomic, cheap commit. Readers take a connection from
``log.lease()`` or ``log.transaction()``.

Inline payloads: an event's ``data`` column is the concatenation of its small payloads; its JSON
``body`` says, for each, ``[hash, size, offset, mac]`` (offset ``null``: the payload is in the blob
file named ``hash``), and ``mac``, the HMAC of those bytes (:mod:`nbdurable.store.signing`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from nbdurable import processes
from nbdurable.processes import HOST, ProcessId
from nbdurable.store import schema

if TYPE_CHECKING:  # pragma: no cover
    from duckdb import DuckDBPyConnection as Connection

Statement = tuple[str, list[Any]]


@dataclass(frozen=True)
class StoredRef:
    """How a row refers to its bytes: ``data`` inline, or ``None`` with a blob named ``hash``;
    ``mac``: their HMAC-SHA256 under the user's secret (:mod:`nbdurable.store.signing`)."""

    hash: str
    size: int
    data: bytes | None
    mac: str | None = None
_INSERT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)"


def now() -> datetime:
    """The current time as a naive UTC timestamp (the log's convention), strictly increasing
    in this process: a journal tells its rows apart by (run, step, attempt, kind, ts), and a
    burst of children finishes several rows within one microsecond."""
    at = datetime.now(UTC).replace(tzinfo=None)
    with _clock_lock:
        if at <= _clock[0]:
            at = _clock[0] + timedelta(microseconds=1)
        _clock[0] = at
    return at


_clock = [datetime.min]
_clock_lock = threading.Lock()


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


class Payloads:
    """Packs several StoredRefs into one ``data`` column and JSON references to them."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, ref: StoredRef | None) -> list[Any] | None:
        if ref is None:
            return None
        if ref.data is None:
            return [ref.hash, ref.size, None, ref.mac]
        self.parts.append(ref.data)
        offset, self.size = self.size, self.size + len(ref.data)
        return [ref.hash, ref.size, offset, ref.mac]

    def data(self) -> bytes | None:
        return b"".join(self.parts) if self.parts else None


def stored_ref(spec: list[Any] | None, data: bytes | None) -> StoredRef | None:
    """A payload reference of a body (``[hash, size, offset, mac]``) with its inline bytes."""
    if spec is None:
        return None
    hash_, size, offset = spec[:3]
    mac = spec[3] if len(spec) > 3 else None  # none in logs of nbdurable 0.1
    # a row whose data was cut or lost gives short bytes, which then fail their signature
    inline = None if offset is None else bytes((data or b"")[offset: offset + size])
    return StoredRef(hash_, size, inline, mac)


# -- runs ---------------------------------------------------------------------------------------

def run_created(run: str, notebook: str | None) -> list[Any]:
    """A run_created event row: a session of this process started using the run."""
    body = dumps({"notebook": notebook, "pid": os.getpid(), "host": HOST})
    return [run, None, None, schema.Kind.RUN_CREATED, now(), body, None]


# -- attempts -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variable:
    """What a completed attempt recorded for one name: kind value, module, deleted or
    unstorable (``detail``: the module name, or why it could not be stored)."""

    name: str
    kind: str
    ref: StoredRef | None = None
    detail: str | None = None


@dataclass
class Attempt:
    """One execution attempt of a step, with its outcome when it has one."""

    run: str
    step: str
    attempt: int
    status: str
    source_hash: str
    inputs: dict[str, str]
    started_at: datetime
    finished_at: datetime | None = None
    duration_s: float | None = None
    unstorable: dict[str, str] = field(default_factory=dict)
    variables: list[Variable] | None = None
    outputs: StoredRef | None = None
    forced: bool = False  # --force or a reset: earlier calls and waits are not reused
    cell_id: str | None = None  # the notebook cell that executed it, when the front end said


def process_fields() -> dict[str, Any]:
    """Who writes an attempt or a ``once``: pid, host and start time (so that a reused PID
    does not pass for the process that died)."""
    me = processes.me()
    return {"pid": me.pid, "host": me.host, "started": me.started}


def attempt_started(attempt: Attempt, *, source: str, forced: bool,
                    reason: str | None) -> Statement:
    body = {"source_hash": attempt.source_hash, "source": source, "inputs": attempt.inputs,
            "forced": forced, "reason": reason, **process_fields()}
    if attempt.cell_id:
        body["cell_id"] = attempt.cell_id
    return _INSERT, [attempt.run, attempt.step, attempt.attempt, schema.Kind.ATTEMPT_STARTED,
                     attempt.started_at, dumps(body), None]


def combine_rows(rows: list[list[Any]]) -> Statement:
    """Several event rows as one INSERT (one commit, all or nothing)."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(rows))
    return f"INSERT INTO events VALUES {values}", [p for row in rows for p in row]


EVENT_COLUMNS = ("run", "step", "attempt", "kind", "ts", "body", "data")
_COLUMNAR_MIN = 32  # rows from which a columnar insert beats one VALUES statement
_COLUMNAR = "nbdurable_rows"


def insert_rows(con: Connection, rows: Sequence[Sequence[Any]], *, into: str = "events",
                seq: bool = False) -> None:
    """Event rows into table ``into`` in one statement (all or nothing); ``seq``: with a last
    column numbering them. From ``_COLUMNAR_MIN`` rows on, as columns DuckDB scans (1,000 rows:
    5 ms of CPU, against 136 ms for a statement of 7,000 parameters, which DuckDB binds one by
    one; a stream of children's results would otherwise hold the GIL the kernel needs)."""
    if not rows:
        return
    width = len(EVENT_COLUMNS) + seq
    numbered = [(*row, n) for n, row in enumerate(rows)] if seq else rows
    if len(rows) < _COLUMNAR_MIN:
        values = ", ".join([f"({', '.join('?' * width)})"] * len(rows))
        con.execute(f"INSERT INTO {into} VALUES {values}", [p for r in numbered for p in r])
        return
    con.register(_COLUMNAR, _columns(numbered, width))
    try:
        con.execute(f"INSERT INTO {into} SELECT * FROM {_COLUMNAR}")
    finally:
        con.unregister(_COLUMNAR)


def _columns(rows: Sequence[Sequence[Any]], width: int) -> dict[str, Any]:
    import numpy as np  # pandas' dependency; imported on the first large insert only

    columns = {}
    for i in range(width):
        column = np.empty(len(rows), dtype=object)
        column[:] = [row[i] for row in rows]
        columns[f"c{i}"] = column
    return columns


def attempt_finished(attempt: Attempt, *, error: dict[str, Any] | None) -> Statement:
    """The outcome, with the variables the attempt produced: one row, so atomic."""
    payloads = Payloads()
    variables = [[v.name, v.kind, v.detail, payloads.add(v.ref)]
                 for v in attempt.variables or []]
    body = {"status": attempt.status, "duration_s": attempt.duration_s,
            "variables": variables, "outputs": payloads.add(attempt.outputs),
            "unstorable": attempt.unstorable or {}, "error": error}
    return _INSERT, [attempt.run, attempt.step, attempt.attempt, schema.Kind.ATTEMPT_FINISHED,
                     attempt.finished_at, dumps(body), payloads.data()]


def run_attempts(con: Connection, run: str, pending: Sequence[list[Any]] = ()) -> list[Attempt]:
    """Every attempt of a run in order, completed ones with their variables and outputs, from
    the log plus ``pending`` event rows (journals) that may not be in it yet."""
    rows = con.execute(
        "SELECT step, attempt, kind, ts, body, data FROM events WHERE run = ? AND kind IN (?, ?)"
        " ORDER BY rowid", [run, schema.Kind.ATTEMPT_STARTED, schema.Kind.ATTEMPT_FINISHED]).fetchall()
    rows += [tuple(r[1:]) for r in pending if r[0] == run
             and r[3] in (schema.Kind.ATTEMPT_STARTED, schema.Kind.ATTEMPT_FINISHED)]
    return assemble(run, rows)


def run_resets(con: Connection, run: str) -> dict[str, int]:
    """step -> the highest attempt number a ``nbdurable reset`` voided."""
    return dict(con.execute("SELECT step, max(attempt) FROM events WHERE run = ? AND kind = ?"
                            " GROUP BY step", [run, schema.Kind.STEP_RESET]).fetchall())


def stored_refs(body: dict[str, Any], data: bytes | None) -> list[StoredRef]:
    """Every stored value an event's body refers to (variables, outputs, a call's or once's
    result)."""
    specs = [v[3] for v in body.get("variables") or [] if isinstance(v, list) and len(v) > 3]
    specs += [body.get("outputs"), body.get("result")]
    refs = [stored_ref(spec, data) for spec in specs if isinstance(spec, list) and spec]
    return [ref for ref in refs if ref is not None]


def value_trusted(run: str, digest: str, mac: str) -> Statement:
    """``nbdurable trust``: the HMAC of a stored value's bytes under this user's secret."""
    return _INSERT, [run, None, None, schema.Kind.VALUE_TRUSTED, now(),
                     dumps({"hash": digest, "mac": mac, "pid": os.getpid()}), None]


def step_reset(run: str, step: str, attempt: int) -> list[Any]:
    """An event row voiding the checkpoints of ``step`` up to ``attempt``."""
    return [run, step, attempt, schema.Kind.STEP_RESET, now(), dumps({"pid": os.getpid()}), None]


def assemble(run: str, rows: Iterable[Sequence[Any]]) -> list[Attempt]:
    """Attempts from (step, attempt, kind, ts, body, data) event rows (duplicates ignored)."""
    attempts: dict[tuple[str, int], Attempt] = {}
    seen: set[tuple[str, int, str]] = set()
    for step, number, kind, ts, body, data in rows:
        if (step, number, kind) in seen or kind not in (schema.Kind.ATTEMPT_STARTED,
                                                        schema.Kind.ATTEMPT_FINISHED):
            continue
        seen.add((step, number, kind))
        body = json.loads(body)
        if kind == schema.Kind.ATTEMPT_STARTED:
            attempts[step, number] = Attempt(run, step, number, schema.Status.RUNNING, body["source_hash"],
                                             body["inputs"], ts, forced=bool(body.get("forced")),
                                             cell_id=body.get("cell_id"))
        elif (step, number) in attempts:
            _finish(attempts[step, number], ts, body, data)
    return list(attempts.values())


def _finish(attempt: Attempt, at: datetime, body: dict[str, Any], data: bytes | None) -> None:
    attempt.status, attempt.finished_at = body["status"], at
    attempt.duration_s, attempt.unstorable = body["duration_s"], body["unstorable"]
    if attempt.status == schema.Status.COMPLETED:
        attempt.variables = [Variable(name, kind, stored_ref(ref, data), detail)
                             for name, kind, detail, ref in body["variables"]]
        attempt.outputs = stored_ref(body["outputs"], data)


def replayed(run: str, step: str, attempt: int) -> Statement:
    """Bookkeeping: a completed attempt was replayed instead of executed."""
    return _INSERT, [run, step, attempt, schema.Kind.REPLAYED, now(),
                     dumps({"pid": os.getpid()}), None]


# -- @step calls --------------------------------------------------------------------------------

def calls_of(con: Connection, run: str, step: str,
             since: int = 1) -> dict[str, tuple[str, StoredRef | None]]:
    """call key -> (fingerprint, result) of the latest completed call, for one step, made by
    attempts numbered ``since`` or later."""
    rows = con.execute("SELECT body, data FROM events WHERE run = ? AND step = ? AND kind = ?"
                       " AND attempt >= ? ORDER BY rowid",
                       [run, step, schema.Kind.CALL_COMPLETED, since]).fetchall()
    calls = {}
    for body, data in rows:
        body = json.loads(body)
        calls[body["key"]] = (body["fingerprint"], stored_ref(body["result"], data))
    return calls


def call_completed(*, run: str, step: str, attempt: int, key: str, fingerprint: str,
                   result: StoredRef, started: datetime) -> Statement:
    payloads = Payloads()
    body = {"key": key, "fingerprint": fingerprint, "result": payloads.add(result),
            "started_at": started.isoformat()}
    return _INSERT, [run, step, attempt, schema.Kind.CALL_COMPLETED, now(), dumps(body),
                     payloads.data()]


# -- once ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OnceState:
    """The latest event of a ``once`` key: status running, completed or failed."""

    status: str
    result: StoredRef | None
    at: datetime
    pid: int | None
    host: str | None
    started: int | None = None  # the process's start time: a reused PID is another process

    @property
    def process(self) -> ProcessId | None:
        return ProcessId(self.pid, self.host or "", self.started) if self.pid else None


def once_state(con: Connection, run: str, key: str) -> OnceState | None:
    row = con.execute(
        "SELECT kind, ts, body, data FROM events WHERE run = ? AND kind IN (?, ?, ?)"
        " AND body ->> 'key' = ? ORDER BY rowid DESC LIMIT 1",
        [run, schema.Kind.ONCE_STARTED, schema.Kind.ONCE_FINISHED, schema.Kind.ONCE_RESET, key]).fetchone()
    if row is None or row[0] == schema.Kind.ONCE_RESET:
        return None
    kind, at, body, data = row
    body = json.loads(body)
    status = schema.Status.RUNNING if kind == schema.Kind.ONCE_STARTED else body["status"]
    return OnceState(status, stored_ref(body.get("result"), data), at, body.get("pid"),
                     body.get("host"), body.get("started"))


def once_event(kind: str, run: str, key: str, *, step: str | None = None, status: str = "",
               result: StoredRef | None = None, error: dict[str, Any] | None = None) -> Statement:
    payloads = Payloads()
    body = {"key": key, "status": status, "result": payloads.add(result), "error": error,
            **process_fields()}
    return _INSERT, [run, step, None, kind, now(), dumps(body), payloads.data()]


# -- reading for people -------------------------------------------------------------------------

