"""The ``nbdurable`` command. Each subcommand parses its arguments, calls the library function
of the same name and prints the result; ``--json`` prints it as JSON instead. Expected errors
print one line, ``nbdurable: error: ...``, and exit 2; a run whose cell raised exits 1, a run
whose kernel died exits 3."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from nbdurable.errors import NbdurableError

if TYPE_CHECKING:  # pragma: no cover
    from nbdurable import RunResult

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

EPILOG = ("exit status: 0 done; 1 a cell raised; 2 bad input or another expected error "
          "(one line on stderr); 3 the kernel died (run the same command again to resume); "
          "4 the run is waiting, suspended (nbdurable resume RUN, or a worker, goes on)")


def parser() -> argparse.ArgumentParser:
    """The command line, for ``main`` and for the generated reference (docs/cli.md)."""
    top = argparse.ArgumentParser(prog="nbdurable", epilog=EPILOG,
                                  description="Durable execution for Jupyter notebooks.")
    top.add_argument("--version", action="version", version=_version())
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _run_parser(sub)
    _resume_parser(sub)
    _worker_parser(sub)
    _runs_parser(sub)
    _log_parser(sub)
    _reset_parser(sub)
    _fork_parser(sub)
    _event_parser(sub)
    _serve_parser(sub)
    _trust_parser(sub)
    _sql_parser(sub)
    _gc_parser(sub)
    _demo_parser(sub)
    return top


def _command(sub: Subparsers, name: str, function: str, help: str,
             description: str) -> argparse.ArgumentParser:
    cmd = sub.add_parser(name, help=help, epilog=EPILOG,
                         description=f"{description} (library: {function})")
    cmd.add_argument("--log", metavar="PATH", help="the log file (default: NBDURABLE_LOG, else "
                     ".nbdurable/log.duckdb in the working directory)")
    cmd.add_argument("--json", action="store_true", help="print the result as JSON")
    return cmd


def _run_parser(sub: Subparsers) -> None:
    cmd = _command(sub, "run", "nbdurable.run", "execute a notebook with papermill; run it "
                   "again to resume", "Execute NOTEBOOK with papermill as a durable run. "
                   "Running the same run id again resumes it: completed durable cells replay "
                   "from the log, the rest executes.")
    cmd.add_argument("notebook", metavar="NOTEBOOK", help="the notebook to execute")
    cmd.add_argument("output", metavar="OUTPUT", nargs="?",
                     help="the executed notebook (default: NOTEBOOK's name + .out.ipynb)")
    cmd.add_argument("--run-id", metavar="ID", help="the run (default: a run_id parameter, "
                     "else derived from the notebook path and parameters, and printed)")
    cmd.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                     metavar=("NAME", "VALUE"), help="a papermill parameter (typed like "
                     "papermill: int, float, True/False/None, else a string)")
    cmd.add_argument("--cwd", metavar="DIR", help="the kernel's working directory "
                     "(default: the current one)")
    cmd.add_argument("--kernel", metavar="NAME", help="the kernel (default: the notebook's)")
    cmd.add_argument("--max-restarts", metavar="N", type=_count, default=0,
                     help="start a fresh kernel and resume after a kernel death, up to N "
                     "times (default: 0)")
    cmd.add_argument("--suspend-after", metavar="SECONDS", type=_seconds,
                     help="a durable wait still unmet after SECONDS suspends the run: the kernel "
                     "stops, the command exits 4, and `nbdurable resume` or `nbdurable worker` "
                     "goes on later (default: never)")
    cmd.add_argument("--progress", action="store_true", help="show papermill's progress bar")
    cmd.set_defaults(handler=_run)


def _resume_parser(sub: Subparsers) -> None:
    cmd = _command(sub, "resume", "nbdurable.resume", "invoke a suspended or crashed run again",
                   "Invoke RUN again with the arguments its last `nbdurable run` recorded "
                   "(notebook, output, parameters, cwd, kernel, restarts, --suspend-after): "
                   "completed durable cells replay, a waiting cell gets its event or goes on "
                   "after its sleep.")
    cmd.add_argument("run", metavar="RUN", help="the run id; - reads it from stdin once "
                     "everything a resume needs is loaded (how the worker keeps one warm)")
    cmd.add_argument("--progress", action="store_true", help="show papermill's progress bar")
    cmd.set_defaults(handler=_resume)


def _worker_parser(sub: Subparsers) -> None:
    cmd = _command(sub, "worker", "nbdurable.worker", "resume suspended runs when they can go "
                   "on", "Watch the log and resume each suspended run (status waiting) as soon "
                   "as it can go on: an event pushed for a key it waits for, a sleep or timeout "
                   "over. One line per resume and per end. Ctrl-C / SIGTERM stop it; runs in "
                   "flight stay resumable.")
    cmd.add_argument("--once", action="store_true", help="resume what is ready now, wait for "
                     "those resumes, then exit (for cron)")
    cmd.add_argument("--max-parallel", metavar="N", type=_positive, default=1,
                     help="resume at most N runs at a time (default: 1)")
    cmd.set_defaults(handler=_worker)


def _runs_parser(sub: Subparsers) -> None:
    cmd = _command(sub, "runs", "nbdurable.runs", "list the runs in the log",
                   "List the runs in the log: status, steps completed and failed, "
                   "started, last activity.")
    cmd.set_defaults(handler=_runs)


def _log_parser(sub: Subparsers) -> None:
    cmd = _command(sub, "log", "nbdurable.log", "what happened in a run, step by step",
                   "Show each step of RUN: status, attempts, duration, executed or replayed, "
                   "its waits and their outcome; and the run's events.")
    cmd.add_argument("run", metavar="RUN", help="the run id")
    cmd.set_defaults(handler=_log)


def _reset_parser(sub: Subparsers) -> None:
    cmd = _command(sub, "reset", "nbdurable.reset", "make a run's steps run again",
                   "Invalidate the checkpoints of RUN's steps (all, or from STEP on) so that "
                   "they execute again the next time they are reached. Nothing is deleted.")
    cmd.add_argument("run", metavar="RUN", help="the run id")
    cmd.add_argument("--from", dest="from_step", metavar="STEP",
                     help="reset STEP and every step first run after it")
    cmd.add_argument("--include-once", action="store_true",
                     help="also forget the once() keys of those steps (their side effects "
                     "happen again)")
    cmd.set_defaults(handler=_reset)


def _fork_parser(sub: Subparsers) -> None:
    cmd = _command(sub, "fork", "nbdurable.fork", "a new run from another run's checkpoints",
                   "Start NEW_RUN from RUN's checkpoints: the steps before STEP replay in it "
                   "(their checkpoints are shared, not copied), STEP and what follows execute "
                   "anew; RUN is left as it is.")
    cmd.add_argument("run", metavar="RUN", help="the run to fork")
    cmd.add_argument("new_run", metavar="NEW_RUN", help="the fork's run id (a new one)")
    cmd.add_argument("--from", dest="from_step", metavar="STEP",
                     help="execute STEP and every step first run after it anew (default: "
                     "the fork replays every step)")
    cmd.set_defaults(handler=_fork)


def _event_parser(sub: Subparsers) -> None:
    event = sub.add_parser("event", help="push events to a run, list a run's events",
                           description="Events feed the waits of durable cells.")
    actions = event.add_subparsers(dest="action", metavar="ACTION", required=True)
    push = _command(actions, "push", "nbdurable.push_event", "put an event in a run's mailbox",
                    "Put an event in RUN's mailbox; a cell waiting for KEY carries on.")
    push.add_argument("run", metavar="RUN", help="the run id")
    push.add_argument("key", metavar="KEY", help="the event key a wait names")
    push.add_argument("payload", metavar="PAYLOAD_JSON", nargs="?",
                      help="JSON payload; '-' reads it from stdin (default: null)")
    push.add_argument("--id", help="event id: pushing the same id again adds nothing")
    push.set_defaults(handler=_event_push)
    listing = _command(actions, "list", "nbdurable.list_events",
                       "a run's events, pending and consumed",
                       "List RUN's events, oldest first, pending and consumed.")
    listing.add_argument("run", metavar="RUN", help="the run id")
    listing.set_defaults(handler=_event_list)


def _serve_parser(sub: Subparsers) -> None:
    cmd = sub.add_parser("serve", help="take events over HTTP (webhooks), with a token",
                         epilog=EPILOG, description="Serve nbdurable's HTTP API: POST "
                         "/nbdurable/api/runs/RUN/events/KEY pushes an event; GET .../runs, "
                         ".../runs/RUN, .../runs/RUN/events read the log. Requests need the "
                         "bearer token (NBDURABLE_TOKEN, else generated and printed once) or a "
                         "body signed with the webhook secret. (library: nbdurable.serve)")
    cmd.add_argument("--log", metavar="PATH", help="the default log (default: NBDURABLE_LOG, "
                     "else .nbdurable/log.duckdb in the working directory); ?log=PATH picks "
                     "another under the working directory")
    cmd.add_argument("--host", default="127.0.0.1",
                     help="the address to listen on (default: %(default)s, this machine only)")
    cmd.add_argument("--port", type=_port, default=8765, help="default: %(default)s; 0 picks "
                     "a free one")
    cmd.add_argument("--webhook-secret-file", metavar="FILE", help="check bodies signed with "
                     "this secret (X-Hub-Signature-256: sha256=HEX, GitHub's scheme)")
    cmd.add_argument("--max-body", metavar="BYTES", type=_count, default=1 << 20,
                     help="the largest event body accepted (default: %(default)s)")
    cmd.add_argument("--worker", action="store_true", help="also resume the log's suspended "
                     "runs as they can go on, as `nbdurable worker` does (push and resume in "
                     "one process)")
    cmd.add_argument("--max-parallel", metavar="N", type=_positive, default=1,
                     help="with --worker: resume at most N runs at a time (default: 1)")
    cmd.set_defaults(handler=_serve)


def _trust_parser(sub: Subparsers) -> None:
    cmd = sub.add_parser("trust", help="sign a reviewed log's values with your secret",
                         epilog=EPILOG, description="Sign every stored value of LOG (or of one "
                         "run) with your secret, after you reviewed it: a log written with "
                         "another secret, or copied from elsewhere, then replays. (library: "
                         "nbdurable.trust)")
    cmd.add_argument("log", metavar="LOG", help="the log file")
    cmd.add_argument("--run", metavar="RUN", help="only this run's values")
    cmd.add_argument("--json", action="store_true", help="print the result as JSON")
    cmd.set_defaults(handler=_trust)


def _sql_parser(sub: Subparsers) -> None:
    cmd = _command(sub, "sql", "nbdurable.sql", "run a read-only SQL query on the log",
                   "Run one SELECT on the log (table events; views attempts, runs) under "
                   "nbdurable's lease, so no one holds the file open meanwhile.")
    cmd.add_argument("query", metavar="QUERY", help="one SELECT statement, e.g. \"SELECT kind, "
                     "count(*) FROM events GROUP BY kind\"")
    cmd.set_defaults(handler=_sql)


def _gc_parser(sub: Subparsers) -> None:
    cmd = _command(sub, "gc", "nbdurable.gc", "remove blobs nothing refers to, dead processes' "
                   "temporary files, old quarantine files",
                   "Remove blob files no event refers to (older than an hour), temporary files "
                   "of processes that died while writing, and quarantined journal lines older "
                   "than 30 days. The log itself is never touched.")
    cmd.add_argument("--dry-run", action="store_true", help="list what would be removed")
    cmd.set_defaults(handler=_gc)


def _demo_parser(sub: Subparsers) -> None:
    cmd = _command(sub, "demo", "nbdurable.demo.demo", "run the quickstart, kill its kernel "
                   "midway, resume, report", "Run notebooks/01-quickstart.ipynb headless, "
                   "SIGKILL its kernel in the middle of a durable cell, run it again in a fresh "
                   "kernel and print what replayed and what ran.")
    cmd.add_argument("notebook", nargs="?", help="notebook to run (default: the quickstart)")
    cmd.add_argument("--dir", default="nbdurable-demo",
                     help="working directory of the demo kernel (default: %(default)s)")
    cmd.set_defaults(handler=_demo)


# -- handlers: parse, call, print ---------------------------------------------------------------

def _run(args: argparse.Namespace) -> int:
    from nbdurable import run

    parameters = {name: _parse_parameter(value) for name, value in args.parameter}
    result = run(args.notebook, args.output, run_id=args.run_id, parameters=parameters,
                 log=args.log, cwd=args.cwd, kernel=args.kernel,
                 max_restarts=args.max_restarts, progress=args.progress,
                 suspend_after=args.suspend_after)
    return _show_result(result, args.json)


def _resume(args: argparse.Namespace) -> int:
    from nbdurable import resume

    run = _run_from_stdin() if args.run == "-" else args.run
    if not run:
        return 0  # a warm process the worker did not need
    return _show_result(resume(run, log=args.log, progress=args.progress), args.json)


def _run_from_stdin() -> str:
    """The run id on stdin, read once what a resume loads is loaded: papermill (~1.6 s), DuckDB,
    the kernel specs, nbformat's validator (~0.1 s the first time)."""
    import nbformat
    import papermill  # noqa: F401
    from jupyter_client.kernelspec import KernelSpecManager

    from nbdurable import resume  # noqa: F401
    from nbdurable.store.logdb import preload
    preload()
    nbformat.validate(nbformat.v4.new_notebook())
    KernelSpecManager().find_kernel_specs()
    return sys.stdin.readline().strip()


