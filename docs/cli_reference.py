"""Write docs/cli.md from the ``nbdurable`` command itself: ``python docs/cli_reference.py``.

tests/test_cli_reference.py fails when docs/cli.md differs from what this prints, so a command
or an option cannot go undocumented.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

from nbdurable.cli import parser

TARGET = Path(__file__).with_name("cli.md")
WIDTH = "100"

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
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH  # argparse wraps help text to the terminal's width
    try:
        sections = [f"## `{cmd.prog}`\n\n```text\n{cmd.format_help().rstrip()}\n```\n"
                    for cmd in commands(parser())]
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return HEADER + "\n" + "\n".join(sections)


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
