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
- a ``dask.distributed.Client`` (``pip install 'nbdurable[dask]'``): each child is a Dask task
  running ``worker.call`` (so the workers need nbdurable installed, as the kernel's environment
  has it); create the client in a plain cell (a client cannot be stored in a checkpoint).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
import time
import traceback
from concurrent.futures import (
    BrokenExecutor,
    CancelledError,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
)
from contextlib import suppress
from typing import Any

from nbdurable import processes, settings
from nbdurable.engine import worker
from nbdurable.engine.worker import Outcome, Scope
from nbdurable.errors import UsageError

#: One child's call: args, kwargs, and the scope of its own @step calls.
Call = tuple[tuple[Any, ...], dict[str, Any], "Scope | None"]


class Runner:
    """One way to run children."""

    name = "runner"

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
               scope: Scope | None = None) -> Future[Any]:
        raise NotImplementedError

    def submit_many(self, fn: Any, calls: list[Call]) -> list[Future[Any]]:
        """Several children of one function (a map's): one batch where the executor has one."""
        return [self.submit(fn, args, kwargs, scope) for args, kwargs, scope in calls]

    def outcome(self, future: Future[Any]) -> Outcome:
        """How the attempt behind ``future`` ended; never raises."""
        try:
            result: Outcome = future.result()
        except BaseException as exc:
            return _failed(exc)
        return result

    def interrupt(self) -> None:
        """Stop what runs now, where this executor can (children not started are cancelled
        by the caller)."""


def resolve(executor: object = None) -> Runner:
    """The runner for an ``executor=`` argument (None: the configured default)."""
    if executor is None:
        executor = settings.configured_executor() or "processes"
    if executor == "processes":
        return _LOCAL_POOL
    if executor == "threads":
        return _THREADS
    if _is_dask_client(executor):
        return _Dask(executor)
    if isinstance(executor, ThreadPoolExecutor):
        return _InProcess(executor)
    if isinstance(executor, Executor):
        return _Packed(executor)
    raise UsageError(f"executor must be 'processes', 'threads', a concurrent.futures.Executor or "
                     f"a dask.distributed.Client, got {type(executor).__name__}")


def _is_dask_client(executor: object) -> bool:
    """Without importing distributed (0.5 s) unless the caller already did."""
    cls = type(executor)
    return cls.__module__.startswith("distributed.") and cls.__name__ == "Client"


def _failed(exc: BaseException) -> Outcome:
    """A child whose attempt never reported: cancelled, or its worker died."""
    if isinstance(exc, CancelledError):
        return Outcome(False, None, "CancelledError", "the child was cancelled before it ran")
    if isinstance(exc, BrokenExecutor):
        return Outcome(False, None, "WorkerDied", "the worker process running the child died "
                       f"({type(exc).__name__})")
    return Outcome(False, None, type(exc).__name__, str(exc))


class _InProcess(Runner):
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

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
               scope: Scope | None = None) -> Future[Any]:
        return self._pool().submit(worker.call, fn, args, kwargs, scope)


class _Packed(Runner):
    """Children sent cloudpickled to an executor (processes, or one of unknown kind)."""

    name = "executor"

    def __init__(self, executor: Executor):
        self._executor = executor

    def pool(self) -> Executor:
        return self._executor

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
               scope: Scope | None = None) -> Future[Any]:
        return self.pool().submit(worker.run_packed, worker.pack_call(fn, args, kwargs, scope))

    def outcome(self, future: Future[Any]) -> Outcome:
        try:
            return worker.unpack(future.result())
        except BaseException as exc:
            return _failed(exc)


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


#: How long the Dask follower lets results gather between two batches. Each finished task
#: wakes a thread waiting on Dask's ``as_completed``; a follower that sleeps between batches is
#: woken ~20 times a second instead of once per task, leaves the GIL to the client's event loop
#: (and, on a ``LocalCluster``, the scheduler's), and fetches bigger batches: with batched
#: gathers, 1,000 trivial tasks 1.04-1.06x bare ``client.map`` without it, 1.01x with 50 ms.
_FOLLOW_WINDOW = 0.05