def _worker(args: argparse.Namespace) -> int:
    from nbdurable import worker

    _stop_on_sigterm()
    worker(log=args.log, once=args.once, max_parallel=args.max_parallel, say=_say("worker"))
    return 0


def _show_result(result: RunResult, as_json: bool) -> int:
    if as_json:
        _print_json(result.to_dict())
    elif result.exit_code in (0, 4):  # completed; waiting (not an error)
        print(result.message())
    for note in result.notes:
        print(f"nbdurable: note: {note}", file=sys.stderr)
    if result.exit_code not in (0, 4):
        print(f"nbdurable: error: {result.message()}", file=sys.stderr)
    return result.exit_code


def _runs(args: argparse.Namespace) -> int:
    from nbdurable.engine.history import runs

    _print_frame(runs(log=_existing_log(args.log)), args.json, "no runs in the log")
    return 0


def _log(args: argparse.Namespace) -> int:
    from nbdurable.engine.history import log

    found = log(args.run, log=_existing_log(args.log))
    if args.json:
        _print_json(found.to_dict())
    else:
        print(found.text())
    return 0


def _reset(args: argparse.Namespace) -> int:
    from nbdurable.engine.resets import reset

    steps = reset(args.run, from_step=args.from_step, include_once=args.include_once,
                  log=_existing_log(args.log))
    if args.json:
        _print_json({"run": args.run, "reset": steps})
    else:
        print(f"reset {len(steps)} step(s) of run {args.run!r}: {', '.join(steps) or 'none'}; "
              "they execute again the next time they are reached")
    return 0


