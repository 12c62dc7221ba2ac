"""A run as its viewer shows it: one snapshot of the log, typed, without IPython.

:func:`snapshot` reads everything a view needs under one lease: the run's header (status,
counts, total time, the other runs of the log), each step's latest attempt (status, attempts,
why it executed or that it replayed, start, duration, stored bytes, its place on the run's
timeline), the waits of each step (what for, until when), the run's events (pending and
consumed) and its children per map. The IPython adapter renders it (a live widget, and the
static HTML a saved notebook keeps); the HTTP adapter will serve it as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from nbdurable import settings
from nbdurable.engine.context import LogArg, resolve_log
from nbdurable.engine.history import run_table
from nbdurable.engine.waits import describe_outcome, describe_spec
from nbdurable.processes import ProcessId
from nbdurable.store import children as child_records, mailbox, queries, records, schema
from nbdurable.store.runs import require_run

_PREVIEW = 60  # characters of an event's payload shown
EVENTS_SHOWN = 50  # per status (pending, consumed): the most recent; the rest are counted


class StepStatus(StrEnum):
    """What a step's latest attempt is doing, as the viewer says it."""

    COMPLETED = "completed"
    FAILED = "failed"
    RUNNING = "running"
    WAITING = "waiting"  # running, inside a wait that has not completed
    INTERRUPTED = "interrupted"
    CRASHED = "crashed"  # left running by a process that is gone
    RESET = "reset"  # voided by `nbdurable reset`: executes when next reached


@dataclass(frozen=True)
class WaitLine:
    """One wait of a step's latest attempt."""

    wait: str
    waiting_for: str  # in words: event `approve` or sleep 24.0 h
    keys: tuple[str, ...]  # the event keys it waits for
    deadline: datetime | None  # the earliest sleep end or timeout still recorded (UTC, naive)
    waiting: bool
    outcome: str  # "waiting", or what happened


@dataclass(frozen=True)
class ChildGroup:
    """The children of one map / spawn group of a step (from their recorded outcomes)."""

    group: str
    children: int
    completed: int
    failed: int
    interrupted: int
    reused: int
    attempts: int


@dataclass(frozen=True)
class StepView:
    """A step's latest attempt; ``offset`` and ``width`` place it on the run's timeline (0–1)."""

    step: str
    status: StepStatus
    attempt: int
    attempts: int
    last: str  # "executed" or "replayed"
    why: str  # why it last executed (`source edited`, ...) or "replayed"
    started_at: datetime
    duration_s: float | None
    stored_bytes: int
    error: str | None  # one line
    error_detail: str | None  # the full message
    offset: float
    width: float
    waits: tuple[WaitLine, ...] = ()
    children: tuple[ChildGroup, ...] = ()


@dataclass(frozen=True)
class EventView:
    id: str
    key: str
    pushed_at: datetime
    payload: str  # a preview of its JSON
    consumed_by: str | None  # the step (and wait) that consumed it, None while pending


@dataclass(frozen=True)
class RunView:
    """One run, at one write generation of the log."""

    run: str
    log: str
    notebook: str | None
    status: str
    counts: dict[str, int]  # completed, failed, running, waiting, reused
    started_at: datetime | None
    total_s: float
    steps: tuple[StepView, ...]
    pending: tuple[EventView, ...]
    consumed: tuple[EventView, ...]
    more_events: dict[str, int]  # pending / consumed not listed (beyond EVENTS_SHOWN)
    runs: tuple[str, ...]  # every run of the log, most recent activity first
    generation: int
    taken_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(tzinfo=None))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(json.dumps(asdict(self), default=str))
        return data