class _Dask(Runner):
    """Children as Dask tasks of ``worker.call`` (``client.map`` for a map, ``pure=False``):
    Dask ships the function (cloudpickle) and the :class:`Outcome`; its workers need the
    notebook's libraries and nbdurable, and never the log. One thread follows every task with
    Dask's own ``as_completed``, fetches the results of what finished together in one
    ``gather`` and completes a
    ``concurrent.futures`` future per task; a task that did not run to its end (a dead worker:
    ``KilledWorker``, a cancelled task) comes back as a failed outcome."""

    name = "dask"

    def __init__(self, client: Any):
        self.client = client
        self._bridges: dict[Any, tuple[Future[Any], float]] = {}  # Dask future -> bridge
        self._completed: Any = None  # distributed.as_completed while tasks are pending
        self._lock = threading.Lock()

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
               scope: Scope | None = None) -> Future[Any]:
        return self._bridge([self.client.submit(worker.call, fn, args, kwargs, scope,
                                                 pure=False)])[0]

    def submit_many(self, fn: Any, calls: list[Call]) -> list[Future[Any]]:
        """A map's children in one ``client.map`` (one message to the scheduler)."""
        if len(calls) < 2 or any(len(args) != 1 or kwargs for args, kwargs, _ in calls):
            return super().submit_many(fn, calls)
        columns = [[args[0] for args, _, _ in calls],
                   [scope.key if scope else None for _, _, scope in calls],
                   [scope.recorded if scope and scope.recorded else None for _, _, scope in calls]]
        while len(columns) > 1 and not any(columns[-1]):
            columns.pop()  # the default: None
        task = functools.partial(worker.call_item, fn, os.getpid())
        return self._bridge(self.client.map(task, *columns, pure=False))

    def _bridge(self, tasks: list[Any]) -> list[Future[Any]]:
        from distributed import as_completed

        started = time.perf_counter()
        bridges: list[Future[Any]] = [Future() for _ in tasks]
        with self._lock:
            for task, bridge in zip(tasks, bridges, strict=True):
                bridge.set_running_or_notify_cancel()
                self._bridges[task] = (bridge, started)
            if self._completed is None:
                self._completed = as_completed(  # type: ignore[no-untyped-call]
                    tasks)
                threading.Thread(target=self._follow, args=(self._completed,), daemon=True,
                                 name="nbdurable-dask").start()
            else:
                self._completed.update(tasks)
        return bridges

    def _follow(self, completed: Any) -> None:
        while True:
            for batch in completed.batches():  # what arrived together: one wake-up
                for task, result in zip(batch, self._gather(batch), strict=True):
                    self._arrived(task, result)
                if not completed.is_empty():
                    time.sleep(_FOLLOW_WINDOW)  # let the next ones gather: one wake-up
            with self._lock:
                if completed.is_empty():  # nothing was added since the loop ended
                    self._completed = None
                    return

    def _gather(self, tasks: list[Any]) -> list[Any]:
        """The results of ``tasks`` (finished, failed or cancelled: its exception), those of
        the finished ones in one request to the workers (``as_completed(with_results=True)``
        asks once per task: 1,000 trivial children took 1.15-1.24x bare ``client.map`` that
        way on a 2-core machine, 0.9-1.0x batched)."""
        statuses = [t.status for t in tasks]
        finished = [t for t, status in zip(tasks, statuses, strict=True) if status == "finished"]
        try:
            values = iter(self.client.gather(finished) if finished else [])
        except Exception:  # a worker died since: each task on its own
            return [_result_of(t) for t in tasks]
        return [next(values) if status == "finished" else _result_of(t)
                for t, status in zip(tasks, statuses, strict=True)]

    def _arrived(self, task: Any, result: Any) -> None:
        with self._lock:
            bridge, started = self._bridges.pop(task, (None, 0.0))
        if bridge is None:
            return
        try:
            outcome = self._outcome(task, result, time.perf_counter() - started)
        except BaseException as exc:  # the client closed, a cancelled task...
            outcome = _failed(exc)
        bridge.set_result(outcome)

    @staticmethod
    def _outcome(task: Any, result: Any, duration: float) -> Outcome:
        if task.status == "finished" and isinstance(result, Outcome):
            return result  # worker.call's: the child's own error is in it
        exc = result if isinstance(result, BaseException) else task.exception()
        text = "".join(traceback.format_exception(type(exc), exc, task.traceback()))
        return Outcome(False, None, type(exc).__name__, str(exc), text, exc, duration)

    def interrupt(self) -> None:
        """Cancel the tasks still pending or running."""
        with self._lock:
            tasks = list(self._bridges)
        if tasks:
            with suppress(Exception):
                self.client.cancel(tasks)


def _result_of(task: Any) -> Any:
    """A Dask task's result, or the exception that ended it."""
    try:
        return task.result() if task.status == "finished" else task.exception()
    except BaseException as exc:
        return exc


_LOCAL_POOL = _LocalPool()
_THREADS = _InProcess()
