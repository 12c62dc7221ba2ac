"""nbdurable's side of the peer benchmark: the same workloads as ``dbos_side.py``, in a real
kernel (``%%durable`` cells with ``@nbdurable.step`` calls, killed and restarted), and the
trivial step also in a plain script through the engine (no IPython).

Run by ``bench/peers/run.py`` with the project's interpreter; returns a dict of figures.
"""

from __future__ import annotations

import ast
import statistics
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent / "tests"), str(HERE.parent), str(HERE)]

import bench_waits  # noqa: E402
from common import plain_loop  # noqa: E402
from kernels import Kernel  # noqa: E402

N_STEPS = 200
N_EVENTS = 50

CELL = textwrap.dedent("""
    %%durable {name}
    import os, time, pathlib, numpy as np, nbdurable
    @nbdurable.step
    def trivial(i):
        return i
    @nbdurable.step
    def big(mb):
        return np.ones(mb * 2**20 // 8)
    trivial(-1)  # the first step after a restart opens the log (one-time: see the README)
    t = time.perf_counter()
    {body}
    pathlib.Path({timing!r}).write_text(str(time.perf_counter() - t))
    if pathlib.Path({crash!r}).exists():
        os._exit(0)  # killed after the steps were recorded, before the cell ended
""").strip()


def _crash_then_replay(work: Path, name: str, body: str) -> tuple[float, float]:
    """(recording, replaying) seconds of a durable cell's steps: one kernel records them and
    dies; a new kernel executes the same cell again, its steps answered from the log."""
    crash, timing = work / "crash", work / f"{name}.time"
    cell = CELL.format(name=name, body=body, timing=str(timing), crash=str(crash))
    crash.touch()
    with Kernel(work) as k:
        k.execute("%load_ext nbdurable")
        k.execute_until_death(cell)
    recorded = float(timing.read_text())
    crash.unlink()
    with Kernel(work) as k:
        k.execute("%load_ext nbdurable")
        reply = k.execute(cell)
        assert reply.status == "ok", reply
    return recorded, float(timing.read_text())


def _medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)



def _script_steps(work: Path, n: int) -> float:
    """A durable step run through the engine in a plain script: its per-step time (s)."""
    import nbdurable
    from nbdurable import settings
    from nbdurable.engine import analysis, cells

    settings.configure(log=work / "script.duckdb", run="script")
    source = textwrap.dedent(f"""
        import time
        t = time.perf_counter()
        for i in range({n}):
            trivial(i)
        elapsed = time.perf_counter() - t
    """)
    eng = cells.Engine({"__name__": "__main__", "nbdurable": nbdurable,
                        "trivial": nbdurable.step(lambda i: i)})
    times = []
    for r in range(4):
        execution = eng.begin(eng.decide(cells.CellSpec(f"s{r}", source,
                                                        analysis.analyse(ast.parse(source)))))
        exec(source, eng.namespace)
        eng.settle(execution)
        eng.finish(execution, ok=True, outputs=[])
        times.append(eng.namespace["elapsed"])
    eng.close()
    settings.reset()
    return statistics.median(times[1:])  # the first one warms up


def measure(work: Path) -> dict[str, object]:
    import nbdurable

    work.mkdir(parents=True, exist_ok=True)
    loop = f"for i in range({N_STEPS}):\n        trivial(i)"
    runs = [_crash_then_replay(work, f"steps-{i}", loop) for i in range(3)]
    plain = statistics.median(plain_loop(N_STEPS) for _ in range(3))
    arrays = {mb: _medians([_crash_then_replay(work, f"arrays-{mb}-{i}", f"value = big({mb})")
                            for i in range(3)]) for mb in (8, 200)}
    (work / "wake").mkdir()
    latencies = bench_waits.bench_latency(work / "wake", N_EVENTS)
    script = _script_steps(work, N_STEPS)
    return {
        "version": nbdurable.__version__,
        "where": "a real kernel (%%durable cells, @nbdurable.step); the script row: the engine",
        "step_ms": (statistics.median(r[0] for r in runs) - plain) / N_STEPS * 1000,
        "step_script_ms": (script - plain) / N_STEPS * 1000,
        "replay_step_ms": statistics.median(r[1] for r in runs) / N_STEPS * 1000,
        "wake_p50_ms": bench_waits.pct(latencies, 50) * 1000,
        "wake_p99_ms": bench_waits.pct(latencies, 99) * 1000,
        "array_8mb_store_s": arrays[8][0], "array_8mb_restore_s": arrays[8][1],
        "array_200mb_store_s": arrays[200][0], "array_200mb_restore_s": arrays[200][1],
    }
