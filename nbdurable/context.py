"""The durable step being executed right now, for ``@step`` and ``once`` to find.

A kernel runs one cell at a time, so besides the context variable (which follows ``await`` and
``asyncio`` tasks) the active step is also kept per process, for threads the cell starts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepContext:
    """What ``@step`` calls need to know about the durable cell around them."""

    log: Any  # nbdurable.logdb.LogDB
    run: str
    step: str
    attempt: int
    force: bool = False
    namespace: dict | None = None
    #: recorded @step calls of this step (loaded at the first call)
    calls: dict | None = None
    _counters: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_call_key(self, name: str) -> str:
        """``name#k``: the k-th call of ``name`` in this execution, in call order."""
        with self._lock:
            k = self._counters.get(name, 0)
            self._counters[name] = k + 1
        return f"{name}#{k}"


_current: ContextVar[StepContext | None] = ContextVar("nbdurable_step", default=None)
_process_current: list[StepContext] = []


def current() -> StepContext | None:
    """The active step of this task, else of this process, else None."""
    ctx = _current.get()
    if ctx is None and _process_current:
        ctx = _process_current[-1]
    return ctx


def enter(ctx: StepContext) -> object:
    """Make ``ctx`` the active step; returns a token for :func:`leave`."""
    _process_current.append(ctx)
    return _current.set(ctx)


def leave(ctx: StepContext, token: object) -> None:
    if ctx in _process_current:
        _process_current.remove(ctx)
    try:
        _current.reset(token)  # type: ignore[arg-type]
    except ValueError:  # left from another context (an async cell): clear it instead
        _current.set(None)


@contextmanager
def active(ctx: StepContext) -> Iterator[StepContext]:
    token = enter(ctx)
    try:
        yield ctx
    finally:
        leave(ctx, token)
