"""``%load_ext nbdurable`` and ``%unload_ext nbdurable``.

Loading registers the input and AST transformers, the magics and the event callbacks of one
:class:`~nbdurable.ipython.runtime.KernelRuntime`; loading again does nothing; unloading removes
every piece, so the shell is as it was.
"""

from __future__ import annotations

import os
import weakref

from nbdurable.ipython.magics import DurableMagics
from nbdurable.ipython.runtime import KernelRuntime
from nbdurable.ipython.transform import MARKER, RUNTIME, AstTransformer, InputTransformer

_runtimes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_EVENTS = ("pre_execute", "pre_run_cell", "post_execute")


def load(shell) -> KernelRuntime:
    if shell in _runtimes:
        return _runtimes[shell]
    runtime = KernelRuntime(shell)
    runtime.input_transformer = InputTransformer(shell, runtime.requests)
    runtime.ast_transformer = AstTransformer(runtime.requests)
    shell.input_transformer_manager.line_transforms.insert(0, runtime.input_transformer)
    shell.ast_transformers.append(runtime.ast_transformer)
    shell.register_magics(DurableMagics)
    for event in _EVENTS:
        shell.events.register(event, getattr(runtime, event))
    runtime.inject()
    if getattr(shell, "kernel", None) is not None:
        from nbdurable.engine import progress, waits
        from nbdurable.ipython import panel, pump
        from nbdurable.ipython.progress import ProgressBar

        waits.set_ui(panel.WaitPanel)
        if os.environ.get("NBDURABLE_PROGRESS") != "text":  # batch runs print lines instead
            progress.set_progress_ui(ProgressBar)
        pump.watch_comms(shell.kernel, panel.registry)
    _runtimes[shell] = runtime
    return runtime


def unload(shell) -> None:
    runtime = _runtimes.pop(shell, None)
    if runtime is None:
        return
    runtime.engine.close()
    from nbdurable.engine import progress, waits
    from nbdurable.ipython import pump

    waits.set_ui(None)
    progress.set_progress_ui(None)
    if getattr(shell, "kernel", None) is not None:
        pump.unwatch_comms(shell.kernel)
    _remove(shell.input_transformer_manager.line_transforms, runtime.input_transformer)
    _remove(shell.ast_transformers, runtime.ast_transformer)
    for event in _EVENTS:
        try:
            shell.events.unregister(event, getattr(runtime, event))
        except ValueError:
            pass
    magics = shell.magics_manager.magics
    magics["cell"].pop("durable", None)
    magics["line"].pop("durable_run", None)
    magics["line"].pop("durable_log", None)
    for name in (RUNTIME, MARKER):
        shell.user_ns.pop(name, None)
        shell.user_ns_hidden.pop(name, None)


def runtime_of(shell) -> KernelRuntime | None:
    return _runtimes.get(shell)


def _remove(items: list, item) -> None:
    while item in items:
        items.remove(item)
