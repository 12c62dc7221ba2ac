"""Write docs/cli.md from the ``nbdurable`` command itself: ``python docs/cli_reference.py``.

tests/test_cli_reference.py fails when docs/cli.md differs from what this prints, so a command
or an option cannot go undocumented.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from nbdurable.cli import parser

TARGET = Path(__file__).with_name("cli.md")

HEADER = """# `nbdurable` command reference

Generated from the command's own help by `python docs/cli_reference.py`; do not edit by hand.
Every command prints a one-line error and exits non-zero on bad input; `--json` gives
machine-readable output; each command mirrors the library function named in its description.
"""


def commands(top: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser of the command line, depth first, the top one first."""
    yield top
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from commands(sub)


def render() -> str:
    """The reference, laid out here rather than by argparse (whose layout differs between
    Python versions), so the file is the same whatever Python renders it."""
    return HEADER + "\n" + "\n".join(_section(cmd) for cmd in commands(parser()))


def _section(cmd: argparse.ArgumentParser) -> str:
    lines = [f"## `{cmd.prog}`", ""]
    if cmd.description:
        lines += [cmd.description, ""]
    lines += ["```text", _usage(cmd), "```", ""]
    shown = [action for action in cmd._actions if action.help != argparse.SUPPRESS]
    rows = [_row(action) for action in sorted(shown, key=lambda a: bool(a.option_strings))]
    lines += ["| argument | what it does |", "|---|---|", *rows, ""]
    if cmd.epilog:
        lines += [cmd.epilog, ""]
    return "\n".join(lines)


def _usage(cmd: argparse.ArgumentParser) -> str:
    words = [cmd.prog]
    for action in cmd._actions:
        if action.option_strings:
            continue
        name = _metavar(action) if not _choices(action) else "COMMAND ..."
        words.append(f"[{name}]" if action.nargs == "?" else name)
    if any(action.option_strings for action in cmd._actions):
        words.append("[options]")
    return " ".join(words)


def _row(action: argparse.Action) -> str:
    if action.option_strings:
        takes = _metavar(action) if action.nargs != 0 else ""
        names = ", ".join(f"`{(o + ' ' + takes).strip()}`" for o in action.option_strings)
    else:
        names = f"`{_metavar(action)}`"
    what = (action.help or "") % {"default": action.default, "prog": "nbdurable"}
    if _choices(action):
        what = "; ".join(f"`{name}`: {sub.help}" for name, sub in _choices(action).items())
    what = what.replace("|", "\\|")
    return f"| {names} | {what} |"


def _metavar(action: argparse.Action) -> str:
    metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
    return " ".join(metavar) if isinstance(metavar, tuple) else metavar


def _choices(action: argparse.Action) -> dict:
    if not isinstance(action, argparse._SubParsersAction):
        return {}
    return {sub.dest: sub for sub in action._choices_actions}


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