def _fork(args: argparse.Namespace) -> int:
    from nbdurable.engine.forks import fork

    kept = fork(args.run, args.new_run, args.from_step, log=_existing_log(args.log))
    if args.json:
        _print_json({"run": args.new_run, "forked_from": args.run, "from_step": args.from_step,
                     "reused": kept})
    else:
        print(f"run {args.new_run!r} forked from {args.run!r}: {len(kept)} step(s) replay "
              f"({', '.join(kept) or 'none'})"
              + (f", {args.from_step} and what follows execute anew" if args.from_step else "")
              + f"; execute the notebook as {args.new_run!r} to go on")
    return 0


def _event_push(args: argparse.Namespace) -> int:
    from nbdurable.engine.events import parse_payload, push_event

    text = sys.stdin.read() if args.payload == "-" else (args.payload or "")
    event_id = push_event(args.key, parse_payload(text), run=args.run,
                          log=_existing_log(args.log), id=args.id)
    if args.json:
        _print_json({"id": event_id, "run": args.run, "key": args.key})
    else:
        print(event_id)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from nbdurable import serve

    _stop_on_sigterm()
    with _worker_beside(args) as failed:
        try:
            serve(args.log, host=args.host, port=args.port,
                  webhook_secret_file=args.webhook_secret_file, max_body=args.max_body)
        except KeyboardInterrupt:
            pass
    if failed:
        raise failed[0]  # the worker could not go on: so does the server
    return 0


