"""The public names of ``nbdurable``: each resolves to what the docs say, even after every
submodule was imported (a submodule named like a function would shadow it)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import nbdurable


def test_public_names_survive_importing_every_submodule():
    for info in pkgutil.walk_packages(nbdurable.__path__, "nbdurable."):
        importlib.import_module(info.name)
    for name in nbdurable.__all__:
        value = getattr(nbdurable, name)
        if name == "errors":
            assert inspect.ismodule(value)
        elif name != "__version__":
            assert not inspect.ismodule(value), f"nbdurable.{name} is a module"
            assert callable(value), f"nbdurable.{name} is not callable"


#: The public API. Changing it is a decision: update this list, the README and the changelog.
PUBLIC = {
    "Child", "ChildError", "as_completed", "children", "map", "set_result", "spawn",
    "spawn_notebook",
    "Event", "NbdurableError", "RunResult", "Sleep", "WaitResult", "WaitTimeout", "__version__",
    "configure", "errors", "event_button", "fork", "gc", "history", "list_events",
    "load_ipython_extension", "log", "once", "once_reset", "once_resolve", "push_event", "reset",
    "run", "runs", "sleep", "sleep_async", "sql", "step", "trust", "unload_ipython_extension",
    "resume", "worker", "RunSuspended",
    "serve", "view",
    "wait_all", "wait_all_async", "wait_any", "wait_any_async", "wait_for_event",
    "wait_for_event_async",
}
ERRORS = {
    "BodyTooLargeError", "EventIdConflictError", "ForbiddenError", "NoLogError",
    "NotAuthenticatedError", "RequestError",
    "CheckpointError", "ChildError", "ConfigError", "LogBusyError", "LogCorruptError", "LogError",
    "LogVersionError", "NbdurableError", "NotALogError", "OnceInDoubtError", "RunBusyError",
    "SignatureError", "StepCollisionError", "StepError", "UnknownRunError", "UsageError",
    "WaitMismatchError",
    "WaitTimeout",
}
WARNINGS = {"IntegrityWarning", "JournalDamageWarning", "LogHeldWarning", "UnstorableValueWarning"}


def test_the_public_names_are_pinned_and_every_error_has_the_one_base():
    from nbdurable import errors

    assert set(nbdurable.__all__) == PUBLIC
    found = {name for name, value in vars(errors).items()
             if inspect.isclass(value) and issubclass(value, Exception)
             and value.__module__ == errors.__name__}
    assert found == ERRORS | WARNINGS
    assert all(issubclass(getattr(errors, name), UserWarning) for name in WARNINGS)
    assert all(issubclass(getattr(errors, name), errors.NbdurableError) for name in ERRORS)
    # not an error: a signal that stops a batch kernel, out of reach of `except Exception`
    assert issubclass(errors.RunSuspended, BaseException)
    assert not issubclass(errors.RunSuspended, Exception)
