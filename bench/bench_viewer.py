"""The run viewer's refresh on a big run: ``python bench/bench_viewer.py``.

A run of 500 durable steps and 10,000 events (100 of them consumed by waits), in a real log.
One refresh is what the viewer's thread does when the log changed: ``runview.snapshot`` (one
lease, the queries) and the HTML of its tables. Baseline, in the same process: ``nbdurable.log``
of the same run (the text view the CLI prints). Rounds interleaved; medians. Target (issue 11):
<= 200 ms per refresh.
"""

from __future__ import annotations

import argparse
import ast
import statistics
import tempfile
import time
from pathlib import Path

import nbdurable
from nbdurable import settings
from nbdurable.engine import analysis, cells, runview
from nbdurable.ipython import viewhtml


def build(log: Path, steps: int, events: int) -> None:
    settings.configure(log=log, run="big")
    eng = cells.Engine({"__name__": "__main__", "nbdurable": nbdurable})
    for i in range(steps):
        source = f"v{i} = list(range({i}))"
        if i == steps // 2:  # one step consumes 100 events, one wait each
            source += "\nfor k in range(100):\n    nbdurable.wait_for_event(f'e{k}')"
        decision = eng.decide(cells.CellSpec(f"s{i}", source, analysis.analyse(ast.parse(source))))
        if i == steps // 2:
            for k in range(100):
                nbdurable.push_event(f"e{k}", {"k": k})
        execution = eng.begin(decision)
        exec(source, eng.namespace)
        eng.settle(execution)
        eng.finish(execution, ok=True, outputs=[])
    for k in range(events - 100):
        nbdurable.push_event(f"p{k % 50}", {"k": k, "text": "x" * 40})
    eng.close()


def refresh(log: Path) -> float:
    t = time.perf_counter()
    view = runview.snapshot("big", log=log)
    html = viewhtml.render(view)
    elapsed = time.perf_counter() - t
    assert len(view.steps) > 0 and "nbdurable-steps" in html
    return elapsed


def baseline(log: Path) -> float:
    t = time.perf_counter()
    text = nbdurable.log("big", log=log).text()
    elapsed = time.perf_counter() - t
    assert "big" in text
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nbdurable-bench-") as tmp:
        log = Path(tmp) / "log.duckdb"
        t = time.perf_counter()
        build(log, args.steps, args.events)
        built = time.perf_counter() - t
        refresh(log), baseline(log)  # warm up
        times: dict[str, list[float]] = {"refresh": [], "log": []}
        for _ in range(args.rounds):
            times["refresh"].append(refresh(log))
            times["log"].append(baseline(log))
        view = runview.snapshot("big", log=log)
    r, b = (statistics.median(times[k]) for k in ("refresh", "log"))
    print(f"a run of {len(view.steps)} steps, {args.events} events "
          f"({len(view.consumed) + view.more_events['consumed']} consumed), built in "
          f"{built:.1f} s; medians of {args.rounds} interleaved rounds")
    print(f"   nbdurable.log(run).text() (baseline)   {b * 1000:7.1f} ms")
    print(f"   viewer refresh: snapshot + HTML        {r * 1000:7.1f} ms  ({r / b:.2f}x the "
          "baseline; target <= 200 ms)")


if __name__ == "__main__":
    main()
