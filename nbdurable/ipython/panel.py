"""What a waiting cell shows, and buttons that push events.

While a durable wait blocks a cell, :class:`WaitPanel` shows what it waits for, a countdown for
sleeps and deadlines, and one button per awaited event (its description contains the event key)
with a field for an optional JSON payload. A click pushes the event; the wait sees it and the
cell carries on; the panel then says what fired. The panel keeps the kernel responsive with a
:class:`~nbdurable.ipython.pump.ShellPump` (widget messages are delivered while the cell blocks).

A click pushes with the click message's id as the event id, so the same click seen twice (by the
pump and by the shell-channel watcher, for a click sent while the cell was still queued) is one
event.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from nbdurable.engine import events
from nbdurable.ipython import capture
from nbdurable.ipython.pump import CommRegistry, ShellPump

_COUNTDOWN_EVERY = 1.0  # seconds between two updates of the countdown


def _parent_msg_id(kernel) -> str | None:
    """The id of the message being handled (a click's comm_msg), for an idempotent push."""
    try:
        parent = capture.current_parent(kernel) if kernel is not None else {}
    except Exception:
        return None
    return (parent.get("header") or {}).get("msg_id")


class EventControls:
    """A button (and optionally a payload field) that pushes one event."""

    def __init__(self, key: str, *, run: str | None, log, label: str | None,
                 payload: Any = None, field: bool, on_error=None):
        import ipywidgets as w

        from nbdurable.engine import context

        self.key = key
        self.log, self.run = context.locate(run, log)
        self.fixed_payload = events.check_payload(payload)
        self.button = w.Button(description=label or f"send `{key}`", tooltip=f"push event {key}",
                               button_style="primary", layout=w.Layout(width="auto"))
        self.field = w.Text(placeholder="payload (JSON, optional)") if field else None
        self.on_error = on_error
        self.kernel = _kernel()
        self._field_value: str | None = None
        self.button.on_click(lambda _b: self.click(_parent_msg_id(self.kernel)))
        if self.field is not None:
            self.field.observe(self._remember, names="value")
        _watch(self)

    def _remember(self, change) -> None:
        self._field_value = change["new"]

    def payload(self) -> Any:
        if self.field is None:
            return self.fixed_payload
        return events.parse_payload(self._field_value or self.field.value or "")

    def click(self, msg_id: str | None) -> None:
        try:
            events.push_event(self.key, self.payload(), run=self.run, log=self.log, id=msg_id)
        except Exception as exc:  # shown in the panel: a click must never kill the kernel
            if self.on_error is not None:
                self.on_error(f"{type(exc).__name__}: {exc}")
            else:
                raise

    def widget(self):
        import ipywidgets as w

        if self.field is None:
            return self.button
        return w.HBox([self.button, self.field])

    def close(self) -> None:
        _unwatch(self)
        self.button.disabled = True
        if self.field is not None:
            self.field.disabled = True


class WaitPanel:
    """The UI of one wait (installed with :func:`nbdurable.engine.waits.set_ui`)."""

    def __init__(self, wait):
        import ipywidgets as w
        from IPython.display import display

        self.wait = wait
        self.status = w.HTML()
        self.error = w.HTML()
        self.controls = [EventControls(key, run=wait.run, log=wait.log, label=None, field=True,
                                        on_error=self._show_error)
                         for key in dict.fromkeys(wait.keys())]
        self.box = w.VBox([self.status, *[c.widget() for c in self.controls], self.error])
        self._last_update = 0.0
        self._update(force=True)
        display(self.box)
        self.pump = _pump_for(_kernel())

    def _show_error(self, text: str) -> None:
        self.error.value = f'<span style="color:#b31d28">{_escape(text)}</span>'

    def _update(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_update < _COUNTDOWN_EVERY:
            return
        self._last_update = now
        text = f"⏳ waiting for {self.wait.describe()}"
        deadline = self.wait.next_deadline()
        if deadline is not None:
            from nbdurable.store.records import now as utcnow

            left = max(0, int((deadline - utcnow()).total_seconds()))
            text += f" — {left // 3600:d}:{left % 3600 // 60:02d}:{left % 60:02d} left"
        self.status.value = _escape(text)

    def tick(self, timeout: float) -> None:
        if self.pump is not None:
            self.pump.poll(timeout)
        else:
            time.sleep(timeout)
        self._update()

    def finished(self, text: str) -> None:
        self.status.value = _escape(f"✔ {text}")
        print(f"nbdurable: {text}")  # recorded with the cell's outputs: replays say it too

    def close(self) -> None:
        for c in self.controls:
            c.close()
        if self.pump is not None:
            self.pump.__exit__(None, None, None)
            self.pump = None


def event_button(key: str, payload: Any = None, *, run: str | None = None,
                 label: str | None = None):
    """A button that pushes the event ``key`` (with ``payload``) to ``run`` (default: this
    notebook's) when clicked. Show it anywhere: another cell, another notebook on the log."""
    events.check_key(key)
    return EventControls(key, run=run, log=None, label=label, payload=payload,
                          field=False).widget()


# -- plumbing -----------------------------------------------------------------------------------

def _kernel():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return getattr(shell, "kernel", None)


def _pump_for(kernel):
    if kernel is None:
        return None
    pump = ShellPump(kernel)
    pump.__enter__()
    return pump


#: comm id -> callback, fed by :func:`pump.watch_comms` (installed by the extension).
registry = CommRegistry()
_watched: dict[str, EventControls] = {}
_watched_lock = threading.Lock()


def _comm_id(widget) -> str | None:
    return getattr(widget, "comm_id", None) or getattr(getattr(widget, "comm", None),
                                                       "comm_id", None)


def _watch(controls: EventControls) -> None:
    """Let the shell-channel watcher see clicks on this button sent while a cell is queued."""
    widgets = [controls.button] + ([controls.field] if controls.field is not None else [])
    for widget in widgets:
        comm_id = _comm_id(widget)
        if comm_id:
            with _watched_lock:
                _watched[comm_id] = controls
            registry.register(comm_id, _on_queued_message)


def _unwatch(controls: EventControls) -> None:
    with _watched_lock:
        ids = [cid for cid, c in _watched.items() if c is controls]
        for cid in ids:
            del _watched[cid]
    for cid in ids:
        registry.unregister(cid)


def _on_queued_message(comm_id: str, data: dict, msg_id: str) -> None:
    """From the shell-channel thread: a message for one of our widgets, maybe stuck in the
    queue behind a running cell."""
    with _watched_lock:
        controls = _watched.get(comm_id)
    if controls is None:
        return
    if data.get("method") == "update" and "value" in (data.get("state") or {}):
        controls._field_value = data["state"]["value"]
    elif data.get("method") == "custom" and (data.get("content") or {}).get("event") == "click":
        if comm_id == _comm_id(controls.button):
            controls.click(msg_id)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
