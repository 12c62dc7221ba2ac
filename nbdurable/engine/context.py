"""The durable step being executed right now, for ``@step`` and ``once`` to find.

A kernel runs one cell at a time, so besides the context variable (which follows ``await`` and
``asyncio`` tasks) the active step is also kept per process, for threads the cell starts.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from nbdurable.errors import NoLogError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from nbdurable.store.logdb import LogDB

#: What a ``log=`` argument may be: an open log, a path, or None for the configured one.
LogArg = Union["LogDB", str, "os.PathLike[str]", None]


@dataclass
class StepContext:
    """What ``@step`` calls need to know about the durable cell around them."""

    log: Any  # nbdurable.store.logdb.LogDB
    run: str
    step: str
    attempt: int
    force: bool = False
    namespace: dict[str, Any] | None = None
    source_hash: str = ""
    #: recorded calls and waits count only from this attempt on (after --force or a reset)
    since: int = 1
    #: recorded @step calls of this step (loaded at the first call)
    calls: dict[str, Any] | None = None
    #: this process's journal for the log, where children's outcomes are written
    journal: Any = None  # nbdurable.store.journal.Journal
    #: the children started by this execution (nbdurable.engine.children), once there are some
    children: Any = None
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


def main_namespace() -> dict[str, Any] | None:
    """The notebook's namespace: the active step's, else ``__main__``'s."""
    import sys

    ctx = current()
    if ctx is not None and ctx.namespace is not None:
        return ctx.namespace
    main = sys.modules.get("__main__")
    return getattr(main, "__dict__", None)


def locate(run: str | None = None, log: LogArg = None) -> tuple[LogDB, str]:
    """The log and run to use: given ones, else the active step's, else the configured ones
    (``NBDURABLE_LOG`` / ``NBDURABLE_RUN`` / ``configure`` / the notebook's identity)."""
    from nbdurable import settings

    ctx = current()
    log = ctx.log if log is None and ctx is not None else resolve_log(log)
    if run is None:
        run = ctx.run if ctx is not None else settings.run_id(main_namespace())
    else:
        run = settings.check_run_id(run)
    return log, run


def resolve_log(log: LogArg = None) -> LogDB:
    """The log to use: an open one as given, a path given (``log=``, ``--log``), else the
    configured one (``configure(log=)`` > ``NBDURABLE_LOG`` > ``.nbdurable/log.duckdb``)."""
    from nbdurable import settings
    from nbdurable.store.logdb import open_log

    if log is None:
        return open_log(settings.log_path())
    if isinstance(log, (str, os.PathLike)):
        return open_log(settings.check_log_arg(log))
    if not hasattr(log, "transaction"):
        raise UsageError(f"log must be a path or an open log, got {type(log).__name__}")
    return log


def existing_log(given: str | os.PathLike[str] | None, where: str = "--log") -> Path:
    """The path of a log that a reading command uses: it must exist and be a DuckDB file (a
    missing one is a typo, not a new log); nothing is created or opened for writing."""
    from nbdurable import settings
    from nbdurable.store.logdb import sniff

    path = settings.check_log_arg(given) if given else settings.log_path()
    if not path.is_file():
        where = where if given else "NBDURABLE_LOG, or the default in this directory"
        raise NoLogError(f"there is no log at {given or path} ({where}); give the log of your "
                         "runs with --log PATH")
    sniff(path)
    return path