def snapshot(run: str | None = None, *, log: LogArg = None) -> RunView:
    """The run ``run`` (default: the current one) as the log holds it now."""
    db = resolve_log(log)
    run = settings.check_run_id(run) if run else settings.run_id(_main_namespace())
    generation = db.generation()
    with db.lease() as con:
        require_run(con, db, run)
        events = queries.with_journals(con, db, run)
        lines = queries.step_lines(con, events, run)
        replays = queries.replays(con, run)
        waits = _waits(queries.wait_rows(con, run))
        resets = records.run_resets(con, run)
        table = run_table(con, db, events)
        listed, totals = mailbox.recent(con, run, EVENTS_SHOWN)
    now = datetime.now(UTC).replace(tzinfo=None)
    steps = _steps(lines, replays, waits, resets, child_records.load_run(db, run), now)
    summary = next(row for row in table if row["run"] == run)
    start = min((s.started_at for s in steps), default=None)
    pending, consumed, more = _events(listed, totals)
    return RunView(run, str(db.path), summary["notebook"], summary["status"], _counts(steps),
                   start, _total(steps, now, start), tuple(steps), pending, consumed, more,
                   tuple(row["run"] for row in table), generation)


# -- steps ----------------------------------------------------------------------------------------

def _steps(lines: list[queries.StepLine], replays: dict[str, tuple[int, datetime]],
           waits: dict[tuple[str, int], list[WaitLine]], resets: dict[str, int],
           kids: list[child_records.ChildRecord], now: datetime) -> list[StepView]:
    start = min((line.started_at for line in lines), default=now)
    end = max([now if line.finished_at is None else line.finished_at for line in lines] or [now])
    span = max((end - start).total_seconds(), 1e-6)
    groups = _children(kids, {line.step: line.attempt for line in lines})
    steps = []
    for line in lines:
        its_waits = tuple(waits.get((line.step, line.attempt), ()))
        replayed_at = replays.get(line.step, (0, None))[1]
        last = "replayed" if replayed_at and replayed_at > line.started_at else "executed"
        finished = line.finished_at or now
        steps.append(StepView(
            line.step, _status(line, its_waits, resets), line.attempt, line.attempts, last,
            "replayed" if last == "replayed" else _why(line), line.started_at, line.duration_s,
            _stored_bytes(line.outcome), _one_line(line), line.error_message,
            (line.started_at - start).total_seconds() / span,
            max((finished - line.started_at).total_seconds() / span, 0.004),
            its_waits, tuple(groups.get(line.step, ()))))
    return steps


def _status(line: queries.StepLine, waits: tuple[WaitLine, ...],
            resets: dict[str, int]) -> StepStatus:
    if line.attempt <= resets.get(line.step, 0):
        return StepStatus.RESET
    if line.status == schema.Status.SUSPENDED:
        return StepStatus.WAITING  # a suspended batch run: it goes on when resumed
    if line.status != schema.Status.RUNNING:
        return StepStatus(line.status)
    if line.pid and not ProcessId(line.pid, line.host or "", line.process_started).alive():
        return StepStatus.CRASHED
    return StepStatus.WAITING if any(w.waiting for w in waits) else StepStatus.RUNNING


def _why(line: queries.StepLine) -> str:
    if line.forced:
        return "forced"
    return line.reason or "first run"


def _one_line(line: queries.StepLine) -> str | None:
    if not line.error:
        return None
    message = (line.error_message or "").strip().splitlines()
    return f"{line.error}: {message[0]}" if message else line.error


def _stored_bytes(outcome: str | None) -> int:
    """The bytes an attempt stored: its variables' values and its outputs."""
    if not outcome:
        return 0
    body = json.loads(outcome)
    refs = [v[3] for v in body.get("variables") or [] if len(v) > 3] + [body.get("outputs")]
    return sum(int(ref[1]) for ref in refs if isinstance(ref, list) and len(ref) > 1)


def _counts(steps: list[StepView]) -> dict[str, int]:
    counts = {"completed": 0, "failed": 0, "running": 0, "waiting": 0, "reused": 0}
    for s in steps:
        if s.status in (StepStatus.RUNNING, StepStatus.WAITING, StepStatus.COMPLETED,
                        StepStatus.FAILED):
            counts[str(s.status)] += 1
        counts["reused"] += s.last == "replayed"
    return counts


