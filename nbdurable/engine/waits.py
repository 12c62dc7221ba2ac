"""Durable waits: sleep, wait for an event, any-of, all-of.

A wait inside a durable cell is keyed like a ``@step`` call, by its order in the cell
(``wait#0``, ``wait#1``...) and the cell's source. The first time it is reached, a
``wait_started`` row records its deadlines (sleeps, timeouts); after a crash the same wait
sleeps only what is left. When it is satisfied, one ``wait_completed`` row records the outcome
and the events it consumed, atomically. When the cell runs again (a replay that re-executes, a
crash), a completed wait returns its recorded outcome at once; reaching another wait at that
point than the recorded one is an error naming both. An edited cell, or ``--force``, waits anew.

While waiting, the process holds nothing: it reads the log's write generation (one ``pread``)
every 10 ms (25 ms after the first 20 s) and looks at the mailbox only when it changed (a push
bumps it) or a deadline passed. The IPython adapter plugs a UI in (:func:`set_ui`): a panel with buttons, and
a pump that delivers widget clicks while the cell blocks.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from nbdurable import settings
from nbdurable.engine import context, events
from nbdurable.errors import RunSuspended, UsageError, WaitMismatchError, WaitTimeout
from nbdurable.store import claims, mailbox, records, schema
from nbdurable.store.runs import require_run

if TYPE_CHECKING:  # pragma: no cover
    from nbdurable.store.logdb import Connection

POLL = 0.01  # seconds between two looks at the write generation, early in a wait
#: After consuming an event while more are pending, keep the log's lease this long, so that
#: the cell's next wait (usually microseconds later) takes the next one without queueing again.
HOLD = 0.02
POLL_LATER = 0.025  # ... after FAST_FOR seconds: a wait of hours costs less CPU
FAST_FOR = 20.0
MAX_DURATION = 100 * 365.25 * 86400  # beyond, datetimes overflow


@dataclass(frozen=True)
class Sleep:
    """A condition: ``duration`` (seconds or a timedelta) has passed since the wait began."""

    duration: float

    def __init__(self, duration: float | timedelta):
        object.__setattr__(self, "duration", seconds(duration))

    def describe(self) -> str:
        return f"sleep {_human(self.duration)}"

    def spec(self) -> list[Any]:
        return ["sleep", self.duration]


@dataclass(frozen=True)
class Event:
    """A condition: an event with this key is in the run's mailbox."""

    key: str

    def __init__(self, key: str):
        object.__setattr__(self, "key", events.check_key(key))

    def describe(self) -> str:
        return f"event `{self.key}`"

    def spec(self) -> list[Any]:
        return ["event", self.key]


Condition = Sleep | Event


@dataclass(frozen=True)
class WaitResult:
    """What ended a :func:`wait_any`: the position of the condition, it, and its payload."""

    index: int
    condition: Condition
    payload: Any = None


def seconds(duration: float | timedelta) -> float:
    if isinstance(duration, timedelta):
        duration = duration.total_seconds()
    if (not isinstance(duration, (int, float)) or isinstance(duration, bool)
            or not math.isfinite(duration) or not 0 <= duration <= MAX_DURATION):
        raise UsageError(f"a duration is a number of seconds from 0 to {MAX_DURATION:.0f} "
                         f"(100 years) or a timedelta, got {duration!r}")
    return float(duration)


# -- the UI hook -------------------------------------------------------------------------------

_ui: Callable[[Wait], Any] | None = None


def set_ui(factory: Callable[[Wait], Any] | None) -> None:
    """Install how a waiting process shows the wait and stays responsive: ``factory(wait)``
    returns an object with ``tick(timeout)`` (wait at most that long, doing UI work),
    ``finished(text)`` and ``close()``. ``None``: plain sleeping."""
    global _ui
    _ui = factory


