"""Forks: a new run holding the checkpoints of another run's first steps (every SQL statement
about them). Rows are copied, bytes are not: inline payloads travel with their rows, blob files
are named by content and shared; their HMACs cover the bytes only, so they verify in the fork."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from nbdurable.store import records, runs, schema

if TYPE_CHECKING:  # pragma: no cover
    from duckdb import DuckDBPyConnection as Connection

#: What a fork takes from the steps it keeps: their attempts, replays, @step calls, waits,
#: once keys, resets and children (the events their waits consumed are copied apart).
KEPT_KINDS = (schema.Kind.ATTEMPT_STARTED, schema.Kind.ATTEMPT_FINISHED, schema.Kind.REPLAYED,
              schema.Kind.CALL_COMPLETED, schema.Kind.WAIT_STARTED, schema.Kind.WAIT_COMPLETED,
              schema.Kind.ONCE_STARTED, schema.Kind.ONCE_FINISHED, schema.Kind.ONCE_RESET,
              schema.Kind.STEP_RESET, schema.Kind.CHILD_FINISHED)


def create(con: Connection, events: str, run: str, new_run: str, from_step: str | None,
           steps: list[str]) -> int:
    """The fork's ``run_created`` row, then the rows of the steps it keeps (hold a
    transaction); how many rows were copied."""
    notebook = runs.notebook_of(con, events, run)
    records.insert_rows(con, [forked_row(new_run, notebook, run, from_step)])
    return copy_steps(con, events, run, new_run, steps)


def copy_steps(con: Connection, events: str, run: str, new_run: str, steps: list[str]) -> int:
    """Copy the rows of ``run``'s ``steps`` (and of their children's own calls, recorded under
    ``<step>/<child>``) into ``new_run``, in log order, with the events their completed waits
    consumed; return how many rows were copied (hold a transaction)."""
    kept = set(steps)
    names = [s for (s,) in con.execute(f"SELECT DISTINCT step FROM {events} WHERE run = ? AND"
                                       " step IS NOT NULL", [run]).fetchall()
             if s in kept or s.split("/", 1)[0] in kept]
    consumed = _consumed_by(con, events, run, names)
    marks = ", ".join("?" * len(KEPT_KINDS))
    copied = con.execute(
        f"INSERT INTO events SELECT ?, step, attempt, kind, ts, body, data FROM {events}"
        f" WHERE run = ? AND ((kind IN ({marks}) AND list_contains(?, step))"
        " OR (kind = ? AND list_contains(?, body ->> 'id'))) ORDER BY ts",
        [new_run, run, *KEPT_KINDS, names, schema.Kind.EVENT_PUSHED, consumed]).fetchone()
    return int(copied[0]) if copied else 0


def _consumed_by(con: Connection, events: str, run: str, steps: list[str]) -> list[str]:
    rows = con.execute(f"SELECT body FROM {events} WHERE run = ? AND kind = ? AND"
                       " list_contains(?, step)", [run, schema.Kind.WAIT_COMPLETED, steps])
    return [event_id for (body,) in rows.fetchall()
            for event_id in json.loads(body).get("consumed", [])]


def forked_row(new_run: str, notebook: str | None, parent: str, from_step: str | None
               ) -> list[object]:
    """The fork's ``run_created`` row: where it came from."""
    row = records.run_created(new_run, notebook)
    body = json.loads(row[5])
    body["forked_from"] = {"run": parent, "step": from_step}
    row[5] = records.dumps(body)
    return row


def parents(con: Connection, events: str) -> dict[str, dict[str, str | None]]:
    """run -> ``{"run": parent, "step": first step executed anew}`` for every fork."""
    rows = con.execute(f"SELECT run, body ->> 'forked_from' FROM {events} WHERE kind = ? AND"
                       " body ->> 'forked_from' IS NOT NULL", [schema.Kind.RUN_CREATED])
    return {run: json.loads(parent) for run, parent in rows.fetchall()}
