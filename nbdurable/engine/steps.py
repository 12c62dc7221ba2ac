"""Checkpointed calls inside a durable cell (``@step``) and at-most-once side effects (``once``).

``@step``: each call made while a durable cell executes is keyed by the function's name and its
call order in the cell (``fetch#0``, ``fetch#1``...). When the cell executes again (after a
crash, or because its checkpoint could not hold a variable), a call whose function and arguments
are unchanged returns its recorded result without running. ``--force`` runs the calls again.
Outside a durable cell a step function is an ordinary function.

``once(key, fn, ...)``: ``fn`` runs at most once per run and key, whatever happens to the cells
around it. The start is committed before ``fn`` runs; if the process dies before the outcome is
recorded, nbdurable cannot know whether the side effect happened and raises
:class:`~nbdurable.errors.OnceInDoubtError` until :func:`once_resolve` or :func:`once_reset`
says what to do. An exception raised by ``fn`` is recorded and a later call runs ``fn`` again.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from nbdurable.engine import context, serializer, values, worker
from nbdurable.engine.context import LogArg
from nbdurable.engine.fingerprint import call_fingerprint, fingerprint
from nbdurable.errors import (
    IntegrityWarning,
    LogCorruptError,
    OnceInDoubtError,
    StepError,
    UnstorableValueWarning,
    UsageError,
)
from nbdurable.store import records
from nbdurable.store.schema import Kind, Status

if TYPE_CHECKING:  # pragma: no cover
    from nbdurable.store.logdb import LogDB

F = TypeVar("F", bound=Callable[..., Any])


def step(fn: F) -> F:
    """Decorate a function so that its calls inside a durable cell are checkpointed."""
    if not callable(fn):
        raise UsageError(f"@nbdurable.step decorates a function, got {type(fn).__name__}")
    if inspect.iscoroutinefunction(fn):
        return _AsyncStepFunction(fn)  # type: ignore[return-value]
    return _StepFunction(fn)  # type: ignore[return-value]


class _StepFunction:
    """The callable ``@step`` returns. Pickles as ``step(fn)``."""

    def __init__(self, fn: Callable[..., Any]):
        functools.update_wrapper(self, fn)
        self._fn = fn

    def __reduce__(self) -> tuple[Any, ...]:
        return (step, (self._fn,))

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else functools.partial(self, obj)

    def __repr__(self) -> str:
        return f"<nbdurable step {self._fn.__qualname__}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        scope = worker.current_scope()
        if scope is not None:  # in a child: keyed under it, recorded by the kernel
            key, fp, found = _scoped(scope, self._fn, args, kwargs)
            if found is not _NOT_RECORDED:
                return found
            result = self._fn(*args, **kwargs)
            scope.made.append((key, fp, result))
            return result
        call = _Call.begin(self._fn, args, kwargs)
        if call is None:
            return self._fn(*args, **kwargs)
        found = call.recorded()
        if found is not _NOT_RECORDED:
            return found
        return call.finish(self._fn(*args, **kwargs))


class _AsyncStepFunction(_StepFunction):
    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        scope = worker.current_scope()
        if scope is not None:
            key, fp, found = _scoped(scope, self._fn, args, kwargs)
            if found is not _NOT_RECORDED:
                return found
            result = await self._fn(*args, **kwargs)
            scope.made.append((key, fp, result))
            return result
        call = _Call.begin(self._fn, args, kwargs)
        if call is None:
            return await self._fn(*args, **kwargs)
        found = call.recorded()
        if found is not _NOT_RECORDED:
            return found
        return call.finish(await self._fn(*args, **kwargs))


_NOT_RECORDED = object()


def _scoped(scope: worker.Scope, fn: Callable[..., Any], args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> tuple[str, str, Any]:
    """(key, fingerprint, recorded result or _NOT_RECORDED) of a call in a child."""
    key, fp = scope.next_key(fn.__qualname__), _call_fingerprint(fn, args, kwargs)
    found = scope.recorded.get(key)
    return key, fp, found[1] if found is not None and found[0] == fp else _NOT_RECORDED


class _Call:
    """One checkpointed call: look up its record, or run it and record the result."""

    def __init__(self, ctx: context.StepContext, key: str, fp: str):
        self.ctx, self.key, self.fp = ctx, key, fp
        self.started = records.now()
        self._recorded: records.StoredRef | None = None

    @classmethod
    def begin(cls, fn: Callable[..., Any], args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> _Call | None:
        ctx = context.current()
        if ctx is None:
            return None
        call = cls(ctx, ctx.next_call_key(fn.__qualname__), _call_fingerprint(fn, args, kwargs))
        if not ctx.force:
            found = _recorded_calls(ctx).get(call.key)
            if found is not None and found[0] == call.fp:
                call._recorded = found[1]
        return call

    def recorded(self) -> Any:
        """The recorded result, or ``_NOT_RECORDED`` (none, or it cannot be trusted: the call
        runs again, with a warning saying why)."""
        ref = self._recorded
        if ref is None:
            return _NOT_RECORDED
        try:
            return values.load_value(self.ctx.log, ref, self.ctx.namespace)
        except LogCorruptError as exc:
            warnings.warn(f"step call {self.key}: {exc}; the call runs again", IntegrityWarning,
                          stacklevel=4)
            return _NOT_RECORDED

    def finish(self, result: Any) -> Any:
        try:
            packed = serializer.pack(result, main_globals=self.ctx.namespace)
        except serializer.Unstorable as exc:
            warnings.warn(f"step call {self.key} returned a value nbdurable cannot store "
                          f"({exc.reason}); it will run again on re-execution",
                          UnstorableValueWarning, stacklevel=3)
            return result
        ref = values.store_packed(self.ctx.log.blobs, packed)
        self.ctx.log.execute(*records.call_completed(
            run=self.ctx.run, step=self.ctx.step, attempt=self.ctx.attempt, key=self.key,
            fingerprint=self.fp, result=ref, started=self.started), announce=False)
        return result


def _recorded_calls(ctx: context.StepContext) -> dict[str, Any]:
    """The step's recorded calls, read once per execution (calls add nothing to it meanwhile
    that this execution could reuse: keys are unique within an execution)."""
    if ctx.calls is None:
        with ctx.log.lease() as con:
            ctx.calls = records.calls_of(con, ctx.run, ctx.step, ctx.since)
    return ctx.calls


def _call_fingerprint(fn: Callable[..., Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> str:
    """Changes when the function's code or any argument changes."""
    ns = _main_namespace()
    return call_fingerprint(fingerprint(fn, ns)[0], args, kwargs, ns)


