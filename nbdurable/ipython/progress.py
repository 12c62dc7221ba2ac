"""A live progress bar for ``nbdurable.map`` in a notebook (installed by the extension).

Batch runs (``NBDURABLE_PROGRESS=text``, set by ``nbdurable run``) keep the engine's text lines:
a widget in an output notebook shows nothing useful.
"""

from __future__ import annotations

import html
from typing import Any


class ProgressBar:
    """A bar and a line (done / running / failed / reused, elapsed, ETA) under the cell; at
    the end, the final counts are printed too, so that the cell's replay shows them."""

    def __init__(self, progress: Any):  # nbdurable.engine.children.Progress
        import ipywidgets as w
        from IPython.display import display

        self.progress = progress
        total = progress.counts()["total"]
        self.bar = w.IntProgress(value=0, min=0, max=max(total, 1), bar_style="info",
                                 description=progress.name[:20])
        self.label = w.HTML()
        self.box = w.HBox([self.bar, self.label])
        self.update()
        display(self.box)

    def update(self) -> None:
        counts = self.progress.counts()
        self.bar.value = counts["total"] - counts["running"]
        if counts["failed"]:
            self.bar.bar_style = "warning"
        self.label.value = html.escape(self.progress.line())

    def close(self) -> None:
        self.update()
        self.bar.bar_style = "danger" if self.progress.counts()["failed"] else "success"
        if self.progress.durable:  # recorded with the cell's outputs: its replay shows it
            print(self.progress.line(), flush=True)
