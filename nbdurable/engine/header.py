"""The ``%%durable NAME [--force]`` line: its syntax, read by the IPython adapter (to run the
cell) and by batch runs (to know a notebook's steps before running it)."""

from __future__ import annotations

import re
import shlex

LINE = re.compile(r"^%%durable(?:\s+(?P<args>.*))?$")
USAGE = "usage: %%durable NAME [--force]"


def parse_line(args: str) -> tuple[str | None, bool, str | None]:
    """(name, force, error) from what follows ``%%durable``."""
    try:
        words = shlex.split(args)
    except ValueError as exc:
        return None, False, f"%%durable {args}: {exc}; {USAGE}"
    force = "--force" in words
    rest = [w for w in words if w != "--force"]
    unknown = [w for w in rest if w.startswith("-")]
    if unknown:
        return None, force, f"%%durable: unknown option {unknown[0]}; {USAGE}"
    if len(rest) != 1:
        what = "a step NAME is missing" if not rest else f"one NAME expected, got {rest}"
        return None, force, f"%%durable: {what}; {USAGE}"
    return rest[0], force, None


def step_of(source: str) -> str | None:
    """The step name of a cell's ``%%durable NAME`` line, also below leading cell magics such
    as ``%%time`` (which run their body, the durable cell, as a cell); else None."""
    for line in source.splitlines():
        line = line.strip()
        if not line:
            continue
        match = LINE.match(line)
        if match is not None:
            return parse_line(match.group("args") or "")[0]
        if not line.startswith("%%"):
            return None
    return None
