"""Batch runs: what `nbdurable run` costs over plain papermill, and what a resume saves.
``python bench/bench_batch.py [--cells 20] [--work 0.2] [--repeat 3]``

The notebook: ``%load_ext nbdurable`` then CELLS durable cells, each doing WORK seconds of
"work" (a sleep standing for an API call). Measured in this process, wall clock, medians:

1. plain ``papermill`` (nbclient engine, no run id: durable cells always execute) — baseline;
2. ``nbdurable.run`` of a new run (everything executes, plus the run's records and claim);
3. ``nbdurable.run`` of the same run again after it completed (every cell replays);
4. ``nbdurable.run`` resuming a run whose kernel died in the last cell.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def notebook(path: Path, cells: int, work: float, crash_last: bool) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    sources = ["%load_ext nbdurable\nimport time"]
    for i in range(cells):
        sources.append(f"%%durable cell{i}\ntime.sleep({work})\nx{i} = {i}\nprint('cell {i}')")
    if crash_last:
        sources[-1] += ("\nimport os, signal, pathlib\nif not pathlib.Path('died').exists():\n"
                        "    pathlib.Path('died').touch(); os.kill(os.getpid(), signal.SIGKILL)")
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--work", type=float, default=0.2, help="seconds of work per cell")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for name in [k for k in os.environ if k.startswith("NBDURABLE_")]:
        del os.environ[name]
    import papermill

    import nbdurable

    plain, first, again, resume = [], [], [], []
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="nbdurable-bench-") as tmp:
            work = Path(tmp)
            nb = notebook(work / "nb.ipynb", args.cells, args.work, crash_last=False)
            log = work / "log.duckdb"
            plain.append(timed(lambda: papermill.execute_notebook(
                str(nb), str(work / "plain.ipynb"), cwd=str(work), progress_bar=False,
                kernel_name="python3")))
            first.append(timed(lambda: nbdurable.run(nb, work / "a.ipynb", run_id=f"a{r}",
                                                     log=log, cwd=work)))
            again.append(timed(lambda: nbdurable.run(nb, work / "a.ipynb", run_id=f"a{r}",
                                                     log=log, cwd=work)))
            crashy = notebook(work / "crashy.ipynb", args.cells, args.work, crash_last=True)
            died = nbdurable.run(crashy, work / "c.ipynb", run_id=f"c{r}", log=log, cwd=work)
            assert died.status == "crashed", died
            resumed = []
            resume.append(timed(lambda: resumed.append(nbdurable.run(
                crashy, work / "c.ipynb", run_id=f"c{r}", log=log, cwd=work))))
            assert resumed[0].status == "completed" and len(resumed[0].replayed) == args.cells - 1

    base = statistics.median(plain)
    print(f"notebook: {args.cells} durable cells x {args.work:g} s of work; medians of "
          f"{args.repeat} (2-core VM)")
    print(f"1. plain papermill (baseline)           {base:6.2f} s")
    for label, values in (("2. nbdurable run, new run", first),
                          ("3. nbdurable run, completed run again", again),
                          ("4. nbdurable run, resume after a crash", resume)):
        m = statistics.median(values)
        print(f"{label:<40}{m:6.2f} s   {m / base:5.2f}x")


if __name__ == "__main__":
    main()
