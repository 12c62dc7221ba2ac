"""Which cell is which: a step and the notebook cell it belongs to.

Front ends send the id of the cell they execute (JupyterLab and Notebook 7: ``metadata.cellId``
of each ``execute_request``; the nbdurable papermill engine: the notebook's nbformat 4.5 ids), and
each attempt records it. A ``%%durable NAME`` cell whose NAME the latest attempt recorded from
another cell is a copy when that other cell still is step NAME as far as this process can tell:
it ran as NAME in this kernel, or the saved notebook has it with that header. A copy is refused
(:class:`~nbdurable.errors.StepCollisionError`); a cell whose recorder is gone (moved, cut and
pasted, re-created) takes the step over silently, and ``--replace`` says so explicitly.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdurable.engine.header import step_of
from nbdurable.errors import StepCollisionError

MAX_NOTEBOOK = 256 << 20  # a saved notebook larger than this is not read for its cell ids


@dataclass(frozen=True)
class Holder:
    """The other cell that still is a step."""

    cell_id: str
    where: str  # "cell 3 of report.ipynb", "a cell run in this kernel"


class CellIds:
    """The cells one kernel ran, by id, and the step each ran as last."""

    def __init__(self) -> None:
        self.ran: dict[str, str] = {}

    def check(self, step: str, cell_id: str | None, recorded: str | None, *,
              replace: bool, notebook: Callable[[], str | None]) -> None:
        """Refuse ``cell_id`` as ``step`` if the cell ``recorded`` (the step's latest attempt)
        still is that step; then remember that ``cell_id`` ran as ``step``. ``notebook`` gives
        the saved notebook's path, asked only then."""
        if cell_id and recorded and recorded != cell_id and not replace:
            holder = self.holder(step, recorded, notebook())
            if holder is not None:
                raise StepCollisionError(_collision(step, cell_id, holder))
        if cell_id:
            self.ran[cell_id] = step

    def holder(self, step: str, cell_id: str, notebook: str | None) -> Holder | None:
        if self.ran.get(cell_id) == step:
            return Holder(cell_id, "a cell run in this kernel")
        for index, cell in enumerate(saved_cells(notebook)):
            if cell["id"] == cell_id and step_of(cell["source"], cell_id) == step:
                return Holder(cell_id, f"cell {index + 1} of {Path(notebook or '').name}")
        return None


def _collision(step: str, cell_id: str, holder: Holder) -> str:
    return (f"step {step!r} is already {holder.where} (cell id {holder.cell_id}); this cell "
            f"(id {cell_id}) has the same name, so each would re-execute the other's step: "
            f"rename this one (%%durable {step}_2), or write `%%durable {step} --replace` if it "
            "is the same step moved here")


def saved_cells(notebook: str | None) -> list[dict[str, Any]]:
    """The code cells of the saved notebook (nbformat JSON); [] if it cannot be read. The file
    comes from outside: anything unexpected means no cells, never an error. Read once per
    version of the file (its size and modification time)."""
    path = _find(notebook)
    if path is None:
        return []
    try:
        stat = path.stat()
    except OSError:
        return []
    if stat.st_size > MAX_NOTEBOOK:
        return []
    return _read_cells(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read_cells(path: Path, mtime_ns: int, size: int) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return []
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list):
        return []
    return [{"id": c.get("id"), "source": _source(c)} for c in cells
            if isinstance(c, dict) and c.get("cell_type") == "code"]


def _find(notebook: str | None) -> Path | None:
    """The notebook file: as given (relative to the working directory), else its name there
    (Jupyter gives the path from the server's root; the kernel runs in the notebook's
    directory)."""
    if not notebook or "://" in notebook:
        return None
    for path in (Path(notebook), Path(os.getcwd()) / Path(notebook).name):
        if path.suffix == ".ipynb" and path.is_file():
            return path
    return None


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)
