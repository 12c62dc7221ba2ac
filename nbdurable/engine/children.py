"""Children of durable steps: ``nbdurable.map``, ``spawn`` and ``as_completed``.

Inside a durable cell each child is keyed by its call order in the cell (``map#0[17]``,
``spawn#2``) or by the ``key`` given, and fingerprinted by its function's code and its
arguments, like a ``@step`` call. The kernel records each child's outcome as it arrives (the
workers never touch the log): results that finish together are written to the journal and
synced once, so a child's result is durable as soon as it finished, not when the whole map ends.
When the cell executes again (after a crash, after a failed child was fixed), a child whose
fingerprint is unchanged and whose result is recorded returns it without running; at most the
children that were in flight when the kernel died run twice. Outside a durable cell the same
calls run the same way, without a log.

A cell waits for its children before it completes (``map`` does; spawned children are waited
for at the end of the body), so a completed cell never leaves work behind that a replay could
not account for.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import itertools
import os
import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from nbdurable.engine import context, executors, progress, serializer, values, worker
from nbdurable.engine.fingerprint import call_fingerprint, fingerprint
from nbdurable.engine.worker import Outcome
from nbdurable.errors import (
    CheckpointError,
    ChildError,
    IntegrityWarning,
    LogCorruptError,
    UnstorableValueWarning,
    UsageError,
)
from nbdurable.store import children as store, records
from nbdurable.store.schema import Status

_BACKOFF_FIRST, _BACKOFF_CAP = 0.5, 30.0  # seconds before retry 1, doubling up to the cap
#: How long the recorder lets results gather before one journal sync for all of them: fewer
#: syncs and thread switches (a kernel's Dask client loop shares the GIL with the recorder).
_RECORD_WINDOW = 0.02
_TRACEBACK_LIMIT = 20_000  # characters of a child's traceback kept in the log


class Child:
    """A handle on one child: ``.key``, ``.done()``, ``.result(timeout=None)``."""

    def __init__(self, family: _Family, key: str, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], *, fp: str, retries: int, runner: executors.Runner):
        self.key, self.fingerprint = key, fp
        self._family, self._runner = family, runner
        self._call = (fn, args, kwargs)
        self.retries, self.tries, self.prior_tries = retries, 0, 0
        self.reused = False
        self._done = threading.Event()
        self._value: Any = None
        self._failure: ChildError | None = None
        self._seen = False
        self._waiters: list[_Waiter] = []  # map() and as_completed() waiting on this child
        self._calls: dict[str, tuple[str, Any]] | None = None  # its own @step calls
        self.run_id: str | None = None  # a child notebook's run (spawn_notebook)
        self.output_path: str | None = None  # a child notebook's output notebook

    def __repr__(self) -> str:
        state = "reused" if self.reused else "done" if self.done() else "pending"
        return f"<nbdurable child {self.key} {state}>"

    def done(self) -> bool:
        """Whether the child has finished (and its outcome is recorded)."""
        return self._done.is_set()

    @property
    def failed(self) -> bool:
        return self.done() and self._failure is not None

    def result(self, timeout: float | None = None) -> Any:
        """The child's result; :class:`ChildError` if it failed; ``TimeoutError`` if it is not
        done within ``timeout`` seconds."""
        if timeout is None:
            self._wait()
        elif not self._done.wait(timeout):
            raise TimeoutError(f"child {self.key} is not done after {timeout} s")
        self._seen = True
        self._family.show_warnings()
        if self._failure is not None:
            raise self._failure
        return self._value

    def _settle(self, outcome: Outcome | None, value: Any = None) -> None:
        if outcome is not None and not outcome.ok:
            self._failure = _child_error(self, outcome)
        else:
            self._value = outcome.value if outcome is not None else value
        self._done.set()
        for waiter in builtins.list(self._waiters):
            waiter.finished(self)

    def _wait(self) -> None:
        """Until done; Kernel → Interrupt stops the family's children."""
        try:
            self._done.wait()
        except KeyboardInterrupt:
            self._family.interrupt()
            raise


