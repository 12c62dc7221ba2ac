"""The run viewer: ``nbdurable.view()`` and ``%durable_log [RUN]``.

An ipywidgets panel (no front-end extension): a run selector, the run's header, steps and their
timeline, waits (with the wait panel's buttons), children and events, and actions — push an
event, reset from a step (after a confirmation), fork from a step. A background thread reads the
log's write generation a few times a second (one ``pread``) and re-renders only when it moved,
or every second while a step runs or waits (durations, countdowns); it reads nothing else when
the log is idle. The displayed bundle also carries the same tables as ``text/html``, so a saved
notebook, nbconvert or papermill output shows a snapshot where no kernel runs.
"""

from __future__ import annotations

import threading
import time
from html import escape
from typing import Any

from nbdurable.engine import context, events, forks, resets, runview
from nbdurable.engine.context import LogArg
from nbdurable.ipython import viewhtml
from nbdurable.ipython.panel import EventControls

LOOK_EVERY = 0.25  # seconds between two reads of the log's write generation
LIVE_EVERY = 1.0  # seconds between two renders while a step runs or waits
_ALL = "(replay every step)"


def view(run: str | None = None, *, log: LogArg = None) -> RunViewer:
    """A live view of ``run`` (default: this notebook's run) in ``log``; display it (it is the
    value of the cell, or ``display(nbdurable.view())``)."""
    db, run = context.locate(run, log)
    return RunViewer(run, db)


