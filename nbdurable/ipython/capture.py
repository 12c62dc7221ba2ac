"""Recording a cell's outputs exactly as the front end receives them, and showing them again.

Recording wraps the kernel session's ``send`` for the length of the cell and keeps a copy of each
IOPub output message whose parent is this cell's ``execute_request``. Output therefore streams
live as usual, and what is recorded includes output of threads, of subprocesses and of C code
(which ipykernel forwards from file descriptors 1 and 2), rich displays and the result.

Replaying goes through the normal kernel APIs, so the messages get the current parent and
execution count: streams are written to ``sys.stdout``/``sys.stderr``, displays are published,
and the result goes through the display hook to become this cell's ``Out[n]``.
"""

from __future__ import annotations

import array
import fcntl
import os
import platform
import sys
import termios
import threading
import time
from typing import Any

OUTPUT_TYPES = frozenset({"stream", "display_data", "update_display_data", "execute_result",
                          "error", "clear_output"})
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_MISSING = object()
# How long the end of a cell waits for ipykernel to forward bytes already written to fd 1 and 2.
FD_SETTLE_TIMEOUT = 1.0
# The number of read(2) in /proc/<pid>/task/<tid>/syscall, where Linux shows it.
_READ_SYSCALL = {"x86_64": b"0", "aarch64": b"63"}.get(platform.machine())


def _msg_id(header: Any) -> str | None:
    if isinstance(header, dict):
        return (header.get("header") or header).get("msg_id")
    return None


class OutputRecorder:
    """Copies the IOPub output messages of one execute request while they are sent."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.messages: list[dict] = []
        self._lock = threading.Lock()
        self._original = None
        self._previous: Any = _MISSING
        self._parent_id: str | None = None

    def start(self) -> None:
        session = self.kernel.session
        self._parent_id = _msg_id(current_parent(self.kernel))
        self._previous = session.__dict__.get("send", _MISSING)
        self._original = session.send
        original = self._original

        def send(stream, msg_or_type, content=None, parent=None, *args, **kwargs):
            self._observe(msg_or_type, content, parent)
            return original(stream, msg_or_type, content, parent, *args, **kwargs)

        session.send = send

    def _observe(self, msg_or_type, content, parent) -> None:
        if isinstance(msg_or_type, dict):
            msg_type = msg_or_type.get("header", {}).get("msg_type")
            content, parent = msg_or_type.get("content"), msg_or_type.get("parent_header")
        else:
            msg_type = msg_or_type
        if msg_type not in OUTPUT_TYPES or _msg_id(parent) != self._parent_id:
            return
        with self._lock:
            self.messages.append({"msg_type": msg_type, "content": _plain(content)})

    def stop(self) -> list[dict]:
        """Flush pending output, stop recording and return the messages (streams merged)."""
        _flush_pending()
        deadline = time.monotonic() + FD_SETTLE_TIMEOUT
        for stream in (sys.stdout, sys.stderr):
            _settle_fd_output(stream, deadline)
        _flush_pending()  # what the watchers forwarded meanwhile
        session = self.kernel.session
        if self._original is not None:
            # Put back exactly what was there: usually nothing (the class's method).
            if self._previous is _MISSING:
                session.__dict__.pop("send", None)
            else:
                session.send = self._previous
            self._original = None
        with self._lock:
            return merge_streams(self.messages)


def _flush_pending() -> None:
    for stream in (sys.stdout, sys.stderr):
        if not _has_pending_output(stream):
            continue
        try:
            stream.flush()
        except Exception:  # a closed or replaced stream must not lose the checkpoint
            pass


def _settle_fd_output(stream, deadline: float) -> None:
    """Wait until ipykernel's watcher thread has forwarded every byte already written to the
    stream's file descriptor (by a subprocess or C code): it reads a pipe in its own thread, which
    on a loaded machine runs late, and what it forwards after the cell ends is not recorded."""
    fid, thread = getattr(stream, "_fid", None), getattr(stream, "watch_fd_thread", None)
    if fid is None or thread is None or not getattr(stream, "_should_watch", False):
        return
    while thread.is_alive() and not _watcher_idle(fid, thread.native_id):
        if time.monotonic() >= deadline:
            return
        time.sleep(0.0005)


def _watcher_idle(fid: int, tid: int | None) -> bool:
    """Nothing left in the pipe, and its reader is blocked reading it again (so it has forwarded
    what it read before). Without Linux's /proc, an empty pipe has to do."""
    try:
        unread = array.array("i", [0])
        fcntl.ioctl(fid, termios.FIONREAD, unread)
    except OSError:  # the pipe is gone: nothing to wait for
        return True
    if unread[0]:
        return False
    if _READ_SYSCALL is None or tid is None:
        return True
    try:  # os.read, not open(): a text file costs ~100 µs here, this ~14 µs
        fd = os.open(f"/proc/self/task/{tid}/syscall", os.O_RDONLY | os.O_CLOEXEC)
        try:
            fields = os.read(fd, 256).split()
        finally:
            os.close(fd)
    except OSError:
        return True
    return fields[:1] == [_READ_SYSCALL] and len(fields) > 1 and int(fields[1], 16) == fid


