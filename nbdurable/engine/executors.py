"""Where children run: the local process pool, threads, any ``concurrent.futures`` executor.

``executor=`` of ``nbdurable.map`` / ``spawn`` (default: ``configure(executor=...)``, else the
local pool) is resolved here into a :class:`Runner`: submit one child attempt, get a
``concurrent.futures.Future``, turn its result into an :class:`~nbdurable.engine.worker.Outcome`
(never raising: a dead worker is an outcome too).

- ``None`` / ``"processes"``: nbdurable's own process pool, one per kernel, as many workers as
  cores, started with ``forkserver`` (a kernel has threads: ``fork`` is unsafe there) and kept
  for later maps. Calls travel cloudpickled, so functions defined in the notebook work. Each
  worker watches the kernel and exits within a second when it is gone (no orphans running side
  effects after a kill). Kernel → Interrupt kills its workers; the next map starts new ones.
- ``"threads"``: a thread pool in the kernel (nothing pickled; threads cannot be stopped, so an
  interrupt only cancels children not started).
- a ``ThreadPoolExecutor``: like ``"threads"``; any other ``concurrent.futures.Executor``: calls
  travel cloudpickled, as to a process pool.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import (
    BrokenExecutor,
    CancelledError,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
)
from contextlib import suppress
from typing import Any, Protocol

from nbdurable import processes, settings
from nbdurable.engine import worker
from nbdurable.engine.worker import Outcome
from nbdurable.errors import UsageError


class Runner(Protocol):
    """One way to run children."""

    name: str

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]: ...

    def outcome(self, future: Future[Any]) -> Outcome: ...

    def interrupt(self) -> None: ...


def resolve(executor: object = None) -> Runner:
    """The runner for an ``executor=`` argument (None: the configured default)."""
    if executor is None:
        executor = settings.configured_executor() or "processes"
    if executor == "processes":
        return _LOCAL_POOL
    if executor == "threads":
        return _THREADS
    if isinstance(executor, ThreadPoolExecutor):
        return _InProcess(executor)
    if isinstance(executor, Executor):
        return _Packed(executor)
    raise UsageError(f"executor must be 'processes', 'threads' or a concurrent.futures.Executor, "
                     f"got {type(executor).__name__}")


def _failed(exc: BaseException) -> Outcome:
    """A child whose attempt never reported: cancelled, or its worker died."""
    if isinstance(exc, CancelledError):
        return Outcome(False, None, "CancelledError", "the child was cancelled before it ran")
    if isinstance(exc, BrokenExecutor):
        return Outcome(False, None, "WorkerDied", "the worker process running the child died "
                       f"({type(exc).__name__})")
    return Outcome(False, None, type(exc).__name__, str(exc))


class _InProcess:
    """Children as threads of this process: called directly, nothing pickled."""

    name = "threads"

    def __init__(self, executor: Executor | None = None):
        self._executor = executor
        self._lock = threading.Lock()

    def _pool(self) -> Executor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(os.cpu_count() or 2,
                                                    thread_name_prefix="nbdurable-child")
            return self._executor

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        return self._pool().submit(worker.call, fn, args, kwargs)

    def outcome(self, future: Future[Any]) -> Outcome:
        try:
            result: Outcome = future.result()
        except BaseException as exc:
            return _failed(exc)
        return result

    def interrupt(self) -> None:
        """Threads cannot be stopped: children not started are cancelled by the caller."""


class _Packed:
    """Children sent cloudpickled to an executor (processes, or one of unknown kind)."""

    name = "executor"

    def __init__(self, executor: Executor):
        self._executor = executor

    def pool(self) -> Executor:
        return self._executor

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        return self.pool().submit(worker.run_packed, worker.pack_call(fn, args, kwargs))

    def outcome(self, future: Future[Any]) -> Outcome:
        try:
            return worker.unpack(future.result())
        except BaseException as exc:
            return _failed(exc)

    def interrupt(self) -> None:
        """Not ours to stop: children not started are cancelled by the caller."""


class _LocalPool(_Packed):
    """nbdurable's process pool: started on first use, restarted after an interrupt or when a
    worker died (a broken pool takes no more work)."""

    name = "processes"

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._owner = 0
        self._lock = threading.Lock()

    def pool(self) -> Executor:
        with self._lock:
            pool = self._pool
            if pool is None or self._owner != os.getpid() or getattr(pool, "_broken", False):
                pool = self._pool = self._start()
            return pool

    def _start(self) -> ProcessPoolExecutor:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() \
            else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            context.set_forkserver_preload(["nbdurable.engine.worker"])
        me = processes.me()
        self._owner = me.pid
        return ProcessPoolExecutor(os.cpu_count() or 2, mp_context=context,
                                   initializer=worker.watch_parent, initargs=(me.pid, me.started))

    def interrupt(self) -> None:
        """Stop what runs now: kill the workers; the next submit starts a new pool."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        for process in list(getattr(pool, "_processes", {}).values()):
            with suppress(Exception):
                process.kill()
        with suppress(Exception):
            pool.shutdown(wait=False, cancel_futures=True)


_LOCAL_POOL = _LocalPool()
_THREADS = _InProcess()
