"""The ``nbdurable`` command. Each subcommand parses its arguments, calls the library function
of the same name and prints the result; expected errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import NbdurableError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbdurable", description="Durable execution for Jupyter notebooks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = sub.add_parser(
        "demo", help="run the quickstart notebook, kill its kernel midway, resume, report",
        description="Run notebooks/01-quickstart.ipynb headless, SIGKILL its kernel in the "
                    "middle of a durable cell, run it again in a fresh kernel and print what "
                    "replayed and what ran.")
    demo.add_argument("notebook", nargs="?", help="notebook to run (default: the quickstart)")
    demo.add_argument("--dir", default="nbdurable-demo",
                      help="working directory of the demo kernel (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import demo

            report = demo(args.notebook, workdir=args.dir)
            return 0 if report.completed else 1
    except NbdurableError as exc:
        print(f"nbdurable: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nbdurable: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
