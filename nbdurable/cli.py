"""The ``nbdurable`` command. Each subcommand parses its arguments, calls the library function
of the same name and prints the result; expected errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import json
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

    event = sub.add_parser("event", help="push events to a run, list a run's events",
                           description="Events feed the waits of durable cells.")
    event_sub = event.add_subparsers(dest="event_command", metavar="ACTION", required=True)
    push = event_sub.add_parser(
        "push", help="put an event in a run's mailbox (nbdurable.push_event)",
        description="Put an event in a run's mailbox; a cell waiting for KEY carries on.")
    push.add_argument("run", metavar="RUN")
    push.add_argument("key", metavar="KEY")
    push.add_argument("payload", metavar="PAYLOAD_JSON", nargs="?",
                      help="JSON payload; '-' reads it from stdin (default: null)")
    push.add_argument("--id", help="event id: pushing the same id again adds nothing")
    _common(push)
    listing = event_sub.add_parser(
        "list", help="a run's events, pending and consumed (nbdurable.list_events)",
        description="List a run's events, oldest first, pending and consumed.")
    listing.add_argument("run", metavar="RUN")
    _common(listing)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", help="the log file (default: NBDURABLE_LOG, else "
                                      ".nbdurable/log.duckdb)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _event_push(args) -> int:
    from .events import parse_payload, push_event

    text = sys.stdin.read() if args.payload == "-" else (args.payload or "")
    event_id = push_event(args.key, parse_payload(text), run=args.run, log=args.log,
                          id=args.id)
    print(json.dumps({"id": event_id, "run": args.run, "key": args.key}) if args.json
          else event_id)
    return 0


def _event_list(args) -> int:
    from .events import list_events

    frame = list_events(args.run, log=args.log)
    if args.json:
        print(frame.to_json(orient="records", date_format="iso"))
    elif frame.empty:
        print(f"no events in run {args.run!r}")
    else:
        print(frame.to_string(index=False))
    return 0


def _demo(args) -> int:
    from .demo import demo

    return 0 if demo(args.notebook, workdir=args.dir).completed else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"demo": _demo, "event": None}[args.command]
    if args.command == "event":
        handler = {"push": _event_push, "list": _event_list}[args.event_command]
    try:
        return handler(args)
    except NbdurableError as exc:
        print(f"nbdurable: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nbdurable: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
