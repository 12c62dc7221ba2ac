"""Crash-injection soak: SIGKILL a kernel at random moments of Run All, many times, and check
every promise. ``python bench/soak.py -n 100`` (about 4 s a trial).

The notebook has ``@step`` calls, a ``once`` side effect, an 8 MB array and a wait. Each trial
is one ``nbdurable run`` of the same run id; a random moment after its kernel started, the
kernel is SIGKILLed (the driver reports the crash); the next trial resumes. Every execution of
a cell body, of a ``@step`` call and of the ``once`` function appends a timestamped line to
``effects.log``. After the trials a last run completes, and the soak checks:

1. no completed cell ran again: no ``begin CELL`` after a completed attempt of that cell,
   unless ``nbdurable reset`` came in between (after each run that completes, the soak resets
   the run so that its cells execute again and more kills land in executing code);
2. ``once`` ran at most once (a kill in the middle leaves it in doubt: the soak then says what
   happened, as a person would, with ``once_resolve`` or ``once_reset``);
3. a ``@step`` call whose result was recorded never ran again (reset aside, likewise);
4. the final values are right (the array's sum, the calls' results, the event's payload), and
   running the completed run again replays every cell;
5. nothing damaged: no quarantine file, no signature failure, the log readable.

Exit status 0 when every invariant held; the figures say how many kills landed where.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import nbformat

CELLS = [
    "%load_ext nbdurable\nimport nbdurable, os, time, pathlib\n"
    "pathlib.Path('kernel.pid').write_text(str(os.getpid()))\n"
    "def effect(what):\n"
    "    with open('effects.log', 'a') as f:\n"
    "        f.write(f'{time.time():.6f} {what}\\n')\n"
    "        f.flush()\n"
    "        os.fsync(f.fileno())",
    "%%durable fetch\neffect('begin fetch')\n"
    "@nbdurable.step\ndef call(i):\n    effect(f'begin call#{i}')\n    time.sleep(0.05)\n"
    "    effect(f'end call#{i}')\n    return i * i\n"
    "results = [call(i) for i in range(8)]\neffect('end fetch')",
    "%%durable array\neffect('begin array')\nimport numpy as np\n"
    "arr = np.arange(1_000_000, dtype=np.int64)\ntime.sleep(0.1)\neffect('end array')",
    "%%durable mail\neffect('begin mail')\n"
    "sent = nbdurable.once('mail', lambda: (effect('once mail'), time.sleep(0.05), 'sent')[2])\n"
    "effect('end mail')",
    "%%durable gate\neffect('begin gate')\npayload = nbdurable.wait_for_event('go')\n"
    "effect('end gate')",
    "%%durable total\neffect('begin total')\n"
    "total = int(arr.sum()) + sum(results) + payload\nprint('total', total)\neffect('end total')",
]
EXPECTED = sum(range(1_000_000)) + sum(i * i for i in range(8)) + 7
STEPS = ["fetch", "array", "mail", "gate", "total"]


def notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nbformat.write(nb, path)


def cli(work: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbdurable.cli", *args], cwd=work,
                          capture_output=True, text=True, timeout=timeout, env=_env())


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("NBDURABLE_RUN", "JPY_"))}


def trial(work: Path, kill_after: float | None) -> str:
    """One invocation; kill its kernel ``kill_after`` seconds after it started. How it ended."""
    pid_file = work / "kernel.pid"
    pid_file.unlink(missing_ok=True)
    driver = subprocess.Popen([sys.executable, "-m", "nbdurable.cli", "run", "soak.ipynb",
                               "out.ipynb", "--run-id", "soak"], cwd=work, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        deadline = time.monotonic() + 120
        while not pid_file.exists() and driver.poll() is None:
            assert time.monotonic() < deadline, "the kernel never started"
            time.sleep(0.005)
        time.sleep(kill_after)
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, FileNotFoundError):
            pass
    out, err = driver.communicate(timeout=300)
    if "OnceInDoubtError" in out + err:
        resolve_once(work)
        return "once in doubt"
    return {0: "completed", 3: "killed"}.get(driver.returncode, f"exit {driver.returncode}: "
                                             f"{err.strip()[-300:]}")


def resolve_once(work: Path) -> None:
    """What a person does: look whether the mail went out, and say so."""
    happened = any(line.split()[1:] == ["once", "mail"] for line in effects(work))
    code = ("import nbdurable\n" + ("nbdurable.once_resolve('mail', 'sent', run='soak')"
                                    if happened else "nbdurable.once_reset('mail', run='soak')"))
    subprocess.run([sys.executable, "-c", code], cwd=work, env=_env(), check=True,
                   timeout=120)


def effects(work: Path) -> list[list[str]]:
    path = work / "effects.log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def check(work: Path) -> list[str]:
    """The invariants; a list of what broke."""
    broken = []
    final = cli(work, "run", "soak.ipynb", "out.ipynb", "--run-id", "soak")  # moves journals in
    if final.returncode != 0:
        broken.append(f"the last run did not complete: {final.stderr.strip()[-300:]}")
    else:
        outputs = json.dumps(nbformat.read(work / "out.ipynb", as_version=4).cells[-1].outputs)
        if f"total {EXPECTED}" not in outputs:
            broken.append(f"wrong total: {outputs[:300]}")
        begun = len(effects(work))
        again = cli(work, "run", "soak.ipynb", "out.ipynb", "--run-id", "soak")
        if again.returncode != 0 or any(line[1] == "begin" for line in effects(work)[begun:]):
            broken.append("a completed run, run again, executed cells instead of replaying")
    rows = json.loads(cli(work, "sql", "SELECT step, kind, epoch(ts) AS t, body FROM events "
                          "WHERE run = 'soak' ORDER BY rowid", "--json").stdout)
    completions, resets = [], {}
    for row in rows:
        body = json.loads(row["body"])
        if row["kind"] == "attempt_finished" and body.get("status") == "completed":
            completions.append((row["step"], row["step"], row["t"]))
        elif row["kind"] == "call_completed":
            completions.append((body["key"], row["step"], row["t"]))
        elif row["kind"] == "step_reset":
            resets.setdefault(row["step"], []).append(row["t"])
    lines = effects(work)
    for name, step, at in completions:
        until = min([r for r in resets.get(step, []) if r > at], default=float("inf"))
        again = [t for t, what, *rest in lines if what == "begin" and rest == [name]
                 and at < float(t) < until]
        if again:
            broken.append(f"{name} completed at {at:.3f} but began again {len(again)} time(s) "
                          "before any reset")
    mails = sum(1 for line in lines if line[1:] == ["once", "mail"])
    if mails != 1:
        broken.append(f"once('mail') ran {mails} times")
    quarantine = list((work / ".nbdurable").rglob("quarantine/*"))
    if quarantine:
        broken.append(f"damaged journal lines: {quarantine}")
    if "signature" in final.stderr + final.stdout:
        broken.append("a signature failed")
    return broken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="trials (kills)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=2.5,
                        help="kills land up to this many seconds after the kernel started")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="nbdurable-soak-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        notebook(work / "soak.ipynb")
        ends = Counter()
        for i in range(args.n):
            if i == args.n // 3:  # the wait is released part-way: kills before and after it
                cli(work, "event", "push", "soak", "go", "7", "--id", "go")
            ended = trial(work, rng.uniform(0, args.max_delay))
            ends[ended] += 1
            if ended == "completed":  # execute it all again (`once` stays done): more to kill
                cli(work, "reset", "soak")
                cli(work, "event", "push", "soak", "go", "7", "--id", f"go-{i}")  # waits anew
        if args.n < 3:
            cli(work, "event", "push", "soak", "go", "7", "--id", "go")
        broken = check(work)
        starts = Counter(what[1] for what in effects(work) if what[1] in ("begin",))
        print(f"{args.n} trials (seed {args.seed}): {dict(ends)}")
        print(f"cell bodies begun {starts['begin']} times in all; "
              f"once('mail') ran {sum(1 for e in effects(work) if e[1:] == ['once', 'mail'])}x")
        print("every invariant held" if not broken else "BROKEN:\n  " + "\n  ".join(broken))
    return 0 if not broken else 1


if __name__ == "__main__":
    sys.exit(main())
