"""How far a map's children are: counts, a one-line summary, and how it is shown.

The engine shows text lines (batch runs, plain Python): one every few seconds while the children
run, and the final counts. The IPython adapter plugs a live bar in (:func:`set_progress_ui`),
like the wait panel. In a durable cell the final counts are printed either way: recorded with
the cell's outputs, the cell's replay shows them again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

EVERY = 0.25  # seconds between two looks at a map's children
_TEXT_EVERY = 5.0  # seconds between two progress lines of the text display


class _Child(Protocol):  # nbdurable.engine.children.Child
    reused: bool

    def done(self) -> bool: ...

    @property
    def failed(self) -> bool: ...


class Progress:
    """The state of one map's children, counted when asked."""

    def __init__(self, name: str, children: Sequence[_Child], *, durable: bool):
        self.name, self.children, self.durable = name, children, durable
        self.started = time.monotonic()

    def counts(self) -> dict[str, int]:
        done = [c for c in self.children if c.done()]
        return {"total": len(self.children), "reused": sum(c.reused for c in done),
                "failed": sum(c.failed for c in done),
                "completed": sum(not c.failed and not c.reused for c in done),
                "running": len(self.children) - len(done)}

    def finished(self) -> bool:
        return all(c.done() for c in self.children)

    def line(self) -> str:
        """``map#0: 37/60 done (20 reused), 1 failed, 23 running, 12 s, ETA 8 s``."""
        n = self.counts()
        done = n["completed"] + n["reused"] + n["failed"]
        elapsed = time.monotonic() - self.started
        text = f"{self.name}: {done}/{n['total']} done ({n['reused']} reused)"
        text += f", {n['failed']} failed" if n["failed"] else ""
        if not n["running"]:
            return text + f" in {elapsed:.1f} s"
        text += f", {n['running']} running, {elapsed:.0f} s"
        ran = n["completed"] + n["failed"]
        return text + (f", ETA {elapsed / ran * n['running']:.0f} s" if ran else "")


class TextProgress:
    """Progress as text lines: one every few seconds, then the final counts (in a durable
    cell: outside one nobody needs the record)."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self._last = time.monotonic()

    def update(self) -> None:
        if time.monotonic() - self._last >= _TEXT_EVERY and not self.progress.finished():
            self._last = time.monotonic()
            print(self.progress.line(), flush=True)

    def close(self) -> None:
        if self.progress.durable:
            print(self.progress.line(), flush=True)


#: The display of a map's progress (None: text lines).
_progress_ui: Callable[[Progress], Any] | None = None


def set_progress_ui(factory: Callable[[Progress], Any] | None) -> None:
    """``factory(progress)`` returns an object with ``update()`` and ``close()``; None: text."""
    global _progress_ui
    _progress_ui = factory


def display(progress: Progress) -> Any:
    """The display of ``progress``: the plugged-in one, else text lines."""
    return (_progress_ui or TextProgress)(progress)
