"""``nbdurable demo``: run the quickstart notebook, kill its kernel midway, resume, report.

The notebook runs headless (nbclient) in a working directory of its own, on the default log
(``.nbdurable/log.duckdb`` under that directory). While its ``summarize`` cell is making its
"LLM calls", the demo SIGKILLs the kernel, as an OOM killer would. It then runs the notebook
again in a fresh kernel and prints which cells replayed, which executed and how many times each
side effect happened.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nbdurable import settings
from nbdurable.errors import NbdurableError, UsageError

NOTEBOOK = Path("notebooks") / "01-quickstart.ipynb"
#: Installed with the package (pyproject's data-files) for runs outside the repository.
BUNDLED = Path(sys.prefix) / "share" / "nbdurable" / "notebooks" / "01-quickstart.ipynb"
SIDE_EFFECTS = "side_effects.log"


@dataclass
class DemoReport:
    run: str
    workdir: Path
    killed: bool
    completed: bool
    steps: list[tuple[str, str, str]] = field(default_factory=list)  # (step, kind, detail)
    first_effects: Counter[str] = field(default_factory=Counter)
    total_effects: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "workdir": str(self.workdir), "killed": self.killed,
                "completed": self.completed,
                "steps": [{"step": s, "kind": k, "detail": d} for s, k, d in self.steps],
                "first_effects": dict(self.first_effects),
                "total_effects": dict(self.total_effects)}


def demo(notebook: str | os.PathLike[str] | None = None, *,
         workdir: str | os.PathLike[str] = "nbdurable-demo",
         log: str | os.PathLike[str] | None = None, kill_after: int = 2,
         echo: Callable[[str], Any] = print) -> DemoReport:
    """Run the demo and print what happened; returns the same facts as a :class:`DemoReport`.
    ``log`` defaults to ``.nbdurable/log.duckdb`` in ``workdir``."""
    import nbformat

    source = _find_notebook(notebook)
    work = Path(workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    effects = work / SIDE_EFFECTS
    effects.write_text("")
    run = f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    log_path = settings.check_log_arg(log) if log is not None else work / settings.DEFAULT_LOG
    env = _kernel_env(run, log_path)
    echo(f"nbdurable demo: {source} in {work}, run {run!r}, log {log_path}")

    nb = nbformat.read(source, as_version=4)
    killed = _run_and_kill(nb, work, env, effects, kill_after)
    nbformat.write(nb, work / "run1-killed.ipynb")
    first = _effects(effects)
    n = first["summarize"]
    echo(f"\n1st run: kernel SIGKILLed during `summarize`, while its LLM call #{n} was running "
         f"({n - 1} finished)" if killed else "\n1st run: finished before the kill")

    nb = nbformat.read(source, as_version=4)
    completed = _run(nb, work, env)
    nbformat.write(nb, work / "run2-resumed.ipynb")
    report = DemoReport(run, work, killed, completed, _steps(nb), first, _effects(effects))
    _print_report(report, echo)
    return report


def _find_notebook(notebook: str | os.PathLike[str] | None) -> Path:
    if notebook is not None:
        path = Path(notebook)
        if not path.is_file():
            raise UsageError(f"notebook {path} not found; give the path of an .ipynb file")
        return path
    for path in (NOTEBOOK, BUNDLED):
        if path.is_file():
            return path
    raise UsageError(f"the quickstart notebook is neither at {NOTEBOOK} nor at {BUNDLED}; "
                     "give its path: nbdurable demo NOTEBOOK")


def _kernel_env(run: str, log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBDURABLE_", "PYTEST_"))}
    env["NBDURABLE_RUN"], env["NBDURABLE_LOG"] = run, str(log)
    return env


def _client(nb: Any, work: Path) -> Any:
    from nbclient import NotebookClient

    from nbdurable.kernels import local_kernel_config

    return NotebookClient(nb, timeout=600, kernel_name="python3", config=local_kernel_config(),
                          resources={"metadata": {"path": str(work)}})


def _run(nb: Any, work: Path, env: dict[str, str]) -> bool:
    from nbclient.exceptions import CellExecutionError

    try:
        _client(nb, work).execute(env=env)
    except CellExecutionError as exc:
        raise NbdurableError(f"the demo notebook failed: {str(exc).splitlines()[0]}") from None
    return True


def _run_and_kill(nb: Any, work: Path, env: dict[str, str], effects: Path,
                  kill_after: int) -> bool:
    """Execute ``nb``; SIGKILL its kernel when summary ``kill_after + 1`` starts (so that
    ``kill_after`` are finished and one is in flight)."""
    from nbclient.exceptions import DeadKernelError

    client = _client(nb, work)
    killed = threading.Event()
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set():
            if _effects(effects)["summarize"] > kill_after and client.km is not None:
                os.kill(client.km.provisioner.pid, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=killer, daemon=True)
    watcher.start()
    try:
        client.execute(env=env)
    except DeadKernelError:
        pass
    finally:
        stop.set()
        watcher.join()
    return killed.is_set()


def _effects(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def _steps(nb: Any) -> list[tuple[str, str, str]]:
    """(step, replayed|executed, detail) from the notices in an executed notebook."""
    steps = []
    for cell in nb.cells:
        first_line = cell.source.splitlines()[0] if cell.source else ""
        if cell.cell_type != "code" or not first_line.startswith("%%durable"):
            continue
        name = first_line.split()[1]
        notes = [o["metadata"]["nbdurable"] for o in cell.get("outputs", [])
                 if o.get("output_type") == "display_data" and "nbdurable" in o.get("metadata", {})]
        if notes and notes[0]["kind"] == "replayed":
            steps.append((name, "replayed", "body not run"))
        elif notes:
            steps.append((name, "executed", notes[0].get("reason", "")))
        else:
            steps.append((name, "executed", "first execution"))
    return steps


def _print_report(report: DemoReport, echo: Callable[[str], Any]) -> None:
    echo("2nd run (fresh kernel, Run All):" if report.completed else "2nd run did not finish")
    for name, kind, detail in report.steps:
        echo(f"  {name:<10} {kind:<9} {detail}")
    total, first = report.total_effects, report.first_effects
    echo("\nside effects (each real call appends a line to side_effects.log):")
    for what, needed in (("fetch", 1), ("summarize", 5), ("email", 1)):
        echo(f"  {what:<10} {total[what]} in all: {first[what]} before the kill, "
             f"{total[what] - first[what]} after (a plain re-run: {first[what] + needed})")
    echo("  The summarize call in flight when the kernel died ran again: work in flight is\n"
         "  at-least-once; finished calls, steps and `once` keys are never repeated.")
    echo(f"\noutput notebooks: {report.workdir / 'run1-killed.ipynb'}, "
         f"{report.workdir / 'run2-resumed.ipynb'}")
