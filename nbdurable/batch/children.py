"""Child notebooks: ``nbdurable.spawn_notebook`` runs a notebook as a child run of a cell.

A child notebook is a child like any other (keyed, fingerprinted, its result recorded by the
parent's kernel) whose work is a batch run (:func:`nbdurable.batch.runner.run`): its own kernel,
its own run id ``<parent run>:<key>`` in the same log, its output notebook. When the parent
cell executes again after a crash, a finished child returns its recorded result and an
unfinished one is *resumed* (its completed durable cells replay), not restarted. In the child,
``nbdurable.set_result(value)`` sets what the handle's ``.result()`` returns.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import xxhash

from nbdurable.batch import runner
from nbdurable.engine import children, context, results
from nbdurable.errors import UsageError

#: The threads that drive child notebooks (each waits on its own kernel): one per core.
_DRIVERS = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="nbdurable-notebook")


class ChildRunError(Exception):
    """Internal: a child run did not complete; its message is the run's one line."""


def spawn_notebook(path: str | os.PathLike[str], parameters: dict[str, Any] | None = None, *,
                   key: str | None = None, output: str | os.PathLike[str] | None = None,
                   max_restarts: int = 1) -> children.Child:
    """Run the notebook at ``path`` (with papermill ``parameters``) as a child run; returns its
    handle (``.result()``: what the child passed to ``set_result``; ``.run_id``,
    ``.output_path``). ``max_restarts``: fresh kernels that resume the child after its kernel
    died, before it counts as failed."""
    source = Path(path).expanduser().absolute()
    if not source.is_file():
        raise UsageError(f"spawn_notebook: no notebook at {source}")
    if parameters is not None and not isinstance(parameters, dict):
        raise UsageError(f"parameters must be a dict, got {type(parameters).__name__}")
    family = children.current_family()
    key = key or family.next_key("notebook")
    run_id = f"{_parent_run()}:{key}"
    target = Path(output).expanduser().absolute() if output is not None else \
        source.with_name(f"{source.stem}.{_safe(key)}.out.ipynb")
    log = str(family.ctx.log.path) if family.ctx is not None else str(runner.default_log(None))
    args = (str(source), _content_hash(source), run_id, parameters or {}, str(target), log,
            max_restarts)
    child = children.spawn(_run_child, *args, executor=_DRIVERS, key=key)
    child.run_id, child.output_path = run_id, str(target)
    return child


def _run_child(source: str, content: str, run_id: str, parameters: dict[str, Any], output: str,
               log: str, max_restarts: int) -> Any:
    """In a driver thread of the parent's kernel: run (or resume) the child run; its result.
    ``content`` is only there for the child's fingerprint: an edited notebook runs again."""
    result = runner.run(source, output, run_id=run_id, parameters=parameters, log=log,
                        max_restarts=max_restarts)
    if result.status != "completed":
        raise ChildRunError(result.message())
    return results.run_result(run_id, log=log)


def _parent_run() -> str:
    return context.locate(None, None)[1]


def _content_hash(source: Path) -> str:
    return xxhash.xxh3_64_hexdigest(source.read_bytes())


def _safe(key: str) -> str:
    """A key as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") or "child"
