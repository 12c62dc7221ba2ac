"""docs/cli.md is generated from the command line; it must be current and complete."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_command_and_option_is_documented():
    gen = _generator()
    text = (DOCS / "cli.md").read_text()
    for cmd in gen.commands(gen.parser()):
        assert f"## `{cmd.prog}`" in text, f"`{cmd.prog}` is not in docs/cli.md"
        section = text.split(f"## `{cmd.prog}`", 1)[1].split("\n## ", 1)[0]
        for action in cmd._actions:
            for option in action.option_strings:
                assert option in section, f"`{cmd.prog} {option}` is not in docs/cli.md"


def test_the_reference_is_current():
    assert _generator().render() == (DOCS / "cli.md").read_text(), (
        "docs/cli.md is stale: run `python docs/cli_reference.py`")
