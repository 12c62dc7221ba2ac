"""The notebook workloads, in real kernels, for nbdurable, Kishu and plain re-execution.

Every tool runs the same generated notebooks, each in a fresh kernel and a fresh directory,
driven the same way (one ``execute_request`` per cell, timed from the request to the kernel's
idle status); rounds are interleaved and medians reported:

- per-cell overhead: the time of each cell minus that of the same cell in a plain kernel, on a
  60-cell notebook of small cells and one of mixed cells (1 MB arrays, lists, dicts, a cell
  that appends to an earlier list, one that reads an earlier array);
- its growth: the median overhead of cells 1-10 against cells 51-60 of the mixed notebook;
- restore after a restart: the first 20 mixed cells run with the tool, the kernel is shut
  down, a new kernel gets the state back (nbdurable: ``%load_ext nbdurable`` and Run All,
  every cell replayed; Kishu: ``init_kishu`` and a checkout of the last commit; plain: Run All,
  every cell executed again), timed from the first request to the state being back;
- bytes on disk per byte of live state after the 60 mixed cells (live state: the cells'
  variables pickled).

Kishu runs in a kernel of the peers' venv with ``ENV_KISHU_TEST_MODE=1`` and
``TEST_NOTEBOOK_PATH`` (Kishu's own test harness): there is no Jupyter server or front end
here, and outside test mode Kishu asks the front end to save the notebook and polls its mtime
for up to ~1 s at init and checkout, and finds the notebook through the server's sessions.
Test mode skips only that (and numbers commits); every commit still checkpoints the state.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent / "tests")]

from kernels import Kernel, kernel_env  # noqa: E402

N_CELLS, N_RESTORE, ROUNDS = 60, 20, 3
NOTEBOOK = "notebook.ipynb"
TOOLS = ("plain", "nbdurable", "kishu")


def small_cells(n: int) -> list[str]:
    return [f"a{i} = {i} * 2" for i in range(n)]


def mixed_cells(n: int) -> list[str]:
    """A notebook's usual mix, ~1/6 each: scalars, 10,000-item lists, 1 MB arrays, 2,000-key
    dicts, a cell appending to the last list, a cell reading the last array."""
    cells, last_list, last_array = ["import numpy as np"], 1, 2
    for i in range(1, n):
        kind = i % 6
        if kind == 1:
            cells.append(f"l{i} = list(range(10_000))")
            last_list = i
        elif kind == 2:
            cells.append(f"x{i} = np.random.default_rng({i}).random(125_000)")
            last_array = i
        elif kind == 3:
            cells.append(f"d{i} = {{str(k): k for k in range({2000})}}")
        elif kind == 4:
            cells.append(f"l{last_list}.append({i})")
        elif kind == 5:
            cells.append(f"s{i} = float(x{last_array}.sum())")
        else:
            cells.append(f"a{i} = {i} * 2")
    return cells


#: In a kernel after the cells: the bytes of their variables, pickled (the live state).
LIVE_STATE = ("import pickle as _p; print(sum(len(_p.dumps(v, protocol=5)) for k, v in "
              "list(globals().items()) if k[:1] in 'alxds' and k[1:].isdigit()))")


class Tool:
    """How one tool runs a notebook's cells in a kernel of its own."""

    name = "plain"
    python: str | None = None

    def env(self, work: Path) -> dict[str, str]:
        return kernel_env(work)

    def start(self, work: Path, notebook: Path) -> Kernel:
        return Kernel(work, env=self.env(work), python=self.python)

    def cell(self, i: int, source: str) -> str:
        return source

    def restore(self, k: Kernel, work: Path, notebook: Path, cells: list[str],
                head: str | None) -> None:
        """Get the state of ``cells`` back in a new kernel ``k``."""
        for i, source in enumerate(cells):
            _ok(k.execute(self.cell(i, source)))

    def head(self, k: Kernel) -> str | None:
        """What ``restore`` needs to know from the first kernel."""
        return None


class Nbdurable(Tool):
    name = "nbdurable"

    def start(self, work: Path, notebook: Path) -> Kernel:
        k = super().start(work, notebook)
        _ok(k.execute("%load_ext nbdurable"))
        return k

    def cell(self, i: int, source: str) -> str:
        return f"%%durable c{i}\n{source}"

    def restore(self, k: Kernel, work: Path, notebook: Path, cells: list[str],
                head: str | None) -> None:
        _ok(k.execute("%load_ext nbdurable"))
        super().restore(k, work, notebook, cells, head)


class Kishu(Tool):
    name = "kishu"

    def __init__(self, python: str):
        self.python = python

    def env(self, work: Path) -> dict[str, str]:
        root = work / "kishu-root"
        root.mkdir(exist_ok=True)
        return kernel_env(work, ENV_KISHU_TEST_MODE="1", KISHU_PATH_ROOT=str(root),
                          TEST_NOTEBOOK_PATH=str(work / NOTEBOOK))  # no server: the path

    def start(self, work: Path, notebook: Path) -> Kernel:
        k = super().start(work, notebook)
        _ok(k.execute(f"from kishu import init_kishu; init_kishu({str(notebook)!r})"))
        return k

    def head(self, k: Kernel) -> str | None:
        return k.execute("print(_kishu._kishu_branch.get_head().commit_id)").stream().strip()

    def restore(self, k: Kernel, work: Path, notebook: Path, cells: list[str],
                head: str | None) -> None:
        _ok(k.execute(f"from kishu import init_kishu; init_kishu({str(notebook)!r}); "
                      f"_kishu.checkout({head!r})"))


