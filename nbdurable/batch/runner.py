"""Batch runs that resume: :func:`run` (``nbdurable run``) executes a notebook with papermill and
the ``nbdurable`` engine; running it again with the same run id resumes the run.

:func:`run` checks everything it can before papermill touches a file (the notebook, the output
path, the log, whether another process executes the run) and holds the run's claim for the
whole execution. The engine (:mod:`nbdurable.batch.papermill_engine`) does the executing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from nbdurable import settings
from nbdurable.engine.header import step_of
from nbdurable.errors import UsageError
from nbdurable.store import claims, invocations, records
from nbdurable.store.sidecars import Sidecars

ENGINE = "nbdurable"
EXIT_FAILED, EXIT_USAGE, EXIT_CRASHED, EXIT_WAITING = 1, 2, 3, 4


@dataclass
class Job:
    """What one invocation executes, resolved: run id, log, parameters, restarts."""

    run: str
    log_path: Path
    notebook: str
    output: str | None
    parameters: dict[str, Any]
    max_restarts: int = 0
    claim: claims.Claim | None = None
    suspend_after: float | None = None  # seconds a wait may last before the run is suspended
    cwd: str | None = None
    kernel: str | None = None
    resumed_from: str | None = None  # the status `resume` found (checked again under the claim)

    @classmethod
    def from_engine(cls, nb: Any, kwargs: dict[str, Any], notebook: str,
                    output: str | None) -> Job:
        """From the engine's keyword arguments (``nbdurable run``) or the environment (plain
        ``papermill --engine nbdurable``; ``notebook`` and ``output``: papermill's paths,
        absolute). Pops the ``nbdurable_*`` arguments."""
        given = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("nbdurable_")}
        job = given.get("nbdurable_job")
        if isinstance(job, Job):
            return job
        parameters = dict(nb.metadata.get("papermill", {}).get("parameters") or {})
        restarts = os.environ.get("NBDURABLE_MAX_RESTARTS", "0")
        if not restarts.isdigit():
            raise UsageError(f"NBDURABLE_MAX_RESTARTS must be a whole number, got {restarts!r}")
        return cls(run=choose_run_id(None, parameters, notebook, environ=True),
                   log_path=default_log(None),
                   notebook=notebook, output=output, parameters=parameters,
                   max_restarts=int(restarts), suspend_after=settings.suspend_after(),
                   cwd=os.getcwd(), kernel=kwargs.get("kernel_name"))

    @contextmanager
    def claimed(self) -> Iterator[claims.Claim]:
        """Hold the run's claim (if :func:`run` does not hold it already). A log that is not
        an nbdurable log, or is too new, is refused first and stays untouched; the claim comes
        before the log is opened, so that a kernel left running by a driver that died (which
        may hold the log) is ended first."""
        if self.claim is not None:
            yield self.claim
            return
        from nbdurable.store.logdb import open_log, sniff

        if self.log_path.exists():
            sniff(self.log_path)  # before any file is created beside it
        with claims.Claim(self.log_path, self.run) as self.claim:
            try:
                with open_log(self.log_path).lease():
                    pass
                yield self.claim
            finally:
                self.claim = None

    def record(self, statement: records.Statement) -> None:
        from nbdurable.store.logdb import open_log

        log = open_log(self.log_path)
        log.execute(*statement)
        log.release()  # the kernel is the main user of the log: let it in at once

    def kernel_env(self) -> dict[str, str]:
        return {"NBDURABLE_RUN": self.run, "NBDURABLE_LOG": str(self.log_path),
                "JPY_SESSION_NAME": self.notebook,
                "NBDURABLE_PROGRESS": "text",  # children's progress as lines, not a widget
                # sets of strings then encode (and fingerprint) the same in every kernel
                "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0"),
                "NBDURABLE_SUSPEND_AFTER": "" if self.suspend_after is None
                else repr(self.suspend_after)}

    def started(self) -> dict[str, Any]:
        """What the log keeps of this invocation: enough for ``resume`` to invoke it again."""
        return {"notebook": self.notebook, "output": self.output, "parameters": self.parameters,
                "max_restarts": self.max_restarts, "suspend_after": self.suspend_after,
                "cwd": self.cwd, "kernel": self.kernel, "resumed_from": self.resumed_from}


@dataclass
class RunResult:
    """How a :func:`run` ended. ``status``: completed, failed or crashed."""

    run: str
    status: str
    output: str
    log: str
    restarts: int = 0
    replayed: list[str] = field(default_factory=list)  # durable cells replayed from the log
    executed: list[str] = field(default_factory=list)  # durable cells executed
    error: dict[str, Any] | None = None  # cell index, ename, evalue
    notes: list[str] = field(default_factory=list)  # things the user should know

    @property
    def exit_code(self) -> int:
        codes: dict[str, int] = {invocations.COMPLETED: 0, invocations.CRASHED: EXIT_CRASHED,
                                 invocations.WAITING: EXIT_WAITING}
        return codes.get(self.status, EXIT_FAILED)

    def message(self) -> str:
        """One line saying how it ended and what to do."""
        if self.status == invocations.COMPLETED:
            restarted = f", after {self.restarts} kernel restart(s)" if self.restarts else ""
            return (f"run {self.run!r} completed: {len(self.replayed)} durable cell(s) replayed,"
                    f" {len(self.executed)} executed{restarted}; output {self.output}")
        error = self.error or {}
        if self.status == invocations.WAITING:
            return (f"run {self.run!r} is waiting (suspended, no kernel left): "
                    f"{_first_line(error.get('evalue'))}; output {self.output}")
        position = error.get("position")  # 1-based, in the notebook as its author sees it
        where = (f"cell {position}" if isinstance(position, int) else "a cell") + (
            f" ({error['step']})" if error.get("step") else "")
        if self.status == invocations.CRASHED:
            return (f"the kernel died in {where} of run {self.run!r}; run the same command again"
                    f" to resume it (completed durable cells replay), or pass --max-restarts N;"
                    f" output {self.output}")
        return (f"run {self.run!r} failed: {where} raised {error.get('ename')}: "
                f"{_first_line(error.get('evalue'))}; output {self.output}")

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "status": self.status, "output": self.output, "log": self.log,
                "restarts": self.restarts, "replayed": self.replayed,
                "executed": self.executed, "error": self.error, "notes": self.notes}


def run(notebook: str | os.PathLike[str], output: str | os.PathLike[str] | None = None, *,
        run_id: str | None = None, parameters: Mapping[str, Any] | None = None,
        log: str | os.PathLike[str] | None = None, cwd: str | os.PathLike[str] | None = None,
        kernel: str | None = None, max_restarts: int = 0, progress: bool = False,
        suspend_after: float | None = None,
        _resumed_from: tuple[str, object] | None = None) -> RunResult:
    """Execute ``notebook`` with papermill as run ``run_id``; run it again to resume it.

    ``run_id`` defaults to a ``run_id`` parameter, else one derived from the notebook's path
    and the parameters (``NBDURABLE_RUN`` is for plain papermill and kernels: a notebook that
    runs another one must not pass its own run on). The output defaults to ``NAME.out.ipynb`` beside the
    notebook. ``max_restarts`` fresh kernels resume the run after a kernel death.
    ``suspend_after``: a durable wait still unmet after that many seconds suspends the run (its
    kernel stops; status ``waiting``; :func:`resume` or ``nbdurable worker`` goes on). Bad input
    raises an :class:`~nbdurable.errors.NbdurableError` before anything is written; a failed
    or crashed run is a result (``status``, ``error``), not an exception.
    """
    import papermill

    source, nb = _check_notebook(notebook)
    _check_steps(nb, source)
    _check_kernel(kernel, nb)
    work = _check_cwd(cwd)
    parameters = _check_parameters(parameters)
    target = _check_output(source, output)
    if not isinstance(max_restarts, int) or max_restarts < 0:
        raise UsageError(f"max_restarts must be a whole number >= 0, got {max_restarts!r}")
    _check_suspend_after(suspend_after)
    job = Job(run=choose_run_id(run_id, parameters, str(source)),
              log_path=default_log(log, work), notebook=str(source), output=str(target),
              parameters=parameters, max_restarts=max_restarts, suspend_after=suspend_after,
              cwd=str(work), kernel=kernel,
              resumed_from=_resumed_from[0] if _resumed_from else None)
    if Sidecars.of(job.log_path).owns(target):
        raise UsageError(f"the output {target} is the log or one of its files; give another "
                         "OUTPUT or --log")
    with job.claimed() as claim:
        if _resumed_from is not None:
            _still(job.run, job.log_path, *_resumed_from)
        try:
            papermill.execute_notebook(
                str(source), str(target), parameters=parameters, engine_name=ENGINE,
                kernel_name=kernel, cwd=str(work), progress_bar=progress, nbdurable_job=job)
        except papermill.PapermillExecutionError:
            pass  # recorded in the output notebook, read below
    result = _result(job, target)
    result.notes = claim.notes + _notes(nb, source)
    return result


def choose_run_id(given: str | None, parameters: Mapping[str, Any], notebook: str, *,
                  environ: bool = False) -> str:
    """``given`` (--run-id) > ``NBDURABLE_RUN`` if ``environ`` (plain papermill with the
    engine; the kernel reads it before ``run_id`` too) > a ``run_id`` parameter > derived from
    the notebook and the parameters."""
    param = parameters.get("run_id")
    param = str(param) if isinstance(param, int) and not isinstance(param, bool) else param
    if given is not None:
        given = settings.check_run_id(given, source="--run-id")
        if param is not None and param != given:
            raise UsageError(f"--run-id {given!r} and the parameter run_id={param!r} disagree;"
                             " give one of them")
        return given
    env = os.environ.get("NBDURABLE_RUN") if environ else None
    if env:
        return settings.check_run_id(env, source="NBDURABLE_RUN")
    if param is not None:
        return settings.check_run_id(param, source="the run_id parameter")
    return derived_run_id(notebook, parameters)


def derived_run_id(notebook: str, parameters: Mapping[str, Any]) -> str:
    """``STEM-HASH``: the same notebook path and parameters give the same run id."""
    key = json.dumps([str(Path(notebook).absolute()), parameters], sort_keys=True, default=str)
    stem = "".join(c for c in Path(notebook).stem if c.isprintable())[:100] or "notebook"
    return settings.check_run_id(f"{stem}-{xxhash.xxh3_64_hexdigest(key.encode())[:8]}")


def default_log(log: str | os.PathLike[str] | None, cwd: Path | None = None) -> Path:
    """The log a kernel started in ``cwd`` would use (given > ``configure(log=...)`` >
    ``NBDURABLE_LOG`` > default)."""
    if log is not None:
        return settings.check_log_arg(log)
    raw = (settings.configured_log() or os.environ.get("NBDURABLE_LOG")
           or str(settings.DEFAULT_LOG))
    path = Path(raw).expanduser()
    return settings.check_log_arg(path if path.is_absolute() else (cwd or Path.cwd()) / path)


# -- checks -------------------------------------------------------------------------------------

def _check_notebook(notebook: str | os.PathLike[str]) -> tuple[Path, Any]:
    """The notebook's absolute path and its content."""
    import nbformat

    path = Path(notebook).expanduser().absolute()
    if not path.is_file():
        raise UsageError(f"notebook {notebook} not found" + (
            " (it is a directory)" if path.is_dir() else ""))
    try:
        return path, nbformat.read(path, as_version=4)
    except Exception as exc:
        raise UsageError(f"{notebook} is not a readable notebook ({_first_line(exc)}); "
                         "give an .ipynb file") from None


