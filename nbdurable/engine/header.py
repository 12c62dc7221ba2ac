"""The ``%%durable [NAME] [--force] [--replace]`` line: its syntax, read by the IPython adapter
(to run the cell) and by batch runs (to know a notebook's steps before running it).

Without a NAME the step is named after the cell's id, which JupyterLab, Notebook 7 and the
nbdurable papermill engine send with each execution (``cell-<id>``); a front end that sends none
gets an error asking for a name."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

LINE = re.compile(r"^%%durable(?:\s+(?P<args>.*))?$")
USAGE = "usage: %%durable [NAME] [--force] [--replace]"
OPTIONS = ("--force", "--replace")


@dataclass(frozen=True)
class Header:
    """What a ``%%durable`` line says. ``name`` None: unnamed (the cell id names the step)."""

    name: str | None = None
    force: bool = False
    replace: bool = False  # this cell takes the step over from the cell that recorded it
    error: str | None = None


def parse_line(args: str) -> Header:
    """The header from what follows ``%%durable``."""
    try:
        words = shlex.split(args)
    except ValueError as exc:
        return Header(error=f"%%durable {args}: {exc}; {USAGE}")
    force, replace = "--force" in words, "--replace" in words
    rest = [w for w in words if w not in OPTIONS]
    unknown = [w for w in rest if w.startswith("-")]
    if unknown:
        return Header(force=force, error=f"%%durable: unknown option {unknown[0]}; {USAGE}")
    if len(rest) > 1:
        return Header(force=force, error=f"%%durable: one NAME expected, got {rest}; {USAGE}")
    return Header(rest[0] if rest else None, force, replace)


def cell_step(cell_id: str) -> str:
    """The step name of an unnamed durable cell with this id."""
    return f"cell-{cell_id}"


def header_of(source: str) -> Header | None:
    """The header of a cell's ``%%durable`` line, also below leading cell magics such as
    ``%%time`` (which run their body, the durable cell, as a cell); None if not durable."""
    for line in source.splitlines():
        line = line.strip()
        if not line:
            continue
        match = LINE.match(line)
        if match is not None:
            return parse_line(match.group("args") or "")
        if not line.startswith("%%"):
            return None
    return None


def step_of(source: str, cell_id: str | None = None) -> str | None:
    """The step name of a durable cell (an unnamed one's from ``cell_id``); else None."""
    header = header_of(source)
    if header is None or header.error:
        return None
    if header.name is None:
        return cell_step(cell_id) if cell_id else None
    return header.name
