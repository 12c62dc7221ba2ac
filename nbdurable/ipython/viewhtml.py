"""A :class:`~nbdurable.engine.runview.RunView` as HTML: the live viewer's tables, and the static
copy a saved notebook, nbconvert or papermill output keeps where no kernel runs.

Plain HTML with inline styles (no front-end extension, no script): every text from the log is
escaped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from nbdurable.engine.runview import RunView, StepStatus, StepView, WaitLine

_STYLES = (  # status, icon, colour: like Temporal's and Hatchet's run pages
    (StepStatus.COMPLETED, "✓", "#2e7d32"), (StepStatus.FAILED, "✗", "#c62828"),
    (StepStatus.RUNNING, "▶", "#1565c0"), (StepStatus.WAITING, "⏸", "#ef6c00"),
    (StepStatus.INTERRUPTED, "■", "#6d4c41"), (StepStatus.CRASHED, "⚠", "#ad1457"),
    (StepStatus.RESET, "↺", "#757575"),
)


def style(status: StepStatus) -> tuple[str, str]:
    """(icon, colour) of a status."""
    return next((icon, colour) for s, icon, colour in _STYLES if s == status)


_TABLE = "border-collapse:collapse;font-size:12px;margin:4px 0"
_CELL = "padding:2px 8px;text-align:left;border-bottom:1px solid #e0e0e0"


def render(view: RunView) -> str:
    """The whole view: header, steps with their timeline, waits, children, events."""
    return (f'<div class="nbdurable-view" style="font-family:sans-serif">{header(view)}'
            f"{steps(view)}{waits(view)}{children(view)}{events(view)}</div>")


def header(view: RunView) -> str:
    c = view.counts
    counts = (f"{c['completed']} completed · {c['failed']} failed · {c['running']} running · "
              f"{c['waiting']} waiting · {c['reused']} reused")
    notebook = f" · {escape(view.notebook)}" if view.notebook else ""
    return (f'<div style="margin:2px 0"><b>run {escape(view.run)}</b>{notebook} · '
            f"<b>{escape(view.status)}</b> · {counts} · {_seconds(view.total_s)}</div>")


def steps(view: RunView) -> str:
    if not view.steps:
        return "<div>no steps yet</div>"
    heads = ["status", "step", "attempts", "why", "started", "duration", "stored", "timeline"]
    rows = "".join(_step_row(s) for s in view.steps)
    return _table(heads, rows, "steps")


def _step_row(s: StepView) -> str:
    icon, colour = style(s.status)
    retry = (f' <span style="background:#fff3e0;border-radius:6px;padding:0 4px">'
             f"retried {s.attempts - 1}×</span>") if s.attempts > 1 else ""
    error = (f'<details><summary style="color:#c62828">{escape(s.error)}</summary>'
             f'<pre style="white-space:pre-wrap;margin:0">{escape(s.error_detail or "")}</pre>'
             "</details>") if s.error else ""
    bar = (f'<div style="position:relative;width:160px;height:10px;background:#f5f5f5">'
           f'<div title="{escape(s.step)}: {_seconds(s.duration_s)}" style="position:absolute;'
           f"left:{s.offset * 100:.1f}%;width:{min(s.width, 1 - s.offset) * 100:.1f}%;"
           f'min-width:2px;height:10px;background:{colour}"></div></div>')
    cells = [f'<span style="color:{colour}">{icon} {s.status}</span>',
             f"<code>{escape(s.step)}</code>{error}", f"{s.attempts}{retry}", escape(s.why),
             f"{s.started_at:%H:%M:%S}", _seconds(s.duration_s), _bytes(s.stored_bytes), bar]
    return "<tr>" + "".join(f'<td style="{_CELL}">{c}</td>' for c in cells) + "</tr>"


def waits(view: RunView) -> str:
    lines = [(s, w) for s in view.steps for w in s.waits if w.waiting]
    if not lines:
        return ""
    rows = "".join(f'<tr><td style="{_CELL}"><code>{escape(s.step)}</code></td>'
                   f'<td style="{_CELL}">{escape(w.waiting_for)}</td>'
                   f'<td style="{_CELL}">{_countdown(w, view.taken_at)}</td></tr>'
                   for s, w in lines)
    return _table(["waiting step", "waits for", "deadline"], rows, "waits")


def children(view: RunView) -> str:
    rows = "".join(
        f'<tr><td style="{_CELL}"><code>{escape(s.step)}</code></td>'
        f'<td style="{_CELL}">{escape(g.group)}</td><td style="{_CELL}">{g.children}</td>'
        f'<td style="{_CELL}">{g.completed}</td><td style="{_CELL}">{g.failed}</td>'
        f'<td style="{_CELL}">{g.reused}</td><td style="{_CELL}">{g.attempts}</td></tr>'
        for s in view.steps for g in s.children)
    if not rows:
        return ""
    return _table(["step", "map", "children recorded", "completed", "failed", "reused",
                   "attempts"], rows, "children")


def events(view: RunView) -> str:
    pending = "".join(f'<tr><td style="{_CELL}"><code>{escape(e.key)}</code></td>'
                      f'<td style="{_CELL}">{e.pushed_at:%H:%M:%S}</td>'
                      f'<td style="{_CELL}"><code>{escape(e.payload)}</code></td></tr>'
                      for e in view.pending)
    consumed = "".join(f'<tr><td style="{_CELL}"><code>{escape(e.key)}</code></td>'
                       f'<td style="{_CELL}">{e.pushed_at:%H:%M:%S}</td>'
                       f'<td style="{_CELL}"><code>{escape(e.payload)}</code></td>'
                       f'<td style="{_CELL}">{escape(e.consumed_by or "")}</td></tr>'
                       for e in view.consumed)
    out = ""
    if pending:
        out += _table(["pending event", "pushed", "payload"], pending, "pending", more=view
                      .more_events["pending"])
    if consumed:
        out += _table(["consumed event", "pushed", "payload", "by"], consumed, "consumed",
                      more=view.more_events["consumed"])
    return out


def _table(heads: list[str], rows: str, name: str, more: int = 0) -> str:
    head = "".join(f'<th style="{_CELL}">{h}</th>' for h in heads)
    tail = f"<div>… and {more} more</div>" if more else ""
    return (f'<table class="nbdurable-{name}" style="{_TABLE}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table>{tail}")


def _countdown(wait: WaitLine, now: datetime) -> str:
    if wait.deadline is None:
        return "none"
    left = (wait.deadline - now).total_seconds()
    at = wait.deadline.replace(tzinfo=UTC).astimezone().strftime("%H:%M:%S")
    return f"{at} (in {_seconds(left)})" if left > 0 else f"{at} (passed)"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes} min {seconds} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