def _ok(reply: object) -> None:
    assert getattr(reply, "status", None) == "ok", reply


def _notebook(work: Path, cells: list[str], tool: Tool) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(tool.cell(i, s)) for i, s in enumerate(cells)]
    path = work / NOTEBOOK
    nbformat.write(nb, path)
    return path


def _timed_cells(k: Kernel, tool: Tool, cells: list[str]) -> list[float]:
    times = []
    for i, source in enumerate(cells):
        t = time.perf_counter()
        _ok(k.execute(tool.cell(i, source)))
        times.append(time.perf_counter() - t)
    return times


def _disk_bytes(work: Path) -> int:
    """What the tool stored: every file of its directory but the notebook."""
    return sum(p.stat().st_size for p in work.rglob("*")
               if p.is_file() and p.suffix != ".ipynb")


@dataclass
class NotebookRun:
    times: list[float]  # s per cell, request -> idle
    disk: int  # bytes the tool stored
    live: int  # bytes of the cells' variables, pickled


def run_notebook(tool: Tool, work: Path, cells: list[str]) -> NotebookRun:
    work.mkdir(parents=True)
    notebook = _notebook(work, cells, tool)
    with tool.start(work, notebook) as k:
        times = _timed_cells(k, tool, cells)
        live = int(k.execute(LIVE_STATE).stream().strip())
    return NotebookRun(times, _disk_bytes(work), live)  # shut down: the journal is in the log


def run_restore(tool: Tool, work: Path, cells: list[str]) -> float:
    work.mkdir(parents=True)
    notebook = _notebook(work, cells, tool)
    with tool.start(work, notebook) as k:
        _timed_cells(k, tool, cells)
        head = tool.head(k)
    with Kernel(work, env=tool.env(work), python=tool.python) as k:
        t = time.perf_counter()
        tool.restore(k, work, notebook, cells, head)
        elapsed = time.perf_counter() - t
        last = next(f"{c.split(' =')[0]}" for c in reversed(cells) if " = " in c)
        _ok(k.execute(f"assert {last!r} in globals(), 'state not restored'"))
    return elapsed


def _per_cell(times: dict[str, list[list[float]]]) -> dict[str, list[float]]:
    """Per tool, the median time of each cell over the rounds."""
    return {tool: [statistics.median(r[i] for r in rounds) for i in range(len(rounds[0]))]
            for tool, rounds in times.items()}


def _overheads(per_cell: dict[str, list[float]], tool: str) -> list[float]:
    return [t - p for t, p in zip(per_cell[tool], per_cell["plain"], strict=True)]


def measure(work: Path, kishu_python: str | None, progress: Callable[[str], None] = print
            ) -> dict[str, dict[str, object]]:
    """Figures per tool. Kishu's are missing when ``kishu_python`` is None; a peer that fails
    has its error instead, and the others go on."""
    tools: list[Tool] = [Tool(), Nbdurable()] + ([Kishu(kishu_python)] if kishu_python else [])
    runs = {t.name: _Runs() for t in tools}
    failed: dict[str, dict[str, object]] = {}
    for r in range(ROUNDS):
        for tool in [t for t in tools if t.name not in failed]:
            progress(f"notebooks: round {r + 1}/{ROUNDS}, {tool.name}")
            try:
                runs[tool.name].add(tool, work / f"{tool.name}-{r}")
            except Exception as exc:
                if tool.name in ("plain", "nbdurable"):
                    raise
                failed[tool.name] = {"error": f"failed: {type(exc).__name__}: "
                                              f"{str(exc).splitlines()[0][:200]}"}
    ok = [t for t in tools if t.name not in failed]
    return {**_figures(ok, runs), **failed}


class _Runs:
    """One tool's figures over the rounds."""

    def __init__(self) -> None:
        self.small: list[list[float]] = []
        self.mixed: list[list[float]] = []
        self.restore: list[float] = []
        self.disk: list[int] = []
        self.live: list[int] = []

    def add(self, tool: Tool, base: Path) -> None:
        self.small.append(run_notebook(tool, base / "small", small_cells(N_CELLS)).times)
        mixed = run_notebook(tool, base / "mixed", mixed_cells(N_CELLS))
        self.mixed.append(mixed.times)
        self.disk.append(mixed.disk)
        self.live.append(mixed.live)
        self.restore.append(run_restore(tool, base / "restore", mixed_cells(N_RESTORE)))


def _figures(tools: list[Tool], runs: dict[str, _Runs]) -> dict[str, dict[str, object]]:
    small = _per_cell({t.name: runs[t.name].small for t in tools})
    mixed = _per_cell({t.name: runs[t.name].mixed for t in tools})
    live = statistics.median(runs["plain"].live)
    out: dict[str, dict[str, object]] = {}
    for tool in tools:
        s, m = _overheads(small, tool.name), _overheads(mixed, tool.name)
        out[tool.name] = {
            "cell_small_ms": statistics.median(s) * 1000,
            "cell_mixed_ms": statistics.median(m) * 1000,
            "cell_first10_ms": statistics.median(m[:10]) * 1000,
            "cell_last10_ms": statistics.median(m[-10:]) * 1000,
            "restore_20_s": statistics.median(runs[tool.name].restore),
            "bytes_per_live_byte": statistics.median(runs[tool.name].disk) / live,
            "live_state_bytes": live,
        }
    return out


if __name__ == "__main__":  # python bench/peers/notebook_side.py WORKDIR [KISHU_PYTHON]
    print(json.dumps(measure(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None),
                     indent=2))