def _has_pending_output(stream) -> bool:
    """ipykernel's streams say whether a flush is pending (a flush costs a round trip to the
    IO thread); any other stream is flushed."""
    return (getattr(stream, "_flush_pending", True)
            or getattr(stream, "_subprocess_flush_pending", False))


def current_parent(kernel) -> dict:
    """The header of the shell message being handled: ``get_parent("shell")`` on ipykernel 6.29
    and 7, ``get_parent()`` before, ``_parent_header`` on kernels without either."""
    get_parent = getattr(kernel, "get_parent", None)
    if get_parent is not None:
        try:
            return get_parent("shell") or {}
        except TypeError:
            return get_parent() or {}
    return getattr(kernel, "_parent_header", {}) or {}


def _plain(content: Any) -> Any:
    """A JSON-ready copy of a message's content."""
    if isinstance(content, dict):
        return {k: _plain(v) for k, v in content.items()}
    if isinstance(content, (list, tuple)):
        return [_plain(v) for v in content]
    if isinstance(content, (str, int, float, bool)) or content is None:
        return content
    return str(content)


def merge_streams(messages: list[dict]) -> list[dict]:
    """Join consecutive stream messages of the same name, as the front end does."""
    merged: list[dict] = []
    for msg in messages:
        prev = merged[-1] if merged else None
        if (prev is not None and msg["msg_type"] == "stream" and prev["msg_type"] == "stream"
                and prev["content"].get("name") == msg["content"].get("name")):
            prev["content"] = {**prev["content"],
                               "text": prev["content"]["text"] + msg["content"]["text"]}
        else:
            merged.append({"msg_type": msg["msg_type"], "content": dict(msg["content"])})
    return merged


# -- showing recorded outputs again ---------------------------------------------------------------

class RecordedResult:
    """The recorded result of a cell: the display hook shows its recorded MIME bundle."""

    def __init__(self, data: dict, metadata: dict):
        self._data, self._metadata = data, metadata

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self._data, self._metadata

    def __repr__(self) -> str:
        return str(self._data.get("text/plain", "<recorded result>"))


def replay(shell, messages: list[dict]) -> RecordedResult | None:
    """Show recorded messages again; return the result for the display hook, if any."""
    result = None
    wrote = False  # stream text not flushed yet: a display must go through the publisher
    for msg in messages:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            # No flush: the display publisher flushes the streams before each display, and the
            # kernel flushes them at the end of the cell; a flush waits for the IO thread.
            stream = sys.stderr if content.get("name") == "stderr" else sys.stdout
            stream.write(content.get("text", ""))
            wrote = True
        elif kind in ("display_data", "update_display_data"):
            _publish(shell, content, update=kind == "update_display_data", direct=not wrote)
        elif kind == "clear_output":
            from IPython.display import clear_output

            clear_output(wait=bool(content.get("wait")))
        elif kind == "execute_result":
            data = _without_widgets(content.get("data", {}))
            result = RecordedResult(data, content.get("metadata", {}))
    return result


def _publish(shell, content: dict, *, update: bool, direct: bool = False) -> None:
    data = _without_widgets(content.get("data", {}))
    if not data:
        return
    metadata = content.get("metadata") or {}
    transient = content.get("transient") or {}
    if direct and _send_display(shell, data, metadata, transient, update):
        return
    kwargs: dict[str, Any] = {"metadata": metadata}
    if transient:
        kwargs["transient"] = transient
    if update:
        kwargs["update"] = True
    shell.display_pub.publish(data, **kwargs)


def _send_display(shell, data: dict, metadata: dict, transient: dict, update: bool) -> bool:
    """Send a display message as ipykernel's publisher does, without its flush of the output
    streams (two round trips to the IO thread) when no stream text is pending."""
    pub = shell.display_pub
    session, socket = getattr(pub, "session", None), getattr(pub, "pub_socket", None)
    if session is None or socket is None or not hasattr(pub, "parent_header"):
        return False
    msg_type = "update_display_data" if update else "display_data"
    content = {"data": data, "metadata": metadata, "transient": transient}
    msg = session.msg(msg_type, content, parent=pub.parent_header)
    session.send(socket, msg, ident=getattr(pub, "topic", None))
    return True


def _without_widgets(data: dict) -> dict:
    """Widget views cannot come back from a recording (their comms are gone), and their
    ``text/plain`` is only the widget's repr (``VBox(children=(HTML(value='⏳ waiting for…``,
    which reads as if the replay waited): keep what else the bundle has (the viewer's
    ``text/html``), else nothing."""
    if WIDGET_VIEW not in data:
        return data
    return {k: v for k, v in data.items() if k not in (WIDGET_VIEW, "text/plain")}


def notice(shell, text: str, *, kind: str, detail: dict) -> None:
    """A one-line note (replayed / executing again, and why) shown in the cell's output."""
    html = (f'<div style="color:#6a737d;font-size:0.85em;font-family:monospace">'
            f'{_escape(text)}</div>')
    data = {"text/plain": text, "text/html": html}
    metadata = {"nbdurable": {"kind": kind, **detail}}
    if not _send_display(shell, data, metadata, {}, False):
        shell.display_pub.publish(data, metadata=metadata)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
