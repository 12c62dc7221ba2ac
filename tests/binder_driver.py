"""Run inside the venv built from binder/ (as mybinder builds it): execute every notebook of
notebooks/ headless with nbclient in that venv's own kernel, pushing the events the waits of
02-approval expect; print one line per notebook; exit 1 on the first error output.

Usage: python binder_driver.py NOTEBOOKS_DIR WORKDIR
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import nbdurable
from nbdurable.errors import UnknownRunError

EVENTS = {"02-approval": [("approve", None)]}  # what a person would click, per notebook


def push_when_possible(run: str, log: Path, key: str, payload: object, stop: threading.Event):
    while not stop.is_set():
        try:
            nbdurable.push_event(key, payload, run=run, log=log)
            return
        except UnknownRunError:  # the notebook has not reached its first durable cell yet
            time.sleep(0.1)


def main() -> int:
    notebooks, work = Path(sys.argv[1]), Path(sys.argv[2])
    for path in sorted(notebooks.glob("*.ipynb")):
        run, log = path.stem, work / f"{path.stem}.duckdb"
        folder = work / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("NBDURABLE_")},
               "NBDURABLE_LOG": str(log), "NBDURABLE_RUN": run}
        stop = threading.Event()
        pushers = [threading.Thread(target=push_when_possible, args=(run, log, key, payload,
                                                                     stop), daemon=True)
                   for key, payload in EVENTS.get(run, [])]
        for pusher in pushers:
            pusher.start()
        nb = nbformat.read(path, as_version=4)
        started = time.monotonic()
        try:
            NotebookClient(nb, timeout=300, kernel_name="python3",
                           resources={"metadata": {"path": str(folder)}}).execute(env=env)
        except Exception as exc:
            print(f"{path.name}: FAILED: {type(exc).__name__}: {str(exc)[-2000:]}", flush=True)
            return 1
        finally:
            stop.set()
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        if errors:
            print(f"{path.name}: error output: {errors[0].ename}: {errors[0].evalue}")
            return 1
        print(f"{path.name}: ok in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
