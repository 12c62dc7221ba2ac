"""Keep widgets alive while a cell blocks in a synchronous wait.

A cell that blocks (``nbdurable.wait_for_event`` polling its log) holds the kernel's main thread,
so ipykernel never reads the shell messages that carry widget clicks, slider updates or the
``request_states`` of a reloaded browser tab. :class:`ShellPump` reads them itself while the cell
waits: comm messages go to their handlers at once, every other shell message is kept and handed
back to the kernel, in arrival order, when the wait ends (a later cell runs after this one, as
usual).

:func:`watch_comms` closes a race the pump cannot: on ipykernel 7 a message that arrived while
the waiting cell was still *queued* has already been read and turned into an asyncio task that
waits for the cell to end. It peeks at every shell message in ipykernel's shell-channel thread
and reports ``comm_msg`` messages to a callback (normally a :class:`CommRegistry`), so nbdurable
sees a click on its own buttons even then. The kernel still dispatches that message later, so
the callback must be idempotent (use the ``msg_id``).

This module is the ONLY place in nbdurable that touches ipykernel / pyzmq private attributes.
What each supported version needs (read from their source; tested on ipykernel 6.29.5, 7.0.1,
7.3.0, 7.4.0 with pyzmq 27):

ipykernel 7.x
    The shell ROUTER socket belongs to ``kernel.shell_channel_thread``; it forwards every message
    over an inproc PAIR to the main thread, whose ``ZMQStream`` is
    ``shell_channel_thread.manager.get_shell_channel_to_subshell_pair(None).to_stream``.
    The pump swaps that stream's ``_recv_callback`` and reads the PAIR itself; replies to
    ``comm_info_request`` go to ``manager.get_subshell_to_shell_channel_socket(None)`` (the
    socket the kernel's own main-shell handlers reply on). :func:`watch_comms` wraps the
    ``_recv_callback`` of ``kernel.shell_stream`` (the ROUTER stream, in the shell-channel
    thread).
ipykernel 6.x
    No shell-channel thread: ``kernel.shell_stream`` is read on the main thread and its
    callback queues ``(n, kernel.dispatch_shell, (frames,))`` on ``kernel.msg_queue``; messages
    read between two cells wait there. The pump swaps ``shell_stream._recv_callback``, drains
    ``msg_queue`` when it starts, and flushes replies with ``shell_stream.flush(POLLOUT)``.
Both
    ``kernel.shell_handlers``, ``kernel.set_parent/get_parent`` and ``kernel._parent_ident``
    (so a handler's output is attributed to its comm message and the cell's parent restored),
    ``ZMQStream._recv_callback`` and ``ZMQStream._rebuild_io_state``.

Anything else (another major version, an in-process kernel, a subshell thread, a missing
attribute) makes ``ShellPump.supported`` false: ``poll`` then only sleeps.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import itertools
import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from nbdurable import interrupts

__all__ = ["CommRegistry", "ShellPump", "dispatching", "unwatch_comms", "watch_comms"]

_log = logging.getLogger(__name__)

DELIM = b"<IDS|MSG>"

#: Shell messages a pump runs at once; everything else waits for the end of the wait.
DISPATCHED = frozenset({"comm_open", "comm_msg", "comm_close", "comm_info_request"})

_dispatch_state = threading.local()


def dispatching() -> bool:
    """True while a pump runs a comm handler in this thread.

    Comm handlers fire IPython's ``pre_execute``/``post_execute`` events (the ``comm`` package
    does so around each ``comm_msg``); when a pump runs them, that happens *inside* the waiting
    cell, so a listener that treats those events as cell boundaries should ignore them then.
    """
    return getattr(_dispatch_state, "depth", 0) > 0


# --------------------------------------------------------------------------------------------
# Raw frames (no authentication, no digest recorded)
# --------------------------------------------------------------------------------------------
def _frame_bytes(frame: Any) -> bytes:
    return frame if isinstance(frame, bytes) else frame.bytes


def _split(frames: list) -> list | None:
    """The frames after the delimiter: [signature, header, parent, metadata, content, *buffers]."""
    for i, frame in enumerate(frames):
        if len(frame) == len(DELIM) and _frame_bytes(frame) == DELIM:
            rest = frames[i + 1:]
            return rest if len(rest) >= 5 else None
    return None


def _unpack(session: Any, data: bytes) -> Any:
    unpack = getattr(session, "unpack", None)
    return unpack(data) if unpack is not None else json.loads(data)


def _msg_type(session: Any, frames: list) -> str | None:
    """The ``msg_type`` of a raw shell message, read without checking or recording its HMAC.

    ``session.deserialize`` would record the signature, and the kernel would then reject the
    real message as a duplicate: peek only.
    """
    try:
        parts = _split(frames)
        if parts is None:
            return None
        header = _unpack(session, _frame_bytes(parts[1]))
        return header.get("msg_type") if isinstance(header, dict) else None
    except Exception:
        return None


def _peek_comm_msg(session: Any, frames: list) -> tuple[str, Any, str] | None:
    """``(comm_id, data, msg_id)`` of a signed ``comm_msg``; None for anything else.

    Checks the HMAC like ``Session.deserialize`` does, without recording the digest.
    """
    parts = _split(frames)
    if parts is None:
        return None
    header_bytes = _frame_bytes(parts[1])
    if b"comm_msg" not in header_bytes:  # cheap filter before any JSON
        return None
    raw = [header_bytes] + [_frame_bytes(p) for p in parts[2:5]]
    if getattr(session, "auth", None) is not None and not hmac.compare_digest(
            _frame_bytes(parts[0]), session.sign(raw)):
        return None
    header = _unpack(session, raw[0])
    if header.get("msg_type") != "comm_msg":
        return None
    content = _unpack(session, raw[3])
    comm_id = content.get("comm_id")
    if not isinstance(comm_id, str):
        return None
    return comm_id, content.get("data"), header.get("msg_id")


# --------------------------------------------------------------------------------------------
# SIGINT
# --------------------------------------------------------------------------------------------
_sigint_deferred = interrupts.deferred


# --------------------------------------------------------------------------------------------
# Which kernel is this
# --------------------------------------------------------------------------------------------
def _major_version() -> int | None:
    try:
        import ipykernel

        return int(str(ipykernel.__version__).split(".")[0])
    except Exception:
        return None


def _is_stream(obj: Any) -> bool:
    from zmq.eventloop.zmqstream import ZMQStream

    return (isinstance(obj, ZMQStream) and obj.socket is not None
            and callable(getattr(obj, "_recv_callback", None)))


class _Backend:
    """The private objects of one supported kernel: a subclass per ipykernel major version
    (supporting another version: one subclass in :data:`BACKENDS`, one version in the tests'
    kernel list, ``tests/oldkernel.py``)."""

    version = 0
    msg_queue: Any = None  # 6.x: where messages read between cells wait

    @staticmethod
    def matches(major: int | None, kernel: Any) -> bool:
        raise NotImplementedError

    def __init__(self, kernel: Any):
        self.kernel = kernel
        self.session = kernel.session
        self.handlers: dict = kernel.shell_handlers
        self.stream: Any = None  # the main shell stream the pump reads
        self.reply_stream: Any = None  # where handlers send their replies
        self.attach(kernel)
        if not _is_stream(self.stream):
            raise RuntimeError("no main-thread shell stream")
        if self.session is None or not isinstance(self.handlers, dict):
            raise RuntimeError("kernel has no session/shell_handlers")
        if not (callable(getattr(kernel, "set_parent", None))
                and callable(getattr(kernel, "get_parent", None))):
            raise RuntimeError("kernel has no set_parent/get_parent")
        kernel._parent_ident["shell"]  # raises if absent (present on 6.29 and 7.x)

    def attach(self, kernel: Any) -> None:
        """Find this version's streams (and queue); RuntimeError if something is missing."""
        raise NotImplementedError

    def parent(self) -> tuple[Any, Any]:
        return self.kernel._parent_ident["shell"], self.kernel.get_parent("shell")

    def flush_replies(self) -> None:
        """Send what a handler replied (e.g. ``comm_info_reply``) now, if the kernel would."""

    def is_shell_entry(self, item: Any) -> bool:
        """A ``msg_queue`` entry that carries a shell message (6.x)."""
        return False