class RunViewer:
    """The widget behind :func:`view`; ``box`` is what is displayed."""

    def __init__(self, run: str, db: Any):
        import ipywidgets as w

        self.run, self.db = run, db
        self.current: runview.RunView | None = None
        self.runs = w.Dropdown(description="run", layout=w.Layout(width="auto"))
        self.summary, self.tables, self.message = w.HTML(), w.HTML(), w.HTML()
        self.buttons = w.VBox()
        self.box = w.VBox([self.runs, self.summary, self.tables, self.buttons,
                           self._actions(), self.message])
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._keys: tuple[str, ...] = ()
        self._controls: list[EventControls] = []
        self.refresh()
        self.runs.observe(self._switch, names="value")
        threading.Thread(target=self._watch, name="nbdurable-viewer", daemon=True).start()

    # -- display ---------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = dict(self.box._repr_mimebundle_(**kwargs))
        bundle["text/html"] = self.html()
        return bundle

    def html(self) -> str:
        """The static copy: the current snapshot's tables."""
        return viewhtml.render(self.current) if self.current else ""

    def refresh(self) -> None:
        """Read the log and render (also from the watching thread)."""
        with self._lock:
            try:
                self.current = runview.snapshot(self.run, log=self.db)
            except Exception as exc:  # a damaged log, a run gone: say it, keep the panel
                self._say(f"{type(exc).__name__}: {exc}", error=True)
                return
            view = self.current
            if list(self.runs.options) != list(view.runs):
                self.runs.options = view.runs
            self.runs.value = view.run
            self.summary.value = viewhtml.header(view)
            self.tables.value = (viewhtml.steps(view) + viewhtml.waits(view)
                                 + viewhtml.children(view) + viewhtml.events(view))
            self._step_choices(view)
            self._wait_buttons(view)

    def close(self) -> None:
        self._stop.set()
        self.box.close()

    def _watch(self) -> None:
        seen, rendered = self.db.generation(), time.monotonic()
        while not self._stop.wait(LOOK_EVERY):
            if getattr(self.box, "comm", None) is None:  # the widget was closed
                return
            generation = self.db.generation()
            live = self.current is not None and any(
                s.status in (runview.StepStatus.RUNNING, runview.StepStatus.WAITING)
                for s in self.current.steps)
            if generation != seen or (live and time.monotonic() - rendered >= LIVE_EVERY):
                seen, rendered = generation, time.monotonic()
                self.refresh()

    def _switch(self, change: dict[str, Any]) -> None:
        if change["new"] and change["new"] != self.run:
            self.run = change["new"]
            self.refresh()

    def _say(self, text: str, *, error: bool = False) -> None:
        colour = "#b31d28" if error else "#2e7d32"
        self.message.value = f'<span style="color:{colour}">{escape(text)}</span>'

    # -- waits: the wait panel's buttons ---------------------------------------------------------
    def _wait_buttons(self, view: runview.RunView) -> None:
        keys = tuple(dict.fromkeys(k for s in view.steps for w in s.waits if w.waiting
                                   for k in w.keys))
        if keys == self._keys:
            return
        self._keys = keys
        for old in self._controls:
            old.close()
        self._controls = [EventControls(k, run=view.run, log=self.db, label=None, field=True,
                                        on_error=lambda text: self._say(text, error=True))
                          for k in keys]
        self.buttons.children = [c.widget() for c in self._controls]

    # -- actions ---------------------------------------------------------------------------------
    def _actions(self) -> Any:
        import ipywidgets as w

        auto = w.Layout(width="auto")
        self.push_key = w.Text(placeholder="event key", layout=w.Layout(width="140px"))
        self.push_payload = w.Text(placeholder="payload (JSON, optional)")
        self.push_button = w.Button(description="push event", layout=auto)
        self.step_choice = w.Dropdown(description="from step", layout=auto)
        self.reset_button = w.Button(description="reset from step…", layout=auto)
        self.confirm_button = w.Button(description="confirm reset", button_style="danger",
                                       layout=w.Layout(width="auto", display="none"))
        self.cancel_button = w.Button(description="cancel",
                                      layout=w.Layout(width="auto", display="none"))
        self.fork_name = w.Text(placeholder="new run id", layout=w.Layout(width="140px"))
        self.fork_button = w.Button(description="fork", layout=auto)
        self.push_button.on_click(lambda _b: self.push())
        self.reset_button.on_click(lambda _b: self.ask_reset())
        self.confirm_button.on_click(lambda _b: self.reset())
        self.cancel_button.on_click(lambda _b: self._confirming(False))
        self.fork_button.on_click(lambda _b: self.fork())
        return w.VBox([w.HBox([self.push_key, self.push_payload, self.push_button]),
                       w.HBox([self.step_choice, self.reset_button, self.confirm_button,
                               self.cancel_button, self.fork_name, self.fork_button])])

    def _step_choices(self, view: runview.RunView) -> None:
        steps = [s.step for s in view.steps]
        options = [*steps, _ALL]
        if list(self.step_choice.options) != options:
            value = self.step_choice.value
            self.step_choice.options = options
            self.step_choice.value = value if value in options else (steps[0] if steps
                                                                     else _ALL)

    def push(self) -> None:
        """Push the event the key and payload fields name."""
        key = self.push_key.value.strip()
        try:
            payload = events.parse_payload(self.push_payload.value)
            event_id = events.push_event(key, payload, run=self.run, log=self.db)
        except Exception as exc:  # a bad key or payload: one line, nothing pushed
            self._say(f"not pushed: {exc}", error=True)
            return
        self._say(f"pushed `{key}` to run {self.run} (id {event_id})")

    def ask_reset(self) -> None:
        step = self.step_choice.value
        if step in (None, _ALL):
            self._say("choose the step to reset from", error=True)
            return
        self._confirming(True)
        self._say(f"reset {step} and every step after it? Their checkpoints stop counting; "
                  "confirm to go on")

    def reset(self) -> None:
        """The confirmed reset from the chosen step."""
        self._confirming(False)
        try:
            done = resets.reset(self.run, from_step=self.step_choice.value, log=self.db)
        except Exception as exc:
            self._say(f"not reset: {exc}", error=True)
            return
        self._say(f"reset {', '.join(done)}: they execute again the next time they are reached")

    def fork(self) -> None:
        """Fork the run into the new run id, from the chosen step."""
        step = self.step_choice.value
        new_run = self.fork_name.value.strip()
        try:
            kept = forks.fork(self.run, new_run, None if step == _ALL else step, log=self.db)
        except Exception as exc:
            self._say(f"not forked: {exc}", error=True)
            return
        self._say(f"forked into {new_run}: {len(kept)} step(s) replay; `%durable_run "
                  f"{new_run}` switches this notebook to it")

    def _confirming(self, on: bool) -> None:
        self.confirm_button.layout.display = None if on else "none"
        self.cancel_button.layout.display = None if on else "none"
        self.reset_button.disabled = on