class _SleepUI:
    def tick(self, timeout: float) -> None:
        time.sleep(timeout)

    def finished(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


# -- where a mailbox may be read from -----------------------------------------------------------

@dataclass(frozen=True)
class Floor:
    """A rowid below which every event of a mailbox is consumed, and its witness: the event
    seen at ``witness_rowid`` (the floor's own row, or the one just below it). A log file
    replaced at the same path has another event there, or none: the floor is then dropped."""

    rowid: int
    witness_rowid: int
    witness_id: str


class _Floors:
    """Per log path, run and set of keys: the mailbox's :class:`Floor` (see
    :func:`mailbox.pending`). Only ever raised; the log is append-only, so a floor stays true
    whatever other processes do. Bounded: the oldest entries are forgotten."""

    SIZE = 256

    def __init__(self) -> None:
        self._floors: dict[tuple[Any, ...], Floor] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> Floor | None:
        return self._floors.get(key)

    def raise_to(self, key: tuple[Any, ...], floor: Floor | None) -> None:
        with self._lock:
            old = self._floors.pop(key, None)
            best = max((f for f in (old, floor) if f is not None), key=lambda f: f.rowid,
                       default=None)
            if best is not None:
                self._floors[key] = best
            while len(self._floors) > self.SIZE:
                self._floors.pop(next(iter(self._floors)))

    def forget(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            self._floors.pop(key, None)


_floors = _Floors()
#: Rows written by a transaction not committed yet have rowids from 2**55 (DuckDB's MAX_ROW_ID)
#: up; they get their place in the table when it commits.
_UNCOMMITTED = 1 << 50


def _floor_after(pending: list[mailbox.Pending], taken: set[str]) -> Floor | None:
    """Below which rowid every event of the mailbox is consumed once ``taken`` is: the oldest
    committed event left, else just above the newest committed one read. (Spooled pushes
    moved in by this transaction are not committed yet: they will be placed above both.)"""
    committed = [p for p in pending if p.rowid < _UNCOMMITTED]
    left = [p for p in committed if p.id not in taken]
    if left:
        oldest = min(left, key=lambda p: p.rowid)
        return Floor(oldest.rowid, oldest.rowid, oldest.id)
    if committed:
        newest = max(committed, key=lambda p: p.rowid)
        return Floor(newest.rowid + 1, newest.rowid, newest.id)
    return None


# -- one wait ----------------------------------------------------------------------------------

class Wait:
    """A wait in progress: where it is recorded, its conditions and deadlines."""

    def __init__(self, conditions: tuple[Condition, ...], mode: str, timeout: float | None):
        for c in conditions:
            if not isinstance(c, (Sleep, Event)):
                raise UsageError(f"wait conditions are nbdurable.Sleep(...) or "
                                 f"nbdurable.Event(...), got {c!r}")
        if not conditions:
            raise UsageError(f"wait_{mode}() needs at least one condition")
        self.conditions, self.mode = conditions, mode
        self.timeout = None if timeout is None else seconds(timeout)
        self.ctx = context.current()
        self.log, self.run = context.locate()
        self.key = self.ctx.next_call_key("wait") if self.ctx else None
        self.deadlines: list[datetime | None] = []
        self.timeout_at: datetime | None = None
        self._looked_at = datetime.min  # when try_complete last read the mailbox
        self._start_unrecorded = False  # deadlines computed, wait_started not written yet
        self._began = time.monotonic()

    @property
    def spec(self) -> dict[str, Any]:
        return {"mode": self.mode, "conditions": [c.spec() for c in self.conditions],
                "timeout": self.timeout}

    def describe(self) -> str:
        joiner = " and " if self.mode == "all" else " or "
        text = joiner.join(c.describe() for c in self.conditions)
        return text + (f", timeout {_human(self.timeout)}" if self.timeout is not None else "")

    def keys(self) -> list[str]:
        return [c.key for c in self.conditions if isinstance(c, Event)]

    def _times(self) -> list[datetime]:
        return [d for d in (*self.deadlines, self.timeout_at) if d is not None]

    def next_deadline(self) -> datetime | None:
        """The next deadline still ahead (a sleep of ``wait_all`` that passed no longer is)."""
        now = records.now()
        ahead = [d for d in self._times() if d > now]
        return min(ahead) if ahead else None

    # -- the log --------------------------------------------------------------------------------
    def begin(self) -> dict[str, Any] | None:
        """Start the wait, in one transaction (one lease): the recorded outcome if it completed
        before; else the deadlines recorded (or recovered), and the outcome if the mailbox
        already satisfies it; else None."""
        with self.log.transaction(announce=False, urgent=True) as con:
            outcome = self._recall(con)
            if outcome is not None:
                return outcome
            outcome = self._complete(con)
            if outcome is None and self._start_unrecorded:
                self._record_start(con)  # completed at once, its deadlines need no record
            return outcome

    def _recall(self, con: Connection) -> dict[str, Any] | None:
        now = records.now()
        started = completed = None
        if self.ctx is None:  # outside a durable cell: nothing recorded, but a real run
            require_run(con, self.log, self.run)
        elif not self.ctx.force and self.ctx.attempt > self.ctx.since:
            # only an earlier attempt that still counts can have recorded this wait
            started, completed = self._recorded(con)
        if completed is not None:
            self._check_same(completed)
            outcome: dict[str, Any] = completed["outcome"]
            return outcome
        if started is not None:
            self._check_same(started)
            self.deadlines = [_dt(d) for d in started["deadlines"]]
            self.timeout_at = _dt(started["timeout_at"])
            return None
        self.deadlines = [now + timedelta(seconds=c.duration) if isinstance(c, Sleep) else None
                          for c in self.conditions]
        self.timeout_at = (now + timedelta(seconds=self.timeout)
                           if self.timeout is not None else None)
        self._start_unrecorded = self.ctx is not None
        return None

    def _record_start(self, con: Connection) -> None:
        """``wait_started``: the deadlines, so that a restart waits only what is left."""
        self._write(schema.Kind.WAIT_STARTED, {"deadlines": [_iso(d) for d in self.deadlines],
                                          "timeout_at": _iso(self.timeout_at)}, con)
        self._start_unrecorded = False

    def _recorded(self, con: Connection) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        ctx = self.ctx
        assert ctx is not None and self.key is not None, "only a step's waits are recorded"
        return mailbox.recorded_wait(con, self.run, ctx.step, self.key, ctx.source_hash,
                                     ctx.since)

    def _check_same(self, recorded: dict[str, Any]) -> None:
        reached = json.loads(json.dumps(self.spec))
        if recorded["spec"] != reached:
            step = self.ctx.step if self.ctx else None
            raise WaitMismatchError(
                f"step {step!r} reached {self.key} = {self.describe()}, but the log "
                f"recorded {self.key} = {describe_spec(recorded['spec'])} at that point; the "
                "cell's waits must not depend on data that changes between runs "
                "(or run it with --force)", step=step, wait=self.key,
                recorded=recorded["spec"], reached=reached)

    def _body(self, extra: dict[str, Any]) -> str:
        return json.dumps({"wait": self.key, "spec": self.spec,
                           "source_hash": self.ctx.source_hash if self.ctx else "",
                           "attempt": self.ctx.attempt if self.ctx else None, **extra})

    def _write(self, kind: str, extra: dict[str, Any], con: Connection | None = None) -> None:
        row = mailbox.wait_row(self.run, self.ctx.step if self.ctx else None,
                               self.ctx.attempt if self.ctx else None, kind, self._body(extra))
        if con is not None:
            mailbox.write_wait(con, row)
        else:
            mailbox.write_wait_deferred(self.log, row)

    # -- completing -----------------------------------------------------------------------------
    def try_complete(self) -> dict[str, Any] | None:
        """If the wait is satisfied now, record its outcome (consuming its events) and return
        it, all in one transaction."""
        with self.log.transaction(announce=False, urgent=True) as con:
            return self._complete(con)

    def _complete(self, con: Connection) -> dict[str, Any] | None:
        now = self._looked_at = records.now()
        pending = self._mailbox(con)
        outcome = self._outcome(pending, now)
        if outcome is not None:
            consumed = outcome.pop("_consumed")
            self._write(schema.Kind.WAIT_COMPLETED, {"outcome": outcome, "consumed": consumed}, con)
            _floors.raise_to(self._floor_key(), _floor_after(pending, set(consumed)))
            if len(pending) > len(consumed):  # more for this cell's waits: keep the lease
                self.log.hold(HOLD)
        return outcome

    def _mailbox(self, con: Connection) -> list[mailbox.Pending]:
        keys = self.keys()
        if not keys:
            return []
        floor = _floors.get(self._floor_key())
        if floor is not None and mailbox.id_at(con, floor.witness_rowid) != floor.witness_id:
            _floors.forget(self._floor_key())  # another log file at this path: read it all
            floor = None
        # enough of each key to fill this wait, and one more to know whether more are pending
        return mailbox.pending(con, self.run, keys, max(Counter(keys).values()) + 1,
                              floor.rowid if floor else 0)

    def _floor_key(self) -> tuple[Any, ...]:
        return (str(self.log.path), self.run, tuple(sorted(self.keys())))

    def _outcome(self, pending: list[mailbox.Pending], now: datetime) -> dict[str, Any] | None:
        if self.mode == "any":
            for i, cond in enumerate(self.conditions):
                deadline = self.deadlines[i]
                if isinstance(cond, Sleep) and deadline is not None and deadline <= now:
                    return {"index": i, "payloads": [None], "_consumed": []}
                if isinstance(cond, Event):
                    found = next((p for p in pending if p.key == cond.key), None)
                    if found is not None:
                        return {"index": i, "payloads": [found.payload], "_consumed": [found.id]}
        else:
            taken = _take_all(self.conditions, pending)
            sleeps_done = all(d is None or d <= now for d in self.deadlines)
            if taken is not None and sleeps_done:
                return {"index": None, "payloads": [p.payload if p else None for p in taken],
                        "_consumed": [p.id for p in taken if p]}
        if self.timeout_at is not None and self.timeout_at <= now:
            return {"index": None, "payloads": [], "timeout": True, "_consumed": []}
        return None

    # -- the loops ------------------------------------------------------------------------------
    def run_sync(self, last: int) -> dict[str, Any]:
        """Wait, after :meth:`begin` found nothing at generation ``last`` (read before it):
        panel shown, mailbox read again whenever the log changed or a deadline passed."""
        ui = _ui(self) if _ui is not None else _SleepUI()
        outcome = None
        suspend = _suspend_after()
        try:
            while outcome is None:
                last, outcome = self._look(last)
                if outcome is None:
                    self._suspend_if_due(suspend)
                    ui.tick(self._pause())
            ui.finished(self.outcome_text(outcome))
            return outcome
        finally:
            ui.close()

    async def run_async(self, last: int) -> dict[str, Any]:
        """The same loop for top-level ``await``: the kernel keeps handling messages (on
        ipykernel 7.4+ widget clicks reach their handlers while a cell awaits)."""
        outcome = None
        suspend = _suspend_after()
        while outcome is None:
            last, outcome = self._look(last)
            if outcome is None:
                self._suspend_if_due(suspend)
                await asyncio.sleep(self._pause())
        return outcome

    def _suspend_if_due(self, after: float | None) -> None:
        """In a batch kernel run with ``--suspend-after``: stop here once the wait has lasted
        that long (its deadlines are recorded; a resume waits only what is left)."""
        if after is None or self.ctx is None or time.monotonic() - self._began < after:
            return
        deadline = self.next_deadline()
        until = f" (next deadline {_iso(deadline)})" if deadline else ""
        raise RunSuspended(f"run {self.run!r} suspended in step {self.ctx.step!r}: it waits "
                           f"for {self.describe()}{until}; `nbdurable resume {self.run}` or "
                           "`nbdurable worker` goes on", run=self.run, step=self.ctx.step,
                           keys=self.keys(), deadline=_iso(deadline))

    def _look(self, last: int) -> tuple[int, dict[str, Any] | None]:
        """Read the mailbox only when the log changed since generation ``last`` (a push bumps
        it) or a deadline passed; (the generation now, the outcome if the wait completed)."""
        generation = self.log.generation()
        if generation != last or self._due():
            return generation, self.try_complete()
        return last, None

    def _due(self) -> bool:
        """A deadline passed since the mailbox was last looked at."""
        now = records.now()
        return any(self._looked_at < d <= now for d in self._times())

    def _pause(self) -> float:
        poll = POLL if time.monotonic() - self._began < FAST_FOR else POLL_LATER
        deadline = self.next_deadline()
        if deadline is None:
            return poll
        left = (deadline - records.now()).total_seconds()
        return max(0.0, min(poll, left))

    def outcome_text(self, outcome: dict[str, Any]) -> str:
        if outcome.get("timeout"):
            return f"timed out after {_human(self.timeout)}"
        return describe_outcome(self.spec, outcome)


def _take_all(conditions: Sequence[Condition],
              pending: list[mailbox.Pending]) -> list[Any] | None:
    """For wait_all: one distinct pending event per Event condition (None for sleeps)."""
    needed = Counter(c.key for c in conditions if isinstance(c, Event))
    by_key: dict[str, list[mailbox.Pending]] = {}
    for p in pending:
        by_key.setdefault(p.key, []).append(p)
    if any(len(by_key.get(k, [])) < n for k, n in needed.items()):
        return None
    taken = []
    for c in conditions:
        taken.append(by_key[c.key].pop(0) if isinstance(c, Event) else None)
    return taken


def _suspend_after() -> float | None:
    """``--suspend-after`` of the batch run this kernel belongs to; None in any other process
    (an interactive kernel is never suspended, even with NBDURABLE_SUSPEND_AFTER inherited)."""
    return settings.suspend_after() if claims.driven() else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _human(secs: float | None) -> str:
    if secs is None:
        return "-"
    if secs < 120:
        return f"{secs:g} s"
    if secs < 7200:
        return f"{secs / 60:.0f} min"
    return f"{secs / 3600:.1f} h"


def describe_spec(spec: dict[str, Any]) -> str:
    """A recorded wait's conditions in words: ``event `approve` or sleep 24.0 h``."""
    parts = [_describe_condition(c) for c in spec["conditions"]]
    return (" and " if spec["mode"] == "all" else " or ").join(parts)


def _describe_condition(condition: list[Any]) -> str:
    kind, value = condition
    return f"sleep {_human(value)}" if kind == "sleep" else f"event `{value}`"


def describe_outcome(spec: dict[str, Any], outcome: dict[str, Any]) -> str:
    """A recorded outcome in words: ``event `approve` fired with {"by": "ana"}``."""
    if outcome.get("timeout"):
        return "timed out"
    if outcome.get("index") is None:
        return "all done" + "".join(f"; {json.dumps(p)}" for p in outcome["payloads"]
                                    if p is not None)
    payload = outcome["payloads"][0]
    return (f"{_describe_condition(spec['conditions'][outcome['index']])} fired"
            + (f" with {json.dumps(payload)}" if payload is not None else ""))


# -- the public functions ----------------------------------------------------------------------

def _result(wait: Wait, outcome: dict[str, Any], shape: str) -> Any:
    if outcome.get("timeout"):
        raise WaitTimeout(f"{wait.describe()}: no event within {_human(wait.timeout)} "
                          f"({wait.key or 'wait'} in run {wait.run!r})")
    if shape == "any":
        i = outcome["index"]
        return WaitResult(i, wait.conditions[i], outcome["payloads"][0])
    if shape == "all":
        return list(outcome["payloads"])
    if shape == "event":
        return outcome["payloads"][0]
    return None


def _wait(conditions: Sequence[Condition], mode: str, shape: str,
          timeout: float | None = None) -> Any:
    wait = Wait(tuple(conditions), mode, timeout)
    last = wait.log.generation()  # before begin(): a push it misses moves the generation on
    outcome = wait.begin()
    if outcome is None:
        outcome = wait.run_sync(last)
    return _result(wait, outcome, shape)


async def _wait_async(conditions: Sequence[Condition], mode: str, shape: str,
                      timeout: float | None = None) -> Any:
    wait = Wait(tuple(conditions), mode, timeout)
    last = wait.log.generation()  # before begin(): a push it misses moves the generation on
    outcome = wait.begin()
    if outcome is None:
        outcome = await wait.run_async(last)
    return _result(wait, outcome, shape)


def sleep(duration: float | timedelta) -> None:
    """Sleep durably: the wake-up time is recorded the first time; after a restart only the
    time left is slept."""
    _wait([Sleep(duration)], "any", "none")


def wait_for_event(key: str, timeout: float | timedelta | None = None) -> Any:
    """Wait for an event with ``key`` (consumed from the run's mailbox); return its payload.
    :class:`~nbdurable.errors.WaitTimeout` when ``timeout`` (a recorded deadline) passes first."""
    return _wait([Event(key)], "any", "event", None if timeout is None else seconds(timeout))


def wait_any(*conditions: Condition) -> WaitResult:
    """Wait until one condition is met; ``.index``, ``.condition``, ``.payload`` say which."""
    result: WaitResult = _wait(conditions, "any", "any")
    return result


def wait_all(*conditions: Condition) -> list[Any]:
    """Wait until every condition is met; the payloads in order (None for sleeps)."""
    payloads: list[Any] = _wait(conditions, "all", "all")
    return payloads


async def sleep_async(duration: float | timedelta) -> None:
    """:func:`sleep` for top-level ``await``."""
    await _wait_async([Sleep(duration)], "any", "none")


async def wait_for_event_async(key: str, timeout: float | timedelta | None = None) -> Any:
    """:func:`wait_for_event` for top-level ``await``."""
    return await _wait_async([Event(key)], "any", "event",
                             None if timeout is None else seconds(timeout))


async def wait_any_async(*conditions: Condition) -> WaitResult:
    """:func:`wait_any` for top-level ``await``."""
    result: WaitResult = await _wait_async(conditions, "any", "any")
    return result


async def wait_all_async(*conditions: Condition) -> list[Any]:
    """:func:`wait_all` for top-level ``await``."""
    payloads: list[Any] = await _wait_async(conditions, "all", "all")
    return payloads