class _Backend7(_Backend):
    """ipykernel 7.x: the shell-channel thread reads the ROUTER socket and forwards the main
    shell's messages over an in-process pair to the main thread."""

    version = 7

    @staticmethod
    def matches(major: int | None, kernel: Any) -> bool:
        return major == 7 and bool(getattr(kernel, "shell_channel_thread", None))

    def attach(self, kernel: Any) -> None:
        channel_thread = kernel.shell_channel_thread
        if threading.current_thread() is not getattr(channel_thread, "parent_thread",
                                                     threading.main_thread()):
            raise RuntimeError("not the main shell's thread")
        manager = channel_thread.manager
        if hasattr(manager, "get_shell_channel_to_subshell_pair"):
            pair = manager.get_shell_channel_to_subshell_pair(None)
        else:
            pair = manager._shell_channel_to_main
        self.stream = pair.to_stream
        self.reply_stream = manager.get_subshell_to_shell_channel_socket(None)


class _Backend6(_Backend):
    """ipykernel 6.x: the main thread's shell stream; messages read between cells wait on
    ``kernel.msg_queue``; replies are flushed by hand."""

    version = 6

    @staticmethod
    def matches(major: int | None, kernel: Any) -> bool:
        return major == 6 and not getattr(kernel, "shell_channel_thread", None)

    def attach(self, kernel: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("not the main thread")
        self.stream = kernel.shell_stream
        self.reply_stream = kernel.shell_stream
        self.msg_queue = kernel.msg_queue
        for name in ("qsize", "get_nowait", "put_nowait"):
            if not callable(getattr(self.msg_queue, name, None)):
                raise RuntimeError(f"msg_queue has no {name}")
        if not callable(getattr(kernel, "dispatch_shell", None)):
            raise RuntimeError("no dispatch_shell")

    def flush_replies(self) -> None:
        self.reply_stream.flush(zmq.POLLOUT)

    def is_shell_entry(self, item: Any) -> bool:
        try:
            _, dispatch, args = item
        except (TypeError, ValueError):
            return False
        return dispatch == self.kernel.dispatch_shell and len(args) == 1


#: The supported kernels, each recognised by its ``matches``.
BACKENDS: tuple[type[_Backend], ...] = (_Backend7, _Backend6)


def backend_for(kernel: Any) -> _Backend:
    """The backend of this kernel; RuntimeError for an unsupported one."""
    major = _major_version()
    for cls in BACKENDS:
        if cls.matches(major, kernel):
            return cls(kernel)
    raise RuntimeError(f"unsupported ipykernel {major}")


class _Item:
    __slots__ = ("entry", "frames", "seq")

    def __init__(self, seq: int, frames: list | None, entry: Any = None):
        self.seq = seq
        self.frames = frames  # raw frames of a shell message (None: a non-message queue entry)
        self.entry = entry  # 6.x: the msg_queue entry it was drained from


# --------------------------------------------------------------------------------------------
# The pump
# --------------------------------------------------------------------------------------------
class ShellPump:
    """While a cell blocks: deliver comm messages to their handlers, hold everything else.

    ::

        with ShellPump(get_ipython().kernel) as pump:
            while not done():
                pump.poll(0.01)

    Use it on the kernel's main thread, inside a cell. ``poll`` runs ``comm_open``,
    ``comm_msg``, ``comm_close`` and ``comm_info_request`` through ``kernel.shell_handlers``
    right away (their output is attributed to the comm message, as the kernel does; handler
    exceptions are logged as the kernel logs them; no busy/idle status is published, as for
    ipykernel 7.4's concurrent comm dispatch). Every other shell message is kept; on exit they
    are handed back so the kernel processes them next, in arrival order. A ``KeyboardInterrupt``
    (Kernel → Interrupt) raised inside ``poll`` propagates; ``__exit__`` still restores the
    kernel and hands back what was kept. Nested pumps (a handler that waits) work.
    """

    def __init__(self, kernel: Any):
        self.kernel = kernel
        try:
            self._backend: _Backend | None = backend_for(kernel)
        except Exception as exc:  # unknown kernel / version / thread: poll just sleeps
            _log.debug("ShellPump unsupported: %s", exc)
            self._backend = None
        #: False on a kernel this module does not know: ``poll`` then only sleeps.
        self.supported: bool = self._backend is not None
        #: Comm messages dispatched so far.
        self.dispatched = 0
        self._active = False
        self._seq = itertools.count()
        self._todo: deque[_Item] = deque()  # comm messages not yet dispatched
        self._kept: list[_Item] = []  # everything else
        self._saved_callback: Callable | None = None
        self._collector = self._collect  # one bound method, compared with `is`
        self._wait: Callable[[float], Any] | None = None  # ms -> events on the socket's fd
        # The fast path of poll(): set to self._wait while nothing is pending; None while
        # messages wait for dispatch or the socket must be read before waiting on its
        # edge-triggered fd again (after entering, after a handler ran).
        self._idle_wait: Callable[[float], Any] | None = None

    @property
    def held(self) -> int:
        """Shell messages kept for the kernel (handed back on exit)."""
        return len(self._kept)

    # -- context manager -----------------------------------------------------------------------
    def __enter__(self) -> ShellPump:
        backend = self._backend
        if backend is None or self._active:
            return self
        with _sigint_deferred():
            stream = backend.stream
            self._saved_callback = stream._recv_callback
            stream._recv_callback = self._collector
            self._active = True
            try:
                self._wait = _fd_waiter(stream.socket)
                self._drain_queue()
            except BaseException:
                self._restore()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._active:
            return
        with _sigint_deferred():
            self._restore()

    # -- the wait ------------------------------------------------------------------------------
    def poll(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for shell messages; run the comm messages among them
        now (in this thread), keep the others. Returns how many messages were dispatched."""
        idle_wait = self._idle_wait
        if idle_wait is not None and timeout > 0:
            # The idle path, run ~100 times a second for hours: one poll(2) on the socket's fd
            # and nothing else. Ctrl-C lands here (KeyboardInterrupt), nothing consumed.
            if not idle_wait(timeout * 1000.0):
                return 0
            return self._pump()
        if not self._active:
            if self.supported:
                raise RuntimeError("ShellPump.poll() outside its `with` block")
            if timeout > 0:
                time.sleep(timeout)
            return 0
        count = self._pump()  # first poll, or a handler ran: read the socket before waiting
        idle_wait = self._idle_wait
        if not count and idle_wait is not None and timeout > 0 and idle_wait(timeout * 1000.0):
            count = self._pump()
        return count

    def _pump(self) -> int:
        """Read every pending message, dispatch the comm messages."""
        backend = self._backend
        assert backend is not None
        self._idle_wait = None
        stream = backend.stream
        with _sigint_deferred():
            # Read until the socket is empty, and make sure of it last: ZMQ_EVENTS consumes
            # the fd's edge, and ZMQStream.flush() ends by reading it (in _rebuild_io_state),
            # so a message landing during flush() could otherwise sit unread with a silent fd.
            while True:
                stream.flush(zmq.POLLIN)
                if not stream.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    break
        count = 0
        dispatched_any = False
        while self._todo:
            dispatched_any = True
            if self._dispatch_next():
                count += 1
                self.dispatched += 1
        if not dispatched_any:  # else read the socket again first: a handler may have used it
            self._idle_wait = self._wait
        return count

    # -- internals -----------------------------------------------------------------------------
    def _collect(self, frames: list) -> None:
        """Receive callback of the stream while the pump is active (also during flush)."""
        self._file(_Item(next(self._seq), frames))

    def _file(self, item: _Item) -> None:
        backend = self._backend
        assert backend is not None
        if item.frames is not None and _msg_type(backend.session, item.frames) in DISPATCHED:
            self._todo.append(item)
        else:
            self._kept.append(item)

    def _drain_queue(self) -> None:
        """6.x: take the messages read between cells (the waiting cell was queued) off
        ``kernel.msg_queue``; comm messages among them get dispatched, the rest go back."""
        backend = self._backend
        assert backend is not None
        queue = backend.msg_queue
        if queue is None:
            return
        while queue.qsize():
            try:
                entry = queue.get_nowait()
            except Exception:
                break
            frames = entry[2][0] if backend.is_shell_entry(entry) else None
            self._file(_Item(next(self._seq), frames, entry))

    def _dispatch_next(self) -> bool:
        """Run the first comm message through its kernel handler, as ``dispatch_shell`` would.

        Once deserialized, a message cannot go back to the kernel (its signature is recorded),
        so taking it, deserializing it and switching the parent happen with Ctrl-C held back;
        an interrupt then lands in (or right before) the handler, as it would in the kernel.
        """
        backend = self._backend
        assert backend is not None
        kernel, session = backend.kernel, backend.session
        previous = None
        try:
            with _sigint_deferred():
                item = self._todo.popleft()
                try:
                    idents, parts = session.feed_identities(item.frames, copy=False)
                    msg = session.deserialize(parts, content=True, copy=False)
                except Exception:
                    kernel.log.error("Invalid Message", exc_info=True)
                    return False
                msg_type = msg["header"]["msg_type"]
                handler = backend.handlers.get(msg_type)
                if handler is None:
                    kernel.log.warning("Unknown message type: %r", msg_type)
                    return False
                _flush_std()  # pending cell output keeps the cell as its parent
                previous = backend.parent()
                kernel.set_parent(idents, msg, channel="shell")
                _dispatch_state.depth = getattr(_dispatch_state, "depth", 0) + 1
            try:
                result = handler(backend.reply_stream, idents, msg)
                if inspect.isawaitable(result):
                    _finish_awaitable(result, kernel)
            except Exception:
                kernel.log.error("Exception in message handler:", exc_info=True)
            return True
        finally:
            if previous is not None:
                with _sigint_deferred():
                    _dispatch_state.depth -= 1
                    _flush_std()
                    kernel.set_parent(*previous, channel="shell")
                    backend.flush_replies()  # e.g. comm_info_reply

    def _restore(self) -> None:
        """Put the stream's callback back, hand every undispatched message back in order."""
        backend = self._backend
        assert backend is not None
        stream = backend.stream
        saved, self._saved_callback = self._saved_callback, None
        self._active = False
        if stream._recv_callback is self._collector:
            stream._recv_callback = saved
        else:
            kernel_log(backend).warning("ShellPump: shell stream callback was replaced meanwhile")
        self._wait = self._idle_wait = None
        items = sorted([*self._todo, *self._kept], key=lambda item: item.seq)
        self._todo.clear()
        self._kept.clear()
        requeued = False
        for item in items:
            try:
                if item.entry is not None:
                    assert backend.msg_queue is not None  # an entry came from that queue
                    backend.msg_queue.put_nowait(item.entry)
                    requeued = True
                elif saved is not None:
                    assert item.frames is not None  # a message read from the socket
                    _run_callback(saved, item.frames)
            except Exception:
                kernel_log(backend).error("ShellPump: could not hand a message back",
                                          exc_info=True)
        if requeued:
            backend.kernel.io_loop.add_callback(lambda: None)  # wake the dispatch loop
        try:
            # Our polling consumed the socket's edge-triggered read event: let the stream
            # re-check, so a message that arrived after our last read is not stranded.
            stream._rebuild_io_state()
        except Exception:
            stream.io_loop.add_callback(lambda: stream._handle_events(stream.socket, 0))


def _fd_waiter(socket: Any) -> Callable[..., Any]:
    """``wait(ms)``: sleep until the zmq socket's fd signals activity, or ``ms`` elapse.

    The fd is edge-triggered (readable when the socket's state *may* have changed), so the pump
    reads the socket, which re-arms it, after every wake-up and after anything else may have
    used the socket. A bare poll(2) keeps an idle wait about as cheap as ``time.sleep``;
    ``zmq.Poller`` costs ~1.5x more per wake-up.
    """
    import select

    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(socket.FD, select.POLLIN)
        return poller.poll
    zpoller = zmq.Poller()
    zpoller.register(socket, zmq.POLLIN)
    return zpoller.poll


def kernel_log(backend: _Backend) -> logging.Logger:
    return getattr(backend.kernel, "log", None) or _log


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def _finish_awaitable(result: Any, kernel: Any) -> None:
    """Run an async handler (ipykernel's ``comm_info_request``) that never really suspends."""
    if inspect.iscoroutine(result):
        try:
            result.send(None)
        except StopIteration:
            return
        result.close()
        kernel.log.warning("ShellPump: an async shell handler suspended during a wait; dropped")
    else:
        asyncio.ensure_future(result)


def _run_callback(callback: Callable, frames: list) -> None:
    """What ``ZMQStream._run_callback`` does with a received message."""
    result = callback(frames)
    if inspect.isawaitable(result):
        future = asyncio.ensure_future(result)

        def _log_error(f: asyncio.Future) -> None:
            if not f.cancelled() and f.exception() is not None:
                _log.error("Uncaught exception in shell handler", exc_info=f.exception())

        future.add_done_callback(_log_error)


# --------------------------------------------------------------------------------------------
# Peeking in the shell-channel thread (7.x)
# --------------------------------------------------------------------------------------------
OnMessage = Callable[[str, Any, str], Any]


class CommRegistry:
    """Thread-safe ``comm_id -> callback(comm_id, data, msg_id)``; pass it to
    :func:`watch_comms` as ``on_message``.

    Callbacks run in ipykernel's shell-channel thread (7.x) as soon as a ``comm_msg`` for their
    comm arrives, even while a cell runs or waits in the queue; keep them short and non-blocking
    (record the event, set a flag). The kernel still dispatches the same message to the comm's
    handler later, so make the effect idempotent on ``msg_id``. Exceptions are logged.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: dict[str, OnMessage] = {}

    def register(self, comm_id: str, callback: OnMessage) -> None:
        with self._lock:
            self._callbacks[comm_id] = callback

    def unregister(self, comm_id: str) -> None:
        with self._lock:
            self._callbacks.pop(comm_id, None)

    def __contains__(self, comm_id: object) -> bool:
        with self._lock:
            return comm_id in self._callbacks

    def __call__(self, comm_id: str, data: Any, msg_id: str) -> bool:
        """Call the callback registered for ``comm_id``; False if there is none."""
        with self._lock:
            callback = self._callbacks.get(comm_id)
        if callback is None:
            return False
        callback(comm_id, data, msg_id)
        return True


class _Peeker:
    """Wraps the shell-channel thread's receive callback: peek, then forward unchanged."""

    def __init__(self, kernel: Any, inner: Callable, on_message: OnMessage):
        self.kernel = kernel
        self.inner = inner
        self.on_message = on_message
        self.active = True

    def __call__(self, frames: list) -> Any:
        if self.active:
            try:
                found = _peek_comm_msg(self.kernel.session, frames)
                if found is not None:
                    self.on_message(*found)
            except Exception:
                self.kernel.log.error("nbdurable: comm watcher failed", exc_info=True)
        return self.inner(frames)


def _router_stream(kernel: Any) -> Any | None:
    """7.x: the ROUTER stream read by the shell-channel thread; None elsewhere."""
    if not _Backend7.matches(_major_version(), kernel):
        return None
    stream = getattr(kernel, "shell_stream", None)
    return stream if _is_stream(stream) else None


def watch_comms(kernel: Any, on_message: OnMessage) -> None:
    """Report every signed ``comm_msg`` as ``on_message(comm_id, data, msg_id)`` the moment the
    kernel receives it, from ipykernel 7's shell-channel thread (before it is queued behind a
    running cell). Idempotent: a second call replaces ``on_message``.

    On ipykernel 6 (and unknown kernels) this does nothing: there, a message read while the
    waiting cell was queued sits in ``kernel.msg_queue``, which :class:`ShellPump` drains.
    """
    stream = _router_stream(kernel)
    if stream is None:
        return
    current = stream._recv_callback
    if isinstance(current, _Peeker):
        current.on_message = on_message
        current.active = True
        return
    existing = getattr(stream, "_nbdurable_peeker", None)
    if isinstance(existing, _Peeker):  # someone wrapped ours: re-enable it where it is
        existing.on_message = on_message
        existing.active = True
        return
    peeker = _Peeker(kernel, current, on_message)
    stream._nbdurable_peeker = peeker
    stream._recv_callback = peeker  # one attribute store: atomic for the other thread


def unwatch_comms(kernel: Any) -> None:
    """Undo :func:`watch_comms` (no-op if not installed)."""
    stream = _router_stream(kernel)
    if stream is None:
        return
    peeker = getattr(stream, "_nbdurable_peeker", None)
    if not isinstance(peeker, _Peeker):
        return
    peeker.active = False
    if stream._recv_callback is peeker:
        stream._recv_callback = peeker.inner
        del stream._nbdurable_peeker
