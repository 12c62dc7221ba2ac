"""nbdurable: durable execution for Jupyter notebooks.

``%load_ext nbdurable``, then ``%%durable NAME`` makes a cell a durable step: its outputs and the
variables it produces are checkpointed in a DuckDB log, and a restarted kernel replays completed
steps instead of running them again.

The names below are imported lazily so that ``import nbdurable`` (and ``%load_ext``) stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "configure": "nbdurable.settings",
    "step": "nbdurable.engine.steps",
    "once": "nbdurable.engine.steps",
    "once_reset": "nbdurable.engine.steps",
    "once_resolve": "nbdurable.engine.steps",
    "history": "nbdurable.engine.history",
    "runs": "nbdurable.engine.history",
    "log": "nbdurable.engine.history",
    "reset": "nbdurable.engine.resets",
    "fork": "nbdurable.engine.forks",
    "run": "nbdurable.batch.runner",
    "resume": "nbdurable.batch.runner",
    "worker": "nbdurable.batch.worker",
    "RunSuspended": "nbdurable.errors",
    "RunResult": "nbdurable.batch.runner",
    "errors": "nbdurable.errors",
    "NbdurableError": "nbdurable.errors",
    "WaitTimeout": "nbdurable.errors",
    "sleep": "nbdurable.engine.waits",
    "wait_for_event": "nbdurable.engine.waits",
    "wait_any": "nbdurable.engine.waits",
    "wait_all": "nbdurable.engine.waits",
    "sleep_async": "nbdurable.engine.waits",
    "wait_for_event_async": "nbdurable.engine.waits",
    "wait_any_async": "nbdurable.engine.waits",
    "wait_all_async": "nbdurable.engine.waits",
    "Sleep": "nbdurable.engine.waits",
    "Event": "nbdurable.engine.waits",
    "WaitResult": "nbdurable.engine.waits",
    "push_event": "nbdurable.engine.events",
    "list_events": "nbdurable.engine.events",
    "trust": "nbdurable.engine.trusts",
    "sql": "nbdurable.engine.history",
    "gc": "nbdurable.engine.cleanup",
    "event_button": "nbdurable.ipython.panel",
    "view": "nbdurable.ipython.viewer",
    "map": "nbdurable.engine.children",
    "spawn": "nbdurable.engine.children",
    "as_completed": "nbdurable.engine.children",
    "Child": "nbdurable.engine.children",
    "ChildError": "nbdurable.errors",
    "children": "nbdurable.engine.history",
    "set_result": "nbdurable.engine.results",
    "spawn_notebook": "nbdurable.batch.children",
    "serve": "nbdurable.http.serve",
}

__all__ = sorted([*_LAZY, "load_ipython_extension", "unload_ipython_extension", "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbdurable' has no attribute {name!r}")
    mod = import_module(module)
    value = mod if name == "errors" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The Jupyter server extension (events over HTTP): :mod:`nbdurable.http.jupyter`."""
    return [{"module": "nbdurable.http.jupyter"}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbdurable``: register the magics; loading twice is harmless."""
    from nbdurable.ipython import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbdurable``: remove everything ``load_ipython_extension`` registered."""
    from nbdurable.ipython import unload

    unload(ipython)


if TYPE_CHECKING:  # pragma: no cover
    from nbdurable import (
        errors as errors,
    )
    from nbdurable.batch.children import (
        spawn_notebook as spawn_notebook,
    )
    from nbdurable.batch.runner import (
        RunResult as RunResult,
        run as run,
    )
    from nbdurable.engine.children import (
        Child as Child,
        as_completed as as_completed,
        map as map,
        spawn as spawn,
    )
    from nbdurable.engine.cleanup import (
        gc as gc,
    )
    from nbdurable.engine.events import (
        list_events as list_events,
        push_event as push_event,
    )
    from nbdurable.engine.forks import (
        fork as fork,
    )
    from nbdurable.engine.history import (
        children as children,
        history as history,
        log as log,
        runs as runs,
        sql as sql,
    )
    from nbdurable.engine.resets import (
        reset as reset,
    )
    from nbdurable.engine.results import (
        set_result as set_result,
    )
    from nbdurable.engine.steps import (
        once as once,
        once_reset as once_reset,
        once_resolve as once_resolve,
        step as step,
    )
    from nbdurable.engine.trusts import (
        trust as trust,
    )
    from nbdurable.engine.waits import (
        Event as Event,
        Sleep as Sleep,
        WaitResult as WaitResult,
        sleep as sleep,
        sleep_async as sleep_async,
        wait_all as wait_all,
        wait_all_async as wait_all_async,
        wait_any as wait_any,
        wait_any_async as wait_any_async,
        wait_for_event as wait_for_event,
        wait_for_event_async as wait_for_event_async,
    )
    from nbdurable.errors import (
        ChildError as ChildError,
        NbdurableError as NbdurableError,
        WaitTimeout as WaitTimeout,
    )
    from nbdurable.http.serve import (
        serve as serve,
    )
    from nbdurable.ipython.panel import (
        event_button as event_button,
    )
    from nbdurable.ipython.viewer import (
        view as view,
    )
    from nbdurable.settings import (
        configure as configure,
    )