def _check_steps(nb: Any, source: Path) -> None:
    """Two cells of one notebook cannot be one step (a copied cell keeps its NAME): refused
    before anything runs."""
    seen: dict[str, int] = {}
    for index, cell in enumerate(nb.cells):
        step = durable_step(cell)
        if step is not None and step in seen:
            raise UsageError(f"cells {seen[step] + 1} and {index + 1} of {source.name} are both "
                             f"step {step!r} (a copied %%durable cell keeps its NAME): rename "
                             "one of them")
        if step is not None:
            seen[step] = index


def _notes(nb: Any, source: Path) -> list[str]:
    """What makes a run less durable than its user may think."""
    steps = [durable_step(cell) for cell in nb.cells]
    if not any(steps):
        return [f"{source.name} has no %%durable cell: nothing was checkpointed, and running "
                "it again executes every cell again"]
    first = steps.index(next(s for s in steps if s))
    if not any("load_ext nbdurable" in cell.get("source", "") for cell in nb.cells[:first]):
        return [f"{source.name} has %%durable cells but no `%load_ext nbdurable` before them; "
                "add that line to its first cell"]
    return []


def _check_parameters(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    parameters = dict(parameters or {})
    bad = [name for name in parameters if not str(name).isidentifier()]
    if bad:
        raise UsageError(f"parameter name {bad[0]!r} is not a Python name; use letters, digits "
                         "and _ (not starting with a digit)")
    return parameters


def _check_kernel(kernel: str | None, nb: Any) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    name = kernel or nb.metadata.get("kernelspec", {}).get("name")
    if not name:
        raise UsageError("the notebook names no kernel (no kernelspec in its metadata); give "
                         "one with --kernel, e.g. --kernel python3")
    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        given = "--kernel" if kernel else "the notebook's kernelspec"
        raise UsageError(f"no kernel named {name!r} ({given}); `jupyter kernelspec list` shows"
                         " the installed ones") from None


def _check_suspend_after(value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise UsageError(f"suspend_after must be a number of seconds >= 0, got {value!r}")


def _check_cwd(cwd: str | os.PathLike[str] | None) -> Path:
    if cwd is None:
        return Path.cwd()
    path = Path(cwd).expanduser().absolute()
    if not path.is_dir():
        raise UsageError(f"--cwd {cwd} is not a directory")
    return path


def _check_output(source: Path, output: str | os.PathLike[str] | None) -> Path:
    """The output path; never the notebook itself, never a file that is not an earlier
    run's output."""
    target = (Path(output).expanduser() if output is not None
              else source.with_name(f"{source.stem}.out.ipynb")).absolute()
    if target == source or (target.exists() and target.samefile(source)):
        raise UsageError(f"the output {target} is the notebook itself; give another OUTPUT")
    if target.is_dir():
        raise UsageError(f"the output {target} is a directory; give a file path")
    if target.exists() and not _is_run_output(target):
        raise UsageError(f"{target} exists and is not the output of an earlier run (no papermill"
                         " metadata); give another OUTPUT or move that file away")
    if not target.parent.is_dir():
        raise UsageError(f"the output's directory {target.parent} does not exist")
    return target


def _is_run_output(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "papermill" in (data.get("metadata") or {})


# -- the result ---------------------------------------------------------------------------------

def _result(job: Job, target: Path) -> RunResult:
    import nbformat

    nb = nbformat.read(target, as_version=4)
    meta = nb.metadata.get("nbdurable", {})
    result = RunResult(job.run, meta.get("status", invocations.FAILED), str(target),
                       str(job.log_path), meta.get("restarts", 0), error=meta.get("error"))
    for cell in nb.cells:
        step = durable_step(cell)
        if step is None or cell.get("execution_count") is None:
            continue
        replayed = any(o.get("metadata", {}).get("nbdurable", {}).get("kind") == "replayed"
                       for o in cell.get("outputs", []))
        (result.replayed if replayed else result.executed).append(step)
    if result.error and result.error.get("cell") is not None:
        cells = [c for c in nb.cells if "papermill-error-cell-tag" not in
                 c.get("metadata", {}).get("tags", [])]
        index = result.error["cell"]
        if 0 <= index < len(cells):
            result.error["step"] = durable_step(cells[index])
            injected = sum("injected-parameters" in c.get("metadata", {}).get("tags", [])
                           for c in cells[:index])
            result.error["position"] = index - injected + 1  # in the notebook as written
    return result


def durable_step(cell: Any) -> str | None:
    """The step name of a durable cell (an unnamed one's from its id), else None."""
    if cell.get("cell_type") != "code":
        return None
    return step_of(cell.get("source", ""), cell.get("id"))


def _first_line(value: object) -> str:
    text = str(value or "").strip()
    return text.splitlines()[0] if text else ""



# -- resuming -----------------------------------------------------------------------------------

def resume(run_id: str, *, log: str | os.PathLike[str] | None = None,
           progress: bool = False) -> RunResult:
    """Invoke run ``run_id`` again with the arguments its last ``nbdurable run`` recorded
    (notebook, output, parameters, working directory, kernel, restarts, ``suspend_after``): a
    suspended (``waiting``), crashed or failed run goes on; completed durable cells replay."""
    from nbdurable.engine.history import last_invocation

    run_id = settings.check_run_id(run_id)
    path = default_log(log)
    invocation = last_invocation(run_id, log=path)
    if invocation is None:
        raise UsageError(f"run {run_id!r} was never invoked by `nbdurable run` in {path}: "
                         "nothing records how to resume it; use `nbdurable run` with its "
                         "notebook")
    status = invocations.driven_status(path, run_id, invocation)
    _resumable(run_id, status)
    args = invocation.arguments
    return run(args["notebook"], args.get("output"), run_id=run_id,
               parameters=args.get("parameters") or {}, log=path, cwd=args.get("cwd"),
               kernel=args.get("kernel"), max_restarts=int(args.get("max_restarts") or 0),
               progress=progress, suspend_after=args.get("suspend_after"),
               _resumed_from=(status, invocation.started_at))


def _resumable(run_id: str, status: str) -> None:
    if status == invocations.COMPLETED:
        raise UsageError(f"run {run_id!r} completed; there is nothing to resume (`nbdurable "
                         "run` with the same run id runs it again, replaying every cell)")


def _still(run_id: str, log_path: Path, status: str, started_at: object) -> None:
    """Under the run's claim: the run's latest invocation is still the one ``resume`` found,
    so that two resumes racing (two workers) never execute it twice: the second finds the run
    taken (the claim) or invoked since (this check)."""
    from nbdurable.engine.history import last_invocation

    invocation = last_invocation(run_id, log=log_path)
    if invocation is None or invocation.started_at != started_at:
        raise UsageError(f"run {run_id!r} was invoked again since it was found {status} "
                         "(another worker or command resumed it); nothing to do")
