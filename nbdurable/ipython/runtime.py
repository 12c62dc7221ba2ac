"""The kernel side of a durable cell: the ``__nbdurable__`` object the transformed cell calls.

``enter`` asks the engine whether to replay or execute; on replay it restores the variables and
shows the recorded outputs, on execution it records a running attempt and starts recording
outputs. IPython's ``post_execute`` event then checkpoints the attempt (or records its failure).
Plain cells are reported to the engine so that it re-fingerprints what they may have changed.
"""

from __future__ import annotations

import ast
import re
import sys
from typing import Any

from nbdurable.engine.analysis import analyse
from nbdurable.engine.cells import CellSpec, Decision, Engine, Execution
from nbdurable.engine.header import cell_step
from nbdurable.errors import CheckpointError, NbdurableError, UsageError
from nbdurable.ipython import capture
from nbdurable.ipython.transform import MARKER, RUNTIME, Requests, raise_for

_IPYTHON_NAMES = re.compile(r"^_(|_|__|i|ii|iii|i\d+|\d+|ih|oh|dh)$")
#: Line magics that cannot change the namespace's values.
SAFE_MAGICS = frozenset({"matplotlib", "load_ext", "reload_ext", "unload_ext", "config",
                         "durable_run", "pwd", "who", "whos", "who_ls", "lsmagic", "pinfo",
                         "pinfo2", "psearch", "pdoc", "pdef", "psource", "pfile", "history",
                         "precision", "xmode", "colors", "autoawait", "page", "magic"})


