"""nbdurable: durable execution for Jupyter notebooks.

``%load_ext nbdurable``, then ``%%durable NAME`` makes a cell a durable step: its outputs and the
variables it produces are checkpointed in a DuckDB log, and a restarted kernel replays completed
steps instead of running them again.

The names below are imported lazily so that ``import nbdurable`` (and ``%load_ext``) stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "configure": "nbdurable.settings",
    "step": "nbdurable.steps",
    "once": "nbdurable.steps",
    "once_reset": "nbdurable.steps",
    "once_resolve": "nbdurable.steps",
    "history": "nbdurable.reports",
    "runs": "nbdurable.reports",
    "log": "nbdurable.reports",
    "reset": "nbdurable.resets",
    "run": "nbdurable.batch",
    "RunResult": "nbdurable.batch",
    "errors": "nbdurable.errors",
    "NbdurableError": "nbdurable.errors",
    "WaitTimeout": "nbdurable.errors",
    "sleep": "nbdurable.waits",
    "wait_for_event": "nbdurable.waits",
    "wait_any": "nbdurable.waits",
    "wait_all": "nbdurable.waits",
    "sleep_async": "nbdurable.waits",
    "wait_for_event_async": "nbdurable.waits",
    "wait_any_async": "nbdurable.waits",
    "wait_all_async": "nbdurable.waits",
    "Sleep": "nbdurable.waits",
    "Event": "nbdurable.waits",
    "WaitResult": "nbdurable.waits",
    "push_event": "nbdurable.events",
    "list_events": "nbdurable.events",
    "trust": "nbdurable.trusts",
    "sql": "nbdurable.reports",
    "gc": "nbdurable.cleanup",
    "event_button": "nbdurable.ipython.panel",
}

__all__ = sorted([*_LAZY, "load_ipython_extension", "unload_ipython_extension", "__version__"])


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbdurable' has no attribute {name!r}")
    mod = import_module(module)
    value = mod if name == "errors" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__():
    return __all__


def load_ipython_extension(ipython) -> None:
    """``%load_ext nbdurable``: register the magics; loading twice is harmless."""
    from .ipython import load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext nbdurable``: remove everything ``load_ipython_extension`` registered."""
    from .ipython import unload

    unload(ipython)


if TYPE_CHECKING:  # pragma: no cover
    from . import errors
    from .errors import NbdurableError, WaitTimeout
    from .events import list_events, push_event
    from .ipython.panel import event_button
    from .waits import (Event, Sleep, WaitResult, sleep, sleep_async, wait_all, wait_all_async,
                        wait_any, wait_any_async, wait_for_event, wait_for_event_async)
    from .batch import RunResult, run
    from .reports import history, log, runs
    from .resets import reset
    from .settings import configure
    from .steps import once, once_reset, once_resolve, step
    from .trusts import trust
    from .reports import sql
    from .cleanup import gc
