"""Which log file and which run: explicit settings, environment, then the notebook's identity.

Resolution order, first match wins.

Log file:
    ``configure(log=...)`` > ``NBDURABLE_LOG`` > ``.nbdurable/log.duckdb`` under the working
    directory of the kernel.

Run id:
    ``configure(run=...)`` (also ``%durable_run RUN``) > ``NBDURABLE_RUN`` > a string variable
    ``run_id`` in the namespace (a papermill parameter) > the notebook's file name, taken from
    VS Code's ``__vsc_ipynb_file__`` or Jupyter's ``__session__`` / ``JPY_SESSION_NAME`` >
    ``"default"``. A restarted kernel of the same notebook therefore finds its run again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nbdurable.errors import ConfigError

DEFAULT_LOG = Path(".nbdurable") / "log.duckdb"
DEFAULT_RUN = "default"
MAX_RUN_LENGTH = 200


@dataclass
class Settings:
    log: str | None = None
    run: str | None = None
    #: the default executor of children (``nbdurable.map``/``spawn``): see
    #: :mod:`nbdurable.engine.executors`; None is the local process pool
    executor: object | None = None


#: What ``configure`` set in this process (like ``logging.basicConfig``: process-wide by design).
_configured = Settings()


def configure(*, log: str | os.PathLike[str] | None = None, run: str | None = None,
              executor: object | None = None) -> None:
    """Set the log file, the run id and/or the default executor of children for this process
    (``None`` leaves a setting as is). ``executor``: ``"processes"`` (the default local pool),
    ``"threads"``, a ``concurrent.futures.Executor`` or a ``dask.distributed.Client``."""
    if log is not None:
        _configured.log = str(_check_log_path(Path(log)))
    if run is not None:
        _configured.run = check_run_id(run)
    if executor is not None:
        _configured.executor = executor


def configured_executor() -> object | None:
    """The default executor of children ``configure(executor=...)`` set, if any."""
    return _configured.executor


def configured_log() -> str | None:
    """The log path ``configure(log=...)`` set in this process (absolute), if any."""
    return _configured.log


def reset() -> None:
    """Forget what ``configure`` set (back to environment and defaults)."""
    _configured.log = None
    _configured.run = None
    _configured.executor = None
    _log_paths.clear()


def log_path() -> Path:
    """The absolute path of the log file to use."""
    raw = _configured.log or os.environ.get("NBDURABLE_LOG") or str(DEFAULT_LOG)
    key = (raw, os.getcwd())
    found = _log_paths.get(key)
    if found is None:
        found = _log_paths[key] = _check_log_path(Path(raw).expanduser())
    return found


_log_paths: dict[tuple[str, str], Path] = {}


def run_id(namespace: Mapping[str, object] | None = None) -> str:
    """The run id to use, given the notebook's namespace (for its identity)."""
    if _configured.run:
        return _configured.run
    env = os.environ.get("NBDURABLE_RUN")
    if env:
        return check_run_id(env, source="NBDURABLE_RUN")
    ns = namespace or {}
    param = ns.get("run_id")
    if isinstance(param, str) and param:
        return check_run_id(param, source="the run_id parameter")
    notebook = notebook_path(ns)
    return Path(notebook).name if notebook else DEFAULT_RUN


def notebook_path(namespace: Mapping[str, object]) -> str | None:
    """The notebook's path as the front end told the kernel, if it did."""
    for value in (namespace.get("__vsc_ipynb_file__"), namespace.get("__session__"),
                  os.environ.get("JPY_SESSION_NAME")):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def suspend_after() -> float | None:
    """Seconds after which a wait still unmet suspends the run: set by the batch runner for its
    kernels (``nbdurable run --suspend-after``) as ``NBDURABLE_SUSPEND_AFTER``; None elsewhere
    (an interactive kernel is never suspended)."""
    raw = os.environ.get("NBDURABLE_SUSPEND_AFTER")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"NBDURABLE_SUSPEND_AFTER must be a number of seconds, got {raw!r}"
                          ) from None
    if not value >= 0:
        raise ConfigError(f"NBDURABLE_SUSPEND_AFTER must be >= 0, got {raw!r}")
    return value


def check_run_id(run: object, *, source: str = "the run id") -> str:
    if not isinstance(run, str) or not run.strip():
        raise ConfigError(f"{source} must be a non-empty string, got {run!r}")
    run = run.strip()
    if len(run) > MAX_RUN_LENGTH or any(ord(c) < 32 for c in run):
        raise ConfigError(f"{source} {run[:40]!r}... is not usable: keep it under "
                          f"{MAX_RUN_LENGTH} printable characters")
    return run


def check_log_arg(log: str | os.PathLike[str]) -> Path:
    """A log path given as an argument (``log=``, ``--log``)."""
    return _check_log_path(Path(log))


def _check_log_path(path: Path) -> Path:
    path = path.expanduser().absolute()
    if path.is_dir():
        raise ConfigError(f"log path {path} is a directory; give a file path such as "
                          f"{path / 'log.duckdb'}")
    return path
