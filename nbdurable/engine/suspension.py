"""Suspended batch runs: what each waits for, and whether it can go on now.

A batch run started with ``--suspend-after SECONDS`` stops its kernel at a wait still unmet after
that long (:class:`~nbdurable.errors.RunSuspended`): the attempt of that step is ``suspended`` and
the run ``waiting``. The log tells what it waits for: the waits of its suspended step that were
started and never completed, with their conditions and recorded deadlines. The run can go on
when one of them is met now: an event pushed for a key (``wait_all``: for every key), a sleep's
deadline or the timeout passed (a timeout resumes into ``WaitTimeout``, as it would have live).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from nbdurable.store import invocations, mailbox, queries, schema

if TYPE_CHECKING:  # pragma: no cover
    from nbdurable.store.logdb import Connection, LogDB


@dataclass(frozen=True)
class OpenWait:
    """A wait a suspended step started and has not completed."""

    step: str
    wait: str
    mode: str  # any | all
    conditions: tuple[tuple[str, Any], ...]  # ("sleep", seconds) | ("event", key)
    deadlines: tuple[datetime | None, ...]  # per condition: a sleep's end
    timeout_at: datetime | None

    def keys(self) -> list[str]:
        return [str(arg) for kind, arg in self.conditions if kind == "event"]

    def next_deadline(self) -> datetime | None:
        times = [d for d in (*self.deadlines, self.timeout_at) if d is not None]
        return min(times) if times else None

    def ready(self, pushed: set[str], now: datetime) -> bool:
        """Whether resuming now completes it: ``pushed`` are the keys with a pending event."""
        if self.timeout_at is not None and self.timeout_at <= now:
            return True
        met = [(arg in pushed) if kind == "event" else (d is not None and d <= now)
               for (kind, arg), d in zip(self.conditions, self.deadlines, strict=True)]
        return all(met) if self.mode == "all" else any(met)


@dataclass(frozen=True)
class Waiting:
    """A waiting run: its open waits, and whether it can go on now."""

    run: str
    waits: tuple[OpenWait, ...]
    ready: bool
    since: object = None  # when its latest invocation started: a resume since changes it

    def keys(self) -> list[str]:
        return sorted({k for w in self.waits for k in w.keys()})

    def next_deadline(self) -> datetime | None:
        times = [d for w in self.waits if (d := w.next_deadline()) is not None]
        return min(times) if times else None


def waiting_runs(db: LogDB, now: datetime) -> list[Waiting]:
    """Every run whose latest batch invocation ended suspended (status ``waiting``), and every
    run whose resume from ``waiting`` died (a worker or its machine killed mid-resume): that
    one is ready at once (what it waited for had come), for one more try."""
    with db.lease() as con:
        events = queries.with_journals(con, db, None)
        found = []
        for run, inv in invocations.invocations(con, events).items():
            if (inv.finished or {}).get("status") == schema.Status.WAITING:
                found.append(replace(_waiting(con, events, run, now), since=inv.started_at))
            elif _died_resuming(db, run, inv):
                found.append(Waiting(run, (), ready=True, since=inv.started_at))
        return found


def _died_resuming(db: LogDB, run: str, inv: invocations.Invocation) -> bool:
    """A resume from ``waiting`` that did not end: killed (crashed), or interrupted (a worker
    stopped by SIGTERM / Ctrl-C interrupts the resumes it started)."""
    if inv.arguments.get("resumed_from") != schema.Status.WAITING:
        return False
    if inv.finished is not None:
        return (inv.finished.get("status") == schema.Status.FAILED
                and (inv.finished.get("error") or {}).get("ename") == invocations.INTERRUPTED)
    return invocations.driven_status(db.path, run, inv) == schema.Status.CRASHED


def waiting_run(con: Connection, events: str, run: str, now: datetime) -> Waiting:
    """One run's open waits (holding the lease)."""
    return _waiting(con, events, run, now)


def _waiting(con: Connection, events: str, run: str, now: datetime) -> Waiting:
    suspended = {line.step for line in queries.step_lines(con, events, run)
                 if line.status == schema.Status.SUSPENDED}
    waits = tuple(w for w in open_waits(queries.wait_rows(con, run)) if w.step in suspended)
    keys = sorted({k for w in waits for k in w.keys()})
    pushed = {p.key for p in mailbox.pending(con, run, keys, per_key=1)} if keys else set()
    return Waiting(run, waits, any(w.ready(pushed, now) for w in waits))


def open_waits(rows: list[queries.WaitRow]) -> list[OpenWait]:
    """The started waits without a later ``wait_completed`` of the same step and wait."""
    started: dict[tuple[str, str], OpenWait] = {}
    for row in rows:
        key = (row.step or "", str(row.body.get("wait")))
        if row.kind == schema.Kind.WAIT_COMPLETED:
            started.pop(key, None)
        else:
            started[key] = _open_wait(key, row.body)
    return list(started.values())


def _open_wait(key: tuple[str, str], body: dict[str, Any]) -> OpenWait:
    spec = body.get("spec") or {}
    conditions = tuple((str(c[0]), c[1]) for c in spec.get("conditions") or [])
    deadlines = tuple(_dt(d) for d in body.get("deadlines") or [None] * len(conditions))
    return OpenWait(key[0], key[1], str(spec.get("mode") or "any"), conditions, deadlines,
                    _dt(body.get("timeout_at")))


def _dt(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None

