"""The versioned schema of the log database: one append-only table of events, and views.

Every fact is an event row, never updated: a run was created, an attempt of a step started or
finished, a step was replayed, a ``@step`` call or a ``once`` key completed. ``body`` is a JSON
document with the event's fields; ``data`` holds small binary payloads inline (encoded values,
recorded outputs) at the offsets ``body`` gives. Payloads larger than
``nbdurable.engine.values.INLINE_LIMIT`` live in content-addressed files beside the log instead.

A narrow table keeps each write to one cheap statement (about 1 ms on a held connection),
and an append-only log never rewrites what it recorded. The views give people readable tables.
Timestamps are UTC.
"""

from __future__ import annotations

from enum import StrEnum

FORMAT = "nbdurable-log"
SCHEMA_VERSION = 1


class Kind(StrEnum):
    """The kind of an event row; stored as this text (``attempt_started``, ...)."""

    RUN_CREATED = "run_created"
    ATTEMPT_STARTED = "attempt_started"
    ATTEMPT_FINISHED = "attempt_finished"
    REPLAYED = "replayed"
    CALL_COMPLETED = "call_completed"
    ONCE_STARTED = "once_started"
    ONCE_FINISHED = "once_finished"
    ONCE_RESET = "once_reset"
    EVENT_PUSHED = "event_pushed"
    WAIT_STARTED = "wait_started"
    WAIT_COMPLETED = "wait_completed"
    RUN_STARTED = "run_started"  # a batch invocation of the run began (nbdurable run, papermill)
    KERNEL_DIED = "kernel_died"
    RUN_FINISHED = "run_finished"
    STEP_RESET = "step_reset"  # nbdurable reset: the step's checkpoints up to `attempt` are void
    VALUE_TRUSTED = "value_trusted"  # nbdurable trust: a stored value's HMAC under this user's key
    CHILD_FINISHED = "child_finished"  # one attempt of a child of map/spawn ended (any outcome)
    RUN_RESULT = "run_result"  # nbdurable.set_result: what a child run returns to its parent


class Status(StrEnum):
    """The status of an attempt, a ``once`` key or a run; stored as this text."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # an attempt stopped by Kernel → Interrupt
    CRASHED = "crashed"  # a run whose process died with work in flight
    SUSPENDED = "suspended"  # an attempt stopped at a wait by a batch run's --suspend-after
    WAITING = "waiting"  # a batch run suspended at a wait, until something resumes it


#: The ``attempts`` view's query, over any relation with the columns of ``events``.
ATTEMPTS_SELECT = """
    SELECT s.run, s.step, s.attempt,
           coalesce(f.body ->> 'status', 'running') AS status,
           s.ts AS started_at, f.ts AS finished_at,
           CAST(f.body ->> 'duration_s' AS DOUBLE) AS duration_s,
           s.body ->> 'reason' AS reason,
           CAST(s.body ->> 'forced' AS BOOLEAN) AS forced,
           f.body ->> '$.error.ename' AS error,
           f.body ->> '$.error.evalue' AS error_message,
           s.body ->> 'source' AS source,
           CAST(s.body ->> 'pid' AS INTEGER) AS pid,
           s.body ->> 'host' AS host,
           CAST(s.body ->> 'started' AS BIGINT) AS process_started
    FROM {events} s
    LEFT JOIN {events} f ON f.kind = 'attempt_finished' AND f.run = s.run AND f.step = s.step
        AND f.attempt = s.attempt
    WHERE s.kind = 'attempt_started'"""

#: The ``runs`` view's query, likewise.
RUNS_SELECT = """
    SELECT run,
           arg_min(body ->> 'notebook', ts) FILTER (WHERE kind = 'run_created') AS notebook,
           min(ts) AS created_at, max(ts) AS last_activity
    FROM {events} GROUP BY run"""

DDL: tuple[str, ...] = (
    """CREATE TABLE nbdurable_meta (
        key VARCHAR NOT NULL,
        value VARCHAR NOT NULL
    )""",
    """CREATE TABLE events (
        run VARCHAR NOT NULL,
        step VARCHAR,
        attempt INTEGER,
        kind VARCHAR NOT NULL,
        ts TIMESTAMP NOT NULL,
        body VARCHAR NOT NULL,
        data BLOB
    )""",
    # One row per execution attempt of a step; status is running until it finished.
    "CREATE VIEW attempts AS " + ATTEMPTS_SELECT.format(events="events"),
    "CREATE VIEW runs AS " + RUNS_SELECT.format(events="events"),
)
