"""What runs in a worker: one child's function, and the watchdog of a local pool's workers.

This module is imported by every worker process, so it imports nothing heavy.

A child's function, arguments and result cross to and from a worker process cloudpickled
(:func:`pack_call`, :func:`run_packed`): a function or class defined in the notebook lives in the
kernel's ``__main__``, which a worker started by ``spawn`` or ``forkserver`` cannot import, so it
is sent by value. A worker never opens the log: it returns an :class:`Outcome` and the kernel
records it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from nbdurable import processes

_WATCH_EVERY = 0.2  # seconds between two looks at the parent (a read of /proc: ~10 us)
#: In a worker of the local pool: the kernel it works for (set by :func:`watch_parent`).
_parent: list[processes.ProcessId] = []


@dataclass
class Scope:
    """What a child's own ``@step`` calls need: their keys (``fetch#0``, in call order within
    the child), the results recorded for them by earlier attempts of the child, and the calls
    made now. The kernel records those with the child's outcome: a worker never opens the
    log."""

    key: str  # the child's
    recorded: dict[str, tuple[str, Any]] = field(default_factory=dict)  # key -> (fp, value)
    kernel_pid: int = 0
    made: list[tuple[str, str, Any]] = field(default_factory=list)  # (key, fp, value)
    counters: dict[str, int] = field(default_factory=dict)

    def next_key(self, name: str) -> str:
        k = self.counters.get(name, 0)
        self.counters[name] = k + 1
        return f"{name}#{k}"

    @property
    def in_kernel(self) -> bool:
        """Whether the child runs in the kernel's process (threads), which holds the log."""
        return os.getpid() == self.kernel_pid


_scope: ContextVar[Scope | None] = ContextVar("nbdurable_child", default=None)


def current_scope() -> Scope | None:
    """The child running in this thread, if any."""
    return _scope.get()


@dataclass
class Outcome:
    """How one attempt of a child ended: its value, or its error (type, message, traceback
    text, and the exception itself when it could be brought back)."""

    ok: bool
    value: Any = None
    ename: str = ""
    evalue: str = ""
    traceback: str = ""
    exception: BaseException | None = None
    duration_s: float = 0.0
    calls: list[tuple[str, str, Any]] = field(default_factory=list)  # the child's @step calls

    def error(self) -> dict[str, str]:
        return {"ename": self.ename, "evalue": self.evalue, "traceback": self.traceback}


def call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
         scope: Scope | None = None) -> Outcome:
    """Run one child attempt in this thread; never raises (but lets KeyboardInterrupt and
    SystemExit through)."""
    start, token = time.perf_counter(), _scope.set(scope)
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next
                                                  if exc.__traceback__ else None))
        return Outcome(False, None, type(exc).__name__, str(exc), text, exc,
                       time.perf_counter() - start, _made(scope))
    finally:
        _scope.reset(token)
    return Outcome(True, value, duration_s=time.perf_counter() - start, calls=_made(scope))


def call_item(fn: Callable[..., Any], kernel_pid: int, item: Any, key: str | None = None,
              recorded: dict[str, tuple[str, Any]] | None = None) -> Outcome:
    """A map's child as one Dask task of ``client.map``: ``call(fn, (item,), {}, scope)`` with
    the scope sent as plain values (a dataclass per task costs the scheduler, which unpickles
    every task, ~4 % more time on 1,000 trivial tasks)."""
    scope = None if key is None else Scope(key, recorded or {}, kernel_pid)
    return call(fn, (item,), {}, scope)


def _made(scope: Scope | None) -> list[tuple[str, str, Any]]:
    return list(scope.made) if scope is not None else []


def _dumps(obj: object) -> bytes:
    data: bytes = cloudpickle.dumps(obj)
    return data


def pack_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
              scope: Scope | None = None) -> bytes:
    """A call as bytes a worker process can run (notebook functions by value)."""
    return _dumps((fn, args, kwargs, scope))


def run_packed(payload: bytes) -> bytes:
    """In a worker process: run a packed call, return its packed :class:`Outcome`."""
    if _parent and not _parent[0].alive():  # the kernel died: start nothing more
        os._exit(1)
    fn, args, kwargs, scope = cloudpickle.loads(payload)
    outcome = call(fn, args, kwargs, scope)
    for attempt in range(2):
        try:
            return _dumps(outcome)
        except Exception as exc:
            if attempt == 0 and outcome.calls:  # a @step result that cannot travel: the
                outcome.calls = []              # calls run again next time, the rest returns
                continue
            return _unsendable(outcome, exc)
    raise AssertionError("unreachable")


def _unsendable(outcome: Outcome, exc: Exception) -> bytes:
    if outcome.ok:  # the value cannot travel back
        why = f"its result cannot be sent back from the worker: {type(exc).__name__}: {exc}"
        return _dumps(Outcome(False, None, "UnpicklableResult", why,
                              duration_s=outcome.duration_s))
    outcome.exception = None  # the exception cannot travel: its text still does
    return _dumps(outcome)


def unpack(payload: bytes) -> Outcome:
    outcome: Outcome = cloudpickle.loads(payload)
    return outcome


def watch_parent(pid: int, started: int | None) -> None:
    """A pool initializer: exit this worker as soon as process ``pid`` (the kernel) is gone,
    so that no child keeps running side effects as an orphan after a kill. Kernel → Interrupt
    reaches the whole process group: workers ignore it (the kernel stops them itself)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = processes.ProcessId(pid, processes.HOST, started)
    _parent[:] = [parent]

    def watch() -> None:
        while parent.alive():
            time.sleep(_WATCH_EVERY)
        os._exit(1)

    threading.Thread(target=watch, name="nbdurable-watchdog", daemon=True).start()