@contextlib.contextmanager
def _worker_beside(args: argparse.Namespace) -> Iterator[list[NbdurableError]]:
    """With ``--worker``: ``nbdurable.worker`` in a thread of this process until the block
    ends; a worker that fails interrupts the block and its error is in the list yielded."""
    import os
    import signal
    import threading

    from nbdurable import worker

    failed: list[NbdurableError] = []
    if not args.worker:
        yield failed
        return
    stop = threading.Event()

    def work() -> None:
        try:
            worker(log=args.log, max_parallel=args.max_parallel, stop=stop, say=_say("worker"))
        except NbdurableError as exc:
            failed.append(exc)
            os.kill(os.getpid(), signal.SIGINT)  # a signal wakes the server's event loop

    thread = threading.Thread(target=work, name="nbdurable-worker")
    thread.start()
    try:
        yield failed
    finally:
        stop.set()
        thread.join()


def _stop_on_sigterm() -> None:
    """SIGTERM (systemd, docker stop) stops like Ctrl-C: what is in flight ends cleanly."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _say(who: str) -> Callable[[str], None]:
    return lambda line: print(f"nbdurable {who}: {line}", flush=True)


def _event_list(args: argparse.Namespace) -> int:
    from nbdurable.engine.events import list_events

    _print_frame(list_events(args.run, log=_existing_log(args.log)), args.json,
                 f"no events in run {args.run!r}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from nbdurable.demo import demo

    report = demo(args.notebook, workdir=args.dir, log=args.log,
                  echo=(lambda *a, **k: None) if args.json else print)
    if args.json:
        _print_json(report.to_dict())
    return 0 if report.completed else 1


def _sql(args: argparse.Namespace) -> int:
    from nbdurable.engine.history import sql

    _print_frame(sql(args.query, log=_existing_log(args.log)), args.json, "(no rows)")
    return 0


def _gc(args: argparse.Namespace) -> int:
    from nbdurable.engine.cleanup import gc

    result = gc(log=_existing_log(args.log), dry_run=args.dry_run)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(result.message())
    return 0


def _trust(args: argparse.Namespace) -> int:
    from nbdurable.engine.trusts import trust

    result = trust(_existing_log(args.log), run=args.run)
    if args.json:
        _print_json(result.to_dict())
    else:
        print(result.message())
    return 0


def _existing_log(given: str | None) -> str:
    """The log a reading command uses: it must exist (a missing one is a typo, not a new log)."""
    from nbdurable.engine.context import existing_log

    return str(existing_log(given))


# -- output -------------------------------------------------------------------------------------

def _print_json(value: Any) -> None:
    print(json.dumps(_finite(value), indent=2, default=str, allow_nan=False))


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity (a parameter may be one): they become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _print_frame(frame: Any, as_json: bool, empty: str) -> None:  # a DataFrame
    if as_json:
        print(frame.to_json(orient="records", date_format="iso", indent=2))
    elif frame.empty:
        print(empty)
    else:
        print(frame.to_string(index=False))


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds >= 0")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return int(text)


def _version() -> str:
    from nbdurable import __version__

    return f"nbdurable {__version__}"


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    print(f"nbdurable: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    warnings.showwarning = _show_warning  # one line each, like errors
    try:
        code: int = args.handler(args)
        return code
    except NbdurableError as exc:
        print(f"nbdurable: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nbdurable: interrupted", file=sys.stderr)
        return 130


def _parse_parameter(value: str) -> Any:
    """A ``-p NAME VALUE`` value, typed as papermill's own CLI types it."""
    special = {"True": True, "False": False, "None": None}
    if value in special:
        return special[value]
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


if __name__ == "__main__":
    sys.exit(main())