def _child_error(child: Child, outcome: Outcome) -> ChildError:
    runs = child.prior_tries + child.tries
    tries = f" (attempt {runs})" if runs > 1 else ""
    return ChildError(f"child {child.key} failed{tries}: {outcome.ename}: {outcome.evalue}",
                      key=child.key, error=outcome.exception, child_traceback=outcome.traceback,
                      attempts=runs)


class _Family:
    """The children of one durable step execution (or, outside one, of one call), and the
    thread that records their outcomes."""

    def __init__(self, ctx: context.StepContext | None,
                 keys: Iterator[int] | None = None):
        self.ctx = ctx
        self._numbers = keys or itertools.count()  # of keys outside a durable cell
        self._recorded: store.Recorded | None = None
        self._finished: queue.SimpleQueue[tuple[Child, Future[Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._keys: set[str] = set()
        self._live: dict[Child, Future[Any] | None] = {}  # submitted or waiting for a slot
        self._waiting: deque[Child] = deque()
        self._limit: dict[Child, int | None] = {}
        self.closed = False
        self.children: list[Child] = []  # every child of this family, in the order created
        self._warnings: list[str] = []  # of the recording thread, for the cell's thread

    # -- keys and records ---------------------------------------------------------------------
    def next_key(self, kind: str) -> str:
        if self.ctx is not None:
            return self.ctx.next_call_key(kind)
        return f"{kind}#{next(self._numbers)}"

    def claim(self, key: str) -> None:
        if key in self._keys:
            raise UsageError(f"two children have the key {key!r} in one cell; give each a "
                             "distinct key")
        self._keys.add(key)

    def _load(self) -> store.Recorded:
        ctx = self.ctx
        if ctx is None or ctx.force:
            return store.Recorded({}, {})
        if self._recorded is None:
            self._recorded = store.load(ctx.log, ctx.run, ctx.step, ctx.since)
        return self._recorded

    def recorded(self, key: str) -> list[store.ChildRecord]:
        return self._load().children.get(key, [])

    def _scope(self, child: Child) -> worker.Scope | None:
        """The scope of a child's own @step calls, with their recorded results (inside a
        durable cell; outside, they are plain calls)."""
        if self.ctx is None:
            return None
        if child._calls is None:
            child._calls = {}
            for key, (fp, ref) in self._load().calls.get(child.key, {}).items():
                if ref is None:
                    continue
                with contextlib.suppress(LogCorruptError):  # damaged: that call runs again
                    child._calls[key] = (fp, values.load_value(self.ctx.log, ref,
                                                               self.ctx.namespace))
        return worker.Scope(child.key, dict(child._calls), os.getpid())

    # -- starting -----------------------------------------------------------------------------
    def start(self, children: Sequence[Child], max_workers: int | None = None) -> None:
        """Reuse recorded results; submit the rest (at most ``max_workers`` at a time)."""
        self.children += children
        for child in children:
            if not self._reuse(child):
                self._live[child] = None
                self._limit[child] = max_workers
                self._waiting.append(child)
        self._submit_more()

    def _reuse(self, child: Child) -> bool:
        records_ = self.recorded(child.key)
        child.prior_tries = max((r.tries for r in records_), default=0)
        last = records_[-1] if records_ else None
        if last is None or not last.reusable or last.fingerprint != child.fingerprint:
            return False
        assert last.result is not None, "reusable means a stored result"
        try:
            value = values.load_value(self.ctx.log, last.result,  # type: ignore[union-attr]
                                      self.ctx.namespace)  # type: ignore[union-attr]
        except LogCorruptError as exc:
            warnings.warn(f"child {child.key}: {exc}; it runs again", IntegrityWarning,
                          stacklevel=4)
            return False
        child.reused = True
        child._settle(None, value)
        return True

    def _submit_more(self) -> None:
        with self._lock:
            running = sum(1 for f in self._live.values() if f is not None)
            ready = []
            while self._waiting and not self.closed:
                limit = self._limit.get(self._waiting[0])
                if limit is not None and running >= limit:
                    break
                ready.append(self._waiting.popleft())
                running += 1
        for group in _batches(ready):
            self._submit(group)

    def _submit(self, group: list[Child]) -> None:
        """Submit children of one function and runner (a map's: one batch)."""
        fn, runner = group[0]._call[0], group[0]._runner
        futures = runner.submit_many(fn, [(c._call[1], c._call[2], self._scope(c))
                                          for c in group])
        with self._lock:
            self._live.update(zip(group, futures, strict=True))
        self._ensure_thread()
        for child, future in zip(group, futures, strict=True):
            future.add_done_callback(functools.partial(self._arrived, child))

    def _arrived(self, child: Child, future: Future[Any]) -> None:
        self._finished.put((child, future))

    def _idle(self) -> bool:
        with self._lock:
            return not self._live and not self._waiting

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._record_loop, daemon=True,
                                                name="nbdurable-children")
                self._thread.start()

    # -- recording ----------------------------------------------------------------------------
    def _record_loop(self) -> None:
        while True:
            item = self._finished.get()
            if item is None:
                return
            time.sleep(_RECORD_WINDOW)  # let neighbours finish: one sync, one wake-up for all
            batch = [item]
            while True:  # everything that finished meanwhile: one journal sync for all
                try:
                    more = self._finished.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._finished.put(None)
                    break
                batch.append(more)
            self._record(batch)
            if self.ctx is None and self._idle():  # a map or spawn outside a durable cell:
                return                              # its family ends with its children

    def _record(self, batch: list[tuple[Child, Future[Any]]]) -> None:
        rows: list[store.Row] = []
        settle: list[tuple[Child, Outcome]] = []
        for child, future in batch:
            if self.closed or child.done():
                continue
            outcome = child._runner.outcome(future)
            child.tries += 1
            retry = not outcome.ok and child.tries <= child.retries
            try:
                rows += self._call_rows(child, outcome) + self._row(child, outcome)
            except Exception as exc:  # a result nbdurable cannot store or sign: not recorded
                self._warn(f"child {child.key}: its outcome could not be recorded ({exc}); "
                           "it will run again")
            if retry:
                self._retry_later(child)
            else:
                settle.append((child, outcome))
        self._write(rows)
        for child, outcome in settle:
            with self._lock:
                self._live.pop(child, None)
            child._settle(outcome)
        self._submit_more()

    def _row(self, child: Child, outcome: Outcome) -> list[store.Row]:
        ctx = self.ctx
        if ctx is None:
            return []
        result, unstorable = None, None
        if outcome.ok:
            try:
                packed = serializer.pack(outcome.value, main_globals=ctx.namespace)
                result = values.store_packed(ctx.log.blobs, packed)
            except serializer.Unstorable as exc:
                unstorable = exc.reason
                self._warn(f"child {child.key} returned a value nbdurable cannot store "
                           f"({exc.reason}); it will run again on re-execution")
        error = None if outcome.ok else {**outcome.error(),
                                         "traceback": outcome.traceback[-_TRACEBACK_LIMIT:]}
        record = store.ChildRecord(
            ctx.run, ctx.step, ctx.attempt, child.key, child.fingerprint,
            Status.COMPLETED if outcome.ok else Status.FAILED, child.prior_tries + child.tries,
            records.now(), outcome.duration_s, result, error, unstorable)
        return [store.child_finished(record)]

    def _call_rows(self, child: Child, outcome: Outcome) -> list[store.Row]:
        """The child's own @step calls, recorded under ``<step>/<child key>`` (and kept for
        its next attempt in this execution)."""
        ctx = self.ctx
        if ctx is None or not outcome.calls:
            return []
        rows = []
        for key, fp, value in outcome.calls:
            if child._calls is not None:
                child._calls[key] = (fp, value)
            try:
                ref = values.store_packed(ctx.log.blobs, serializer.pack(
                    value, main_globals=ctx.namespace))
            except serializer.Unstorable:
                continue  # that call runs again next time
            rows.append(records.call_completed(
                run=ctx.run, step=store.call_step(ctx.step, child.key), attempt=ctx.attempt,
                key=key, fingerprint=fp, result=ref, started=records.now())[1])
        return rows

    def _write(self, rows: list[store.Row]) -> None:
        if not rows or self.ctx is None or self.ctx.journal is None:
            return
        journal = self.ctx.journal
        try:
            upto = journal.append(rows, sync=True)
        except CheckpointError as exc:
            self._warn(f"children's results could not be recorded: {exc}")
            return
        journal.submit(rows, upto)

    def _warn(self, text: str) -> None:
        """A warning of the recording thread, shown by the cell's own thread (a warning
        printed by another thread may land in no cell's output)."""
        with self._lock:
            self._warnings.append(text)

    def show_warnings(self) -> None:
        """In the cell's thread: the recording thread's warnings so far."""
        with self._lock:
            texts, self._warnings = self._warnings, []
        for text in dict.fromkeys(texts):
            warnings.warn(text, UnstorableValueWarning, stacklevel=3)

    def _retry_later(self, child: Child) -> None:
        delay = min(_BACKOFF_CAP, _BACKOFF_FIRST * 2 ** (child.tries - 1))
        timer = threading.Timer(delay, self._retry, (child,))
        timer.daemon = True
        timer.start()

    def _retry(self, child: Child) -> None:
        if not self.closed:
            try:
                self._submit([child])
            except Exception as exc:  # the executor is gone: the child fails with that
                self._finished.put((child, _failed_future(exc)))

    # -- ending ---------------------------------------------------------------------------------
    def pending(self) -> list[Child]:
        with self._lock:
            return list(self._live)

    def join(self) -> None:
        """Wait for every child; Kernel → Interrupt stops them (see :meth:`interrupt`)."""
        for child in self.pending():
            child._wait()
        self.show_warnings()
        unseen = [c.key for c in self.children if c.failed and not c._seen]
        if unseen:
            warnings.warn(f"{len(unseen)} child(ren) of this cell failed and nobody asked for "
                          f"their result: {', '.join(unseen[:5])}; nbdurable.children() lists "
                          "them", UnstorableValueWarning, stacklevel=3)

    def interrupt(self) -> None:
        """Cancel the children not started, record the running ones as interrupted, stop the
        local pool's workers; results arriving later are ignored. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            live = dict(self._live)
            self._live.clear()
            self._waiting.clear()
        rows = []
        for child, future in live.items():
            if future is not None and not future.cancel() and self.ctx is not None:
                rows += self._interrupted_row(child)
            child._settle(Outcome(False, None, "KeyboardInterrupt", "interrupted"))
        for runner in {id(c._runner): c._runner for c in live}.values():
            runner.interrupt()
        self._write(rows)
        self._finished.put(None)

    def _interrupted_row(self, child: Child) -> list[store.Row]:
        ctx = self.ctx
        assert ctx is not None, "only called inside a durable cell"
        record = store.ChildRecord(ctx.run, ctx.step, ctx.attempt, child.key, child.fingerprint,
                                   Status.INTERRUPTED, child.prior_tries + child.tries + 1,
                                   records.now(), None, None,
                                   {"ename": "KeyboardInterrupt", "evalue": "interrupted"})
        return [store.child_finished(record)]

    def close(self) -> None:
        """The step ended: stop the recording thread once nothing is left to record."""
        self._finished.put(None)


def _batches(children: list[Child]) -> list[list[Child]]:
    """Runs of consecutive children with the same function and runner."""
    groups: list[list[Child]] = []
    for child in children:
        last = groups[-1][0] if groups else None
        if last is not None and last._call[0] is child._call[0] and last._runner is child._runner:
            groups[-1].append(child)
        else:
            groups.append([child])
    return groups


def _failed_future(exc: BaseException) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_exception(exc)
    return future


# -- the family of the code running now --------------------------------------------------------

#: Numbers of children's keys outside durable cells (``spawn#7``): distinct in this process.
_outside_keys = itertools.count()


def current_family() -> _Family:
    """The children of the durable step running now (outside one: a family without a log)."""
    ctx = context.current()
    if ctx is None:
        return _Family(None, _outside_keys)
    if ctx.children is None:
        ctx.children = _Family(ctx)
    family: _Family = ctx.children
    return family


def settle(ctx: context.StepContext) -> None:
    """The body of ``ctx``'s cell reached its end: wait for its children (interruptible)."""
    family = ctx.children
    if isinstance(family, _Family):
        family.join()


def finished(ctx: context.StepContext, *, ok: bool) -> None:
    """``ctx``'s cell ended. Without reaching its end (an error, an interrupt): stop its
    children still running (their outcomes so far stay recorded)."""
    family = ctx.children
    if isinstance(family, _Family):
        if not ok:
            family.interrupt()
        family.close()


# -- the public calls ----------------------------------------------------------------------------

def _check(fn: object, retries: object, what: str) -> None:
    if not callable(fn):
        raise UsageError(f"nbdurable.{what} needs a function, got {type(fn).__name__}")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise UsageError(f"retries must be a whole number >= 0, got {retries!r}")


def _fn_fingerprint(fn: Callable[..., Any], ctx: context.StepContext | None) -> str:
    return fingerprint(fn, context.main_namespace())[0] if ctx is not None else ""


def spawn(fn: Callable[..., Any], *args: Any, executor: object = None, retries: int = 0,
          key: str | None = None, **kwargs: Any) -> Child:
    """Start ``fn(*args, **kwargs)`` as a child; returns its :class:`Child` handle."""
    _check(fn, retries, "spawn")
    if key is not None and (not isinstance(key, str) or not key):
        raise UsageError(f"key must be a non-empty string, got {key!r}")
    family = current_family()
    runner = executors.resolve(executor)
    key = key or family.next_key("spawn")
    family.claim(key)
    fp = ""
    if family.ctx is not None:
        fp = call_fingerprint(_fn_fingerprint(fn, family.ctx), args, kwargs,
                              context.main_namespace())
    child = Child(family, key, fn, args, kwargs, fp=fp, retries=retries, runner=runner)
    family.start([child])
    return child


def map(fn: Callable[..., Any], items: Iterable[Any], *, executor: object = None,  # noqa: A001
        retries: int = 0, max_workers: int | None = None,
        key: str | Callable[[Any], object] | None = None) -> list[Any]:
    """``[fn(item) for item in items]``, each call a child; results in input order.

    ``key``: a name for this map (children ``NAME[i]``), or a function of an item giving its
    child's key (``map#0[<key(item)>]``: stable when items are inserted or reordered).
    ``max_workers``: at most this many children run at once. A failed child (after its
    ``retries``) raises :class:`ChildError` once every child has finished.
    """
    _check(fn, retries, "map")
    if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
        raise UsageError(f"max_workers must be a whole number >= 1, got {max_workers!r}")
    family = current_family()
    runner = executors.resolve(executor)
    children = _map_children(family, fn, builtins.list(items), key, retries, runner)
    family.start(children, max_workers)
    _wait_all(children, _group(children))  # all of them first: a failure is raised once the
    failed = [c for c in children if c.failed]  # others are recorded, so re-running the cell
    #                                             runs only the failed ones
    if failed:
        raise _map_error(failed, len(children))
    return [c.result() for c in children]


def _group(children: list[Child]) -> str:
    return children[0].key.split("[", 1)[0] if children else "map"


def _wait_all(children: list[Child], name: str) -> None:
    """Until every child is done, showing progress (Kernel → Interrupt stops them). The
    waiting thread wakes when the last child finishes and for the display's ticks, not once
    per finished child: on Dask, the scheduler shares this process's GIL."""
    if not children:
        return
    shown = progress.Progress(name, children, durable=context.current() is not None)
    ui = progress.display(shown)
    try:
        with _watching(children, _Waiter(len(children))) as waiter:
            while not waiter.all_done.wait(progress.EVERY):
                ui.update()
    finally:
        ui.close()
        children[0]._family.show_warnings()


class _Waiter:
    """Told when a watched child finishes: ``any_done`` is set by each (cleared by the
    watcher), ``all_done`` once ``count`` distinct children have finished."""

    def __init__(self, count: int):
        self.count, self._finished = count, set[int]()
        self.any_done, self.all_done = threading.Event(), threading.Event()
        self._lock = threading.Lock()

    def finished(self, child: Child) -> None:
        with self._lock:
            self._finished.add(id(child))
            if len(self._finished) >= self.count:
                self.all_done.set()
        self.any_done.set()


@contextlib.contextmanager
def _watching(children: list[Child], waiter: _Waiter | None = None) -> Iterator[_Waiter]:
    """``waiter`` (by default one for any child) told whenever one of ``children`` finishes;
    Kernel → Interrupt while waiting stops their family's children."""
    waiter = waiter or _Waiter(1)
    for child in children:
        child._waiters.append(waiter)
        if child.done():  # finished before it was watched (reused, or just now): counted
            waiter.finished(child)
    try:
        yield waiter
    except KeyboardInterrupt:
        children[0]._family.interrupt()
        raise
    finally:
        for child in children:
            child._waiters.remove(waiter)


def _map_error(failed: list[Child], total: int) -> ChildError:
    first = failed[0]
    for child in failed:
        child._seen = True
    error = first._failure
    assert error is not None, "a failed child has its error"
    return ChildError(f"{len(failed)} of {total} children failed; the first, {error}",
                      key=first.key, error=error.error, child_traceback=error.child_traceback,
                      attempts=error.attempts)


def _map_children(family: _Family, fn: Callable[..., Any], items: list[Any],
                  key: str | Callable[[Any], object] | None, retries: int,
                  runner: executors.Runner) -> list[Child]:
    if key is not None and not callable(key) and (not isinstance(key, str) or not key):
        raise UsageError(f"key must be a non-empty string or a function of an item, got {key!r}")
    prefix = key if isinstance(key, str) else family.next_key("map")
    fn_fp = _fn_fingerprint(fn, family.ctx)
    ns = context.main_namespace()
    children = []
    for i, item in enumerate(items):
        child_key = f"{prefix}[{key(item) if callable(key) else i}]"
        family.claim(child_key)
        fp = call_fingerprint(fn_fp, (item,), {}, ns) if family.ctx is not None else ""
        children.append(Child(family, child_key, fn, (item,), {}, fp=fp, retries=retries,
                              runner=runner))
    return children


def as_completed(children: Iterable[Child], timeout: float | None = None) -> Iterator[Child]:
    """Yield the handles as their children finish (their outcome recorded); reused ones
    first. ``TimeoutError`` if not all are done within ``timeout`` seconds."""
    pending = builtins.list(children)
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        done = [c for c in pending if c.done()]
        if not done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"{len(pending)} child(ren) not done after {timeout} s")
            _wait_any(pending, left)
            continue
        for child in done:
            pending.remove(child)
            yield child


def _wait_any(pending: list[Child], timeout: float | None) -> None:
    """Block until one of ``pending`` is done (or ``timeout``)."""
    with _watching(pending) as waiter:
        waiter.any_done.wait(timeout)