class KernelRuntime:
    """One per IPython shell while the extension is loaded."""

    def __init__(self, shell):
        self.shell = shell
        self.kernel = getattr(shell, "kernel", None)
        self.requests = Requests()
        self.input_transformer: Any = None  # set by the extension when it loads
        self.ast_transformer: Any = None
        self.engine = Engine(shell.user_ns, ignore=self.ignored)
        self.executing = False
        self._execution: Execution | None = None
        self._recorder: capture.OutputRecorder | None = None
        self._done = False
        self._durable_cell_seen = False
        self._raw_cell: str | None = None
        self._cell_id: str | None = None  # of the cell being run, when the front end sends it
        self._result: capture.RecordedResult | None = None

    def ignored(self, name: str) -> bool:
        """IPython's bookkeeping names and dunders are not the notebook's data."""
        return (name.startswith("__") or name in self.shell.user_ns_hidden
                or _IPYTHON_NAMES.match(name) is not None)

    # -- called by the transformed cell ---------------------------------------------------------
    def enter(self, token: str) -> None:
        if self._execution is not None:
            raise UsageError("a durable cell cannot run inside another durable cell")
        request = raise_for(self.requests.get(token))
        self._durable_cell_seen = True
        self.executing = False
        spec = CellSpec(_step_name(request.name, self._cell_id), request.body,
                        request.names or analyse([]), request.force, cell_id=self._cell_id,
                        replace=request.replace)
        decision = self.engine.decide(spec)
        if decision.replay and self._replay(decision):
            return
        self._begin(decision)

    def done(self, value: Any = None) -> Any:
        """Reached at the end of an executed body: the attempt succeeded once the children it
        started have finished."""
        if self._execution is not None:
            self.engine.settle(self._execution)
        self._done = True
        return value

    def replayed_result(self) -> capture.RecordedResult | None:
        result, self._result = self._result, None
        return result

    def _replay(self, decision: Decision) -> bool:
        replayed = self.engine.try_replay(decision)
        if replayed is None:
            return False
        cp = replayed.checkpoint
        when = f"{cp.finished_at:%Y-%m-%d %H:%M:%S}"
        capture.notice(self.shell, f"↻ {cp.step}: replayed (recorded {when} UTC, "
                       f"ran {_duration(cp.duration_s)})",
                       kind="replayed", detail={"step": cp.step, "attempt": cp.attempt})
        self._result = capture.replay(self.shell, replayed.outputs)
        return True

    def _begin(self, decision: Decision) -> None:
        if decision.reason:
            capture.notice(self.shell, f"▶ {decision.spec.name}: executing ({decision.reason})",
                           kind="executing", detail={"step": decision.spec.name,
                                                     "reason": decision.reason})
        self._done = False
        self._execution = self.engine.begin(decision)
        self.executing = True
        if self.kernel is not None and hasattr(self.kernel, "session"):
            self._recorder = capture.OutputRecorder(self.kernel)
            self._recorder.start()

    # -- IPython events -------------------------------------------------------------------------
    def _for_a_cell(self) -> bool:
        """Is the kernel handling an execute request? The ``comm`` package fires pre/post_execute
        around each widget message too, also while a durable cell waits: those are not ends of
        cells."""
        if getattr(self.kernel, "get_parent", None) is None:
            return True
        msg_type = (capture.current_parent(self.kernel).get("header") or {}).get("msg_type")
        return msg_type in (None, "execute_request")

    def pre_execute(self) -> None:
        if not self._for_a_cell():
            return
        self._durable_cell_seen = False
        self._raw_cell = None
        self.inject()

    def inject(self) -> None:
        """Put the names transformed cells call into the namespace (again, after ``%reset``)."""
        ns, hidden = self.shell.user_ns, self.shell.user_ns_hidden
        if ns.get(RUNTIME) is not self:
            names = {RUNTIME: self, MARKER: _marker_outside_transform}
            ns.update(names)
            hidden.update(names)

    def pre_run_cell(self, info=None) -> None:
        self._raw_cell = getattr(info, "raw_cell", None)
        self._cell_id = getattr(info, "cell_id", None) or None  # JupyterLab's metadata.cellId

    def post_execute(self) -> None:
        if not self._for_a_cell():
            # a widget callback ran: it may have changed any variable
            self.engine.plain_cell_ran(None)
            return
        try:
            if self._execution is not None:
                self._finish()
            elif not self._durable_cell_seen and self._raw_cell is not None:
                self.engine.plain_cell_ran(self._plain_cell_names(self._raw_cell))
        finally:
            self.executing = False
            self._result = None

    def _finish(self) -> None:
        execution, self._execution = self._execution, None
        assert execution is not None, "called while a durable cell executes"
        recorder, self._recorder = self._recorder, None
        outputs = recorder.stop() if recorder is not None else []
        error = None
        if not self._done:
            errors = [m["content"] for m in outputs if m["msg_type"] == "error"]
            error = errors[-1] if errors else _exception_info()
        try:
            self.engine.finish(execution, ok=self._done, outputs=outputs, error=error)
        except CheckpointError as exc:
            print(f"nbdurable: step {execution.decision.spec.name!r}: {exc}", file=sys.stderr)
        except NbdurableError as exc:
            print(f"nbdurable: step {execution.decision.spec.name!r}: not checkpointed, it will "
                  f"execute again: {exc}", file=sys.stderr)

    def _plain_cell_names(self, raw_cell: str) -> set[str] | None:
        """Names a plain cell may have changed; None when it cannot be told."""
        try:
            tree = ast.parse(self.shell.transform_cell(raw_cell))
        except Exception:
            return None
        if _is_dynamic(tree):
            return None
        names = analyse(tree)
        return set(names.loads | names.binds | names.deletes)


def _marker_outside_transform(token):
    raise UsageError("%%durable must be the first line of the cell (cell magics such as %%time "
                     "may come just before or after it)")


def _is_dynamic(tree: ast.AST) -> bool:
    """Does the cell run code nbdurable cannot see (exec, globals(), most magics)?"""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in {"exec", "eval", "globals", "vars",
                                                     "locals", "__import__"}:
            return True
        if isinstance(func, ast.Attribute) and func.attr in {"run_line_magic", "run_cell_magic"}:
            name = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) \
                else None
            if name not in SAFE_MAGICS:
                return True
    return False


def _exception_info() -> dict | None:
    exc = getattr(sys, "last_value", None)
    if exc is None:
        return None
    return {"ename": type(exc).__name__, "evalue": str(exc), "traceback": []}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _step_name(name: str | None, cell_id: str | None) -> str:
    """The step: its NAME, else (``%%durable`` alone) named after the cell's id."""
    if name is not None:
        return name
    if not cell_id:
        raise UsageError("this %%durable cell has no NAME and the front end sent no cell id to "
                         "name it by (JupyterLab, Notebook 7 and `nbdurable run` send one): "
                         "write %%durable NAME")
    return cell_step(cell_id)