def _main_namespace() -> dict[str, Any] | None:
    return context.main_namespace()


def once(key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` at most once per run for ``key``; return its recorded result."""
    if not isinstance(key, str) or not key:
        raise UsageError(f"once() needs a non-empty string key, got {key!r}")
    if not callable(fn):
        raise UsageError(f"once({key!r}, fn) needs a callable fn, got {type(fn).__name__}")
    scope = worker.current_scope()
    if scope is not None and not scope.in_kernel:
        raise UsageError(f"once({key!r}) cannot run in a child on a process pool or a Dask "
                         "cluster (workers never open the log); call it in the durable cell, "
                         "or run the children with executor='threads'")
    log, run = context.locate(None, None)
    ctx = context.current()
    with log.transaction(announce=False) as con:
        state = records.once_state(con, run, key)
        if state is not None and state.status == Status.COMPLETED:
            return _once_result(log, key, state)
        if state is not None and state.status == Status.RUNNING:
            raise _in_doubt(key, state)
        con.execute(*records.once_event(Kind.ONCE_STARTED, run, key, step=ctx.step if ctx else None))
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        log.execute(*records.once_event(Kind.ONCE_FINISHED, run, key, status=Status.FAILED, error={
            "ename": type(exc).__name__, "evalue": str(exc)}), announce=False)
        raise
    _record_once(log, run, key, result)
    return result


def _record_once(log: LogDB, run: str, key: str, result: Any) -> None:
    try:
        ref = values.store_packed(log.blobs, serializer.pack(result,
                                                                main_globals=_main_namespace()))
    except serializer.Unstorable as exc:
        warnings.warn(f"once({key!r}) returned a value nbdurable cannot store ({exc.reason}); "
                      "later calls return None", UnstorableValueWarning, stacklevel=3)
        ref = None
    log.execute(*records.once_event(Kind.ONCE_FINISHED, run, key, status=Status.COMPLETED, result=ref),
                announce=False)


def _once_result(log: LogDB, key: str, state: records.OnceState) -> Any:
    if state.result is None:
        return None
    try:
        return values.load_value(log, state.result, _main_namespace())
    except LogCorruptError as exc:
        raise OnceInDoubtError(
            f"once({key!r}) happened, but its recorded result cannot be trusted ({exc}); it was"
            f" not run again. Call nbdurable.once_resolve({key!r}, result) with the right "
            f"result, or nbdurable.once_reset({key!r}) to run it again", key=key) from None


def _in_doubt(key: str, state: records.OnceState) -> StepError:
    if state.process is not None and state.process.local and state.process.alive():
        return StepError(f"once({key!r}) is running in process {state.pid} since "
                         f"{state.at:%Y-%m-%d %H:%M:%S} UTC; wait for it to finish")
    return OnceInDoubtError(
        f"once({key!r}) started at {state.at:%Y-%m-%d %H:%M:%S} UTC but its process died "
        f"before recording the outcome, so it may or may not have happened; check, then call "
        f"nbdurable.once_resolve({key!r}, result) or nbdurable.once_reset({key!r})", key=key)


def once_reset(key: str, *, run: str | None = None, log: LogArg = None) -> bool:
    """Forget ``key`` so that the next ``once`` runs again. True if there was a record."""
    db, run = context.locate(run, log)
    with db.transaction(announce=False) as con:
        existed = records.once_state(con, run, key) is not None
        con.execute(*records.once_event(Kind.ONCE_RESET, run, key))
    return existed


def once_resolve(key: str, result: Any = None, *, run: str | None = None,
                 log: LogArg = None) -> None:
    """Record that ``key`` happened with ``result``: later ``once`` calls return it."""
    db, run = context.locate(run, log)
    _record_once(db, run, key, result)