def _total(steps: list[StepView], now: datetime, start: datetime | None) -> float:
    """From the first step's start to now while a step runs or waits, else to the last end."""
    if start is None:
        return 0.0
    if any(s.status in (StepStatus.RUNNING, StepStatus.WAITING) for s in steps):
        return (now - start).total_seconds()
    ends = [(s.started_at - start).total_seconds() + (s.duration_s or 0.0) for s in steps]
    return max(ends, default=0.0)


# -- waits, children, events -----------------------------------------------------------------------

def _waits(rows: list[queries.WaitRow]) -> dict[tuple[str, int], list[WaitLine]]:
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for step, attempt, kind, body in rows:
        w = found.setdefault((step, attempt, body.get("wait")), {"spec": body["spec"]})
        if kind == schema.Kind.WAIT_STARTED:
            w["deadlines"] = [*body.get("deadlines", []), body.get("timeout_at")]
        else:
            w["outcome"] = describe_outcome(body["spec"], body["outcome"])
    by_step: dict[tuple[str, int], list[WaitLine]] = {}
    for (step, attempt, wait), w in found.items():
        deadlines = [datetime.fromisoformat(d) for d in w.get("deadlines", []) if d]
        keys = tuple(v for k, v in w["spec"]["conditions"] if k == "event")
        by_step.setdefault((step, attempt), []).append(WaitLine(
            str(wait), describe_spec(w["spec"]), keys, min(deadlines, default=None),
            "outcome" not in w, w.get("outcome", "waiting")))
    return by_step


def _children(kids: list[child_records.ChildRecord],
              latest_attempt: dict[str, int]) -> dict[str, list[ChildGroup]]:
    last: dict[tuple[str, str], child_records.ChildRecord] = {}
    tries: dict[tuple[str, str], int] = {}
    for r in kids:
        last[r.step, r.key] = r
        tries[r.step, r.key] = tries.get((r.step, r.key), 0) + 1
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for (step, key), r in last.items():
        c = counts.setdefault((step, key.split("[", 1)[0]), dict.fromkeys(
            ("children", "completed", "failed", "interrupted", "reused", "attempts"), 0))
        c["children"] += 1
        c[str(r.status)] = c.get(str(r.status), 0) + 1
        c["attempts"] += tries[step, key]
        c["reused"] += r.status == schema.Status.COMPLETED and \
            r.attempt < latest_attempt.get(step, 0)
    groups: dict[str, list[ChildGroup]] = {}
    for (step, group), c in counts.items():
        groups.setdefault(step, []).append(ChildGroup(
            group, c["children"], c["completed"], c["failed"], c["interrupted"], c["reused"],
            c["attempts"]))
    return groups


def _events(listed: list[mailbox.Listed], totals: dict[str, int]
            ) -> tuple[tuple[EventView, ...], tuple[EventView, ...], dict[str, int]]:
    """The most recent pending and consumed events, and how many more there are of each."""
    pending = tuple(_event(e) for e in listed if e.consumed is None)
    consumed = tuple(_event(e) for e in listed if e.consumed is not None)
    more = {"pending": totals["pending"] - len(pending),
            "consumed": totals["consumed"] - len(consumed)}
    return pending, consumed, more


def _event(event: mailbox.Listed) -> EventView:
    text = event.payload
    preview = text if len(text) <= _PREVIEW else text[:_PREVIEW - 1] + "…"
    used = event.consumed
    by = f"{used.step or '(no step)'} {used.wait or ''}".strip() if used else None
    return EventView(event.id, event.key, event.pushed_at, preview, by)


def _main_namespace() -> dict[str, Any] | None:
    import sys

    main = sys.modules.get("__main__")
    return getattr(main, "__dict__", None)
