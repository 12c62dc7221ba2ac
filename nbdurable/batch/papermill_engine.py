"""The ``nbdurable`` papermill engine: ``papermill --engine nbdurable IN OUT -p ...``.

It executes the notebook like papermill's own nbclient engine, and also:

- runs the kernel with ``NBDURABLE_RUN`` / ``NBDURABLE_LOG`` set, so ``%%durable`` cells of a run
  that died earlier replay from the log and the run continues where it died;
- holds the run's claim (a second invocation of the run is refused), and makes each kernel part
  of it before the first cell, so a kernel stops the moment its driver dies
  (:mod:`nbdurable.store.claims`); records the invocation in the log: started with its parameters,
  finished as completed, failed or crashed;
- when the kernel dies, marks the cell that was running as failed with an error output saying
  so (papermill's own engine leaves it "completed"), and with ``max_restarts`` starts a fresh
  kernel and runs the notebook again: completed durable cells replay, the run goes on.

Options come from ``nbdurable run`` (engine keyword arguments ``nbdurable_*``) or, under plain
papermill, from the environment: ``NBDURABLE_RUN``, ``NBDURABLE_LOG``,
``NBDURABLE_MAX_RESTARTS``.

Importing papermill imports its engines module, which loads every registered engine, this one
included, before it has finished: so nothing from papermill is imported at this module's top,
and the engine class is built on first access (module ``__getattr__``), when papermill's
``NBClientEngine`` exists.
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any

import nbformat
from nbclient.exceptions import DeadKernelError

from nbdurable.batch import runner as batch
from nbdurable.engine import suspension
from nbdurable.errors import NbdurableError, RunSuspended
from nbdurable.kernels import local_kernel_config
from nbdurable.store import claims, invocations, records

DEAD_KERNEL = "DeadKernelError"
SUSPENDED = "RunSuspended"  # nbdurable.errors.RunSuspended, raised in the kernel


def __getattr__(name: str) -> Any:
    if name == "NbdurableEngine":
        return _engine_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_ENGINE: type | None = None


def _engine_class() -> type:
    global _ENGINE
    from papermill.engines import NBClientEngine  # the first time, this loads us again: ...

    if _ENGINE is None:  # ... so the class may exist now
        _ENGINE = _build_engine(NBClientEngine)
    return _ENGINE


def _build_engine(NBClientEngine: type) -> type:  # noqa: N803 (a class)
    from papermill.log import logger
    from papermill.utils import merge_kwargs, remove_args

    class NbdurableEngine(NBClientEngine):  # type: ignore[misc]  # papermill has no types
        """A papermill engine that resumes runs from the nbdurable log."""

        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str | None,
                                     log_output: bool = False, stdout_file: Any = None,
                                     stderr_file: Any = None, start_timeout: int = 60,
                                     execution_timeout: float | None = None,
                                     **kwargs: Any) -> Any:
            job = batch.Job.from_engine(nb_man.nb, kwargs, *_paths(nb_man, kwargs))
            kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
            standalone = job.claim is None  # plain papermill: no `nbdurable run` to tell
            with job.claimed() as claim, tempfile.TemporaryDirectory(
                    prefix="nbdurable-") as sockets:
                for note in claim.notes if standalone else ():
                    logger.warning(note)
                kwargs.setdefault("config", local_kernel_config(sockets))
                client_kwargs = merge_kwargs(
                    kwargs, timeout=execution_timeout or None, startup_timeout=start_timeout,
                    kernel_name=kernel_name, log=logger, log_output=log_output,
                    stdout_file=stdout_file, stderr_file=stderr_file)
                _Invocation(job, claim, nb_man, client_kwargs).run()
            ended = nb_man.nb.metadata["nbdurable"]
            if standalone and ended["status"] == invocations.WAITING:
                raise _suspended(job, nb_man.nb, ended["error"])  # not a success: say so
            return nb_man.nb

    NbdurableEngine.__module__, NbdurableEngine.__qualname__ = __name__, "NbdurableEngine"
    return NbdurableEngine


@functools.cache
def _client_class() -> type:
    from nbclient.util import run_sync
    from papermill.clientwrap import PapermillNotebookClient

    class Client(PapermillNotebookClient):  # type: ignore[misc]
        """Papermill's client, making each kernel part of the run's claim before its first
        cell, sending each cell's id with its execution as JupyterLab does (nbclient sends
        none), and noting the cell in which the kernel died."""

        dead_cell: int | None = None
        guard_code: str = ""
        cell_id: str | None = None  # of the cell being executed

        async def async_start_new_kernel_client(self) -> Any:
            kc = await super().async_start_new_kernel_client()
            _send_cell_ids(kc, self)
            reply = await self.async_wait_for_reply(
                kc.execute(self.guard_code, silent=True, store_history=False))
            content = (reply or {}).get("content", {})
            if content.get("status") != "ok":
                await self._async_cleanup_kernel()
                raise NbdurableError("the kernel could not join the run's claim: "
                                     f"{content.get('ename')}: {content.get('evalue')}")
            return kc

        # nbclient binds the sync form to its own coroutine, not to an override
        start_new_kernel_client = run_sync(async_start_new_kernel_client)

        def execute_cell(self, cell: Any, cell_index: int, *args: Any, **kwargs: Any) -> Any:
            self.cell_id = cell.get("id") or None
            try:
                return super().execute_cell(cell, cell_index, *args, **kwargs)
            except DeadKernelError:
                self.dead_cell = cell_index
                raise
            finally:
                self.cell_id = None

    return Client


def _send_cell_ids(kc: Any, client: Any) -> None:
    """Each ``execute_request`` on ``kc``'s shell channel carries ``metadata.cellId`` (the
    notebook's cell id, nbformat 4.5), as JupyterLab and Notebook 7 send it: ipykernel hands it
    to ``run_cell(cell_id=...)``. The metadata is signed with the rest when the message is sent."""
    channel = kc.shell_channel
    send = channel.send

    def send_with_cell_id(msg: dict[str, Any]) -> None:
        if client.cell_id and msg.get("header", {}).get("msg_type") == "execute_request":
            msg.setdefault("metadata", {})["cellId"] = client.cell_id
        send(msg)

    channel.send = send_with_cell_id


class _Invocation:
    """One invocation of a run: kernels started until the notebook ends or restarts run out."""

    def __init__(self, job: batch.Job, claim: claims.Claim, nb_man: Any,
                 client_kwargs: dict[str, Any]):
        self.job, self.claim, self.nb_man = job, claim, nb_man
        self.client_kwargs = client_kwargs
        self.restarts = 0

    def run(self) -> None:
        nb = self.nb_man.nb
        self.job.record(invocations.run_started(self.claim, self.job.started()))
        status: str = invocations.FAILED
        error: dict[str, Any] | None = {"ename": invocations.INTERRUPTED,
                                        "evalue": "the run stopped"}
        try:
            status, error = self._kernels()
        except Exception as exc:  # a kernel that cannot start, a timeout...
            status, error = invocations.FAILED, {"ename": type(exc).__name__, "evalue": str(exc)}
            raise
        finally:
            nb.metadata["nbdurable"] = {"run": self.job.run, "log": str(self.job.log_path),
                                        "status": status, "restarts": self.restarts,
                                        "error": error}
            self.job.record(invocations.run_finished(self.claim, status=status, error=error,
                                                  restarts=self.restarts))

    def _kernels(self) -> tuple[str, dict[str, Any] | None]:
        while True:
            client = _client_class()(self.nb_man, **self.client_kwargs)
            client.guard_code = self.claim.kernel_guard_code()
            try:
                client.execute(env={**os.environ, **self.job.kernel_env()})  # to start_kernel
            except DeadKernelError:
                cell = client.dead_cell
                self.job.record(invocations.kernel_died(self.claim, cell=cell,
                                                     restart=self.restarts))
                if self.restarts < self.job.max_restarts:
                    self.restarts += 1
                    _log().warning(f"the kernel died in cell {_position(cell)}; starting a fresh kernel "
                                   f"(restart {self.restarts} of {self.job.max_restarts})")
                    _clear(self.nb_man)
                    continue
                return invocations.CRASHED, self._mark_dead(cell)
            status, error = _outcome(self.nb_man.nb)
            if status == invocations.WAITING and error is not None:
                _show_waiting(self.nb_man, error)
            return status, error

    def _mark_dead(self, index: int | None) -> dict[str, Any]:
        error = {"ename": DEAD_KERNEL, "cell": index,
                 "evalue": f"the kernel died while this cell was running; run the same command "
                           f"again to resume run {self.job.run!r} (completed durable cells "
                           "replay), or allow restarts (nbdurable run --max-restarts N, or "
                           "NBDURABLE_MAX_RESTARTS=N)"}
        if index is not None:
            cell = self.nb_man.nb.cells[index]
            cell.outputs.append(nbformat.v4.new_output(
                "error", ename=DEAD_KERNEL, evalue=error["evalue"],
                traceback=[f"{DEAD_KERNEL}: {error['evalue']}"]))  # what front ends show
            self.nb_man.cell_exception(cell, cell_index=index)
            self.nb_man.save()
        return error


def _position(index: int | None) -> str:
    return "?" if index is None else str(index + 1)


def _log() -> Any:  # papermill's logger
    from papermill.log import logger

    return logger


def _clear(nb_man: Any) -> None:
    """Back to an unexecuted notebook before a fresh kernel runs it again."""
    for cell in nb_man.nb.cells:
        if cell.get("cell_type") == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.papermill.update(exception=None, start_time=None, end_time=None,
                                       duration=None, status=nb_man.PENDING)
    nb_man.nb.metadata.papermill["exception"] = None
    nb_man.save()


def _show_waiting(nb_man: Any, error: dict[str, Any]) -> None:
    """The suspended cell shows that it waits (what for, how to resume), not a failure: its
    ``RunSuspended`` error output becomes a line on stdout, and papermill's failure marks go
    (papermill then adds no error cell and raises nothing)."""
    cell = nb_man.nb.cells[error["cell"]]
    cell.outputs = [o for o in cell.outputs if o.get("ename") != SUSPENDED] + [
        nbformat.v4.new_output("stream", name="stdout", text=f"⏸ {error['evalue']}\n")]
    cell.metadata.papermill.update(exception=False, status=nb_man.PENDING)
    nb_man.nb.metadata.papermill["exception"] = None
    nb_man.save()


def _paths(nb_man: Any, kwargs: dict[str, Any]) -> tuple[str, str | None]:
    """papermill's input and output paths, absolute (a resume may start anywhere). papermill
    resolves relative ones against the directory it was called in (its local handler's cwd),
    not ``--cwd``, which is the directory when the engine runs; a URL stays as it is."""
    from papermill.iorw import papermill_io

    base = getattr(papermill_io.get_handler("local"), "_cwd", None) or os.getcwd()
    output = str(nb_man.output_path or "")
    return (_absolute(str(kwargs.get("input_path") or "notebook.ipynb"), base),
            _absolute(output, base) if output else None)


def _absolute(path: str, base: str) -> str:
    return path if "://" in path or path == "-" else os.path.join(base, path)


def _suspended(job: batch.Job, nb: Any, error: dict[str, Any]) -> RunSuspended:
    """What plain papermill raises for a run that stopped at a wait (``nbdurable run`` says it
    with exit status 4 instead): ``papermill.execute_notebook`` does not return as if the
    notebook had completed, and the ``papermill`` command exits non-zero with this message."""
    from nbdurable.store.logdb import open_log

    waiting = next((w for w in suspension.waiting_runs(open_log(job.log_path), records.now())
                    if w.run == job.run), None)
    deadline = waiting.next_deadline() if waiting is not None else None
    return RunSuspended(str(error.get("evalue")), run=job.run,
                        step=batch.durable_step(nb.cells[error["cell"]]),
                        keys=waiting.keys() if waiting is not None else [],
                        deadline=deadline.isoformat() if deadline is not None else None)


def _outcome(nb: Any) -> tuple[str, dict[str, Any] | None]:
    """Completed, or failed at the first cell with an error output or papermill's exception
    mark (an IPython UsageError, for instance, is only a stderr stream)."""
    for index, cell in enumerate(nb.cells):
        outputs = cell.get("outputs", [])
        errors = [o for o in outputs if o.get("output_type") == "error"]
        if any(o.get("ename") == "SystemExit" and o.get("evalue") in ("", "0") for o in errors):
            return invocations.COMPLETED, None  # sys.exit(0): the notebook ended on purpose
        if errors and errors[-1].get("ename") == SUSPENDED:
            return invocations.WAITING, {"cell": index, "ename": SUSPENDED,
                                         "evalue": errors[-1].get("evalue")}
        if errors:
            return invocations.FAILED, {"cell": index, "ename": errors[0].get("ename"),
                                     "evalue": errors[0].get("evalue")}
        if cell.get("metadata", {}).get("papermill", {}).get("exception") is True:
            stderr = [o.get("text", "") for o in outputs if o.get("name") == "stderr"]
            text = (stderr[-1].strip() if stderr else "") or "the cell failed"
            last = text.splitlines()[-1]
            ename, _, evalue = last.partition(": ") if ": " in last else ("Error", "", last)
            return invocations.FAILED, {"cell": index, "ename": ename.split()[-1],
                                     "evalue": evalue}
    return invocations.COMPLETED, None
