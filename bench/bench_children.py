"""Children against bare executors, measured in one run: ``python bench/bench_children.py``.

1. per-child overhead of ``nbdurable.map`` in a durable step (fingerprints, results recorded
   in the journal and synced as they arrive) on 1,000 trivial children, over a bare
   ``ProcessPoolExecutor`` (forkserver) submitting cloudpickled calls + ``as_completed``;
   also ``nbdurable.map`` outside a durable step (the pool alone, no log);
2. resume of a 1,000-child map (2 ms of work each) whose process was SIGKILLed after ~500
   children: the resumed map against the unfinished children alone on the bare pool (the
   difference is what skipping the finished ones costs), and a map whose 1,000 children are all
   recorded (nothing is submitted).

3. the same 1,000 children on Dask (2 worker processes), ``nbdurable.map`` in a durable step vs
   bare ``client.map`` + ``as_completed(with_results=True)``, on a ``LocalCluster`` (whose
   scheduler shares this process's GIL) and with the scheduler in its own process.

Rounds are interleaved; medians are reported. Targets (issue 10): (1) <= 0.5 ms per child over
the bare pool; (2) skipping the finished ones <= 0.2 s; (3) <= 1.2x bare Dask.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import cloudpickle

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import _shim  # noqa: E402

import nbdurable  # noqa: E402
from nbdurable import settings  # noqa: E402
from nbdurable.engine import analysis, cells, progress  # noqa: E402


def inc(x):
    return x + 1


def bare(pool: ProcessPoolExecutor, n: int, fn=inc) -> float:
    t = time.perf_counter()
    futures = [pool.submit(_shim.run, cloudpickle.dumps((fn, (i,)))) for i in range(n)]
    total = sum(cloudpickle.loads(f.result()) for f in as_completed(futures))
    assert total == sum(range(1, n + 1))
    return time.perf_counter() - t


def spec(name: str, source: str) -> cells.CellSpec:
    import ast

    return cells.CellSpec(name, source, analysis.analyse(ast.parse(source)))


def in_step(eng: cells.Engine, name: str, n: int, *, force: bool = True) -> float:
    """One execution of a durable step whose body maps ``inc`` over ``range(n)``."""
    source = f"res = nbdurable.map(inc, range({n}))"
    decision = eng.decide(spec(name, source))
    decision.force = force
    execution = eng.begin(decision)
    t = time.perf_counter()
    exec(source, eng.namespace)
    elapsed = time.perf_counter() - t
    eng.settle(execution)
    eng.finish(execution, ok=True, outputs=[])
    assert eng.namespace["res"][-1] == n
    return elapsed


def bench_overhead(work: Path, n: int, rounds: int) -> dict[str, float]:
    settings.configure(log=work / "log.duckdb", run="overhead")
    eng = cells.Engine({"__name__": "__main__", "inc": inc, "nbdurable": nbdurable})
    context = multiprocessing.get_context("forkserver")
    times: dict[str, list[float]] = {"bare": [], "outside": [], "step": []}
    with ProcessPoolExecutor(os.cpu_count() or 2, mp_context=context) as pool:
        bare(pool, 200), nbdurable.map(inc, range(200)), in_step(eng, "warm", 200)  # warm up
        for i in range(rounds):
            times["bare"].append(bare(pool, n))
            t = time.perf_counter()
            nbdurable.map(inc, range(n))
            times["outside"].append(time.perf_counter() - t)
            times["step"].append(in_step(eng, f"s{i}", n))
    eng.close()
    return {k: statistics.median(v) for k, v in times.items()}


def sleepy(lines, x):
    """A child of the resume figure: notes that it ran in ``lines``, works 2 ms."""
    with open(lines, "a") as f:
        f.write("x\n")
    time.sleep(0.002)
    return x + 1


KILLED = """
    import functools, sys
    sys.path.insert(0, {bench!r})
    import nbdurable
    from nbdurable import settings
    from bench_children import in_step, sleepy
    from nbdurable.engine import cells
    settings.configure(log={log!r}, run="resume")
    work = functools.partial(sleepy, {lines!r})
    eng = cells.Engine({{"__name__": "__main__", "inc": work, "nbdurable": nbdurable}})
    in_step(eng, "fan", {n})
"""


def bench_resume(work: Path, n: int) -> dict[str, float]:
    log, lines = work / "resume.duckdb", work / "lines"
    code = textwrap.dedent(KILLED.format(bench=str(HERE), log=str(log), lines=str(lines), n=n))
    from bench_children import sleepy as same  # as the killed run named it (not __main__'s)

    work = functools.partial(same, str(lines))
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 120
    while not lines.exists() or len(lines.read_bytes()) < n:  # ~n/2 lines of 2 bytes
        assert time.monotonic() < deadline and proc.poll() is None, "the killed run stalled"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    settings.configure(log=log, run="resume")
    eng = cells.Engine({"__name__": "__main__", "inc": work, "nbdurable": nbdurable})
    recorded = nbdurable.children("resume", log=log).shape[0]
    resumed = in_step(eng, "fan", n, force=False)
    skip_all = in_step(eng, "fan", n, force=False)  # all recorded now: nothing submitted
    eng.close()
    with ProcessPoolExecutor(os.cpu_count() or 2,
                             mp_context=multiprocessing.get_context("forkserver")) as pool:
        bare(pool, 100)
        remainder = bare(pool, n - recorded, work)
    return {"recorded": recorded, "resumed": resumed, "remainder": remainder,
            "skip_all": skip_all}


_PAUSE = 2.5  # s before each timed Dask map: the previous one's deferred log insert is done


def bench_dask(work: Path, n: int, rounds: int) -> dict[str, dict[str, float]]:
    """``nbdurable.map`` in a durable step vs bare ``client.map`` + ``as_completed(with_results=
    True)``, interleaved, on two cluster layouts with 2 single-threaded worker processes:
    ``local``, a ``LocalCluster`` (its scheduler runs on the client's event loop, in this
    process), and ``own``, a scheduler in its own process (``dask scheduler`` + ``dask worker``,
    the layout of every cluster beyond one machine)."""
    import logging

    from distributed import Client, LocalCluster

    settings.configure(log=work / "dask.duckdb", run="dask")
    figures = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        figures["local"] = _dask_rounds(client, n, rounds, "l")
    with _own_scheduler(work) as scheduler_file, Client(scheduler_file=scheduler_file) as client:
        client.wait_for_workers(2, timeout=60)
        figures["own"] = _dask_rounds(client, n, rounds, "o")
    settings.reset()
    return figures


def _dask_rounds(client: object, n: int, rounds: int, tag: str) -> dict[str, float]:
    from distributed import as_completed as dask_completed

    nbdurable.configure(executor=client)
    eng = cells.Engine({"__name__": "__main__", "inc": inc, "nbdurable": nbdurable})
    in_step(eng, f"warm{tag}", 200)
    times: dict[str, list[float]] = {"bare": [], "step": []}
    for i in range(rounds):
        time.sleep(_PAUSE)
        t = time.perf_counter()
        tasks = client.map(inc, range(n), pure=False)  # type: ignore[attr-defined]
        assert sum(r for _, r in dask_completed(tasks, with_results=True)) == n * (n + 1) // 2
        times["bare"].append(time.perf_counter() - t)
        time.sleep(_PAUSE)
        times["step"].append(in_step(eng, f"d{tag}{i}", n))
    eng.close()
    return {k: statistics.median(v) for k, v in times.items()}


@contextlib.contextmanager
def _own_scheduler(work: Path) -> Iterator[str]:
    """``dask scheduler`` and ``dask worker --nworkers 2 --nthreads 1`` as processes; both
    import this file's ``inc`` (the scheduler unpickles the task graph)."""
    scheduler_file = str(work / "scheduler.json")
    dask = str(Path(sys.executable).with_name("dask"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([dask, "scheduler", "--scheduler-file", scheduler_file,
                               "--no-dashboard", "--port", "0"], **quiet)]
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(scheduler_file):
            assert time.monotonic() < deadline and procs[0].poll() is None, "no scheduler"
            time.sleep(0.05)
        procs.append(subprocess.Popen([dask, "worker", "--scheduler-file", scheduler_file,
                                       "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                                      **quiet))
        yield scheduler_file
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


class _Quiet:
    """No progress display: the figures are the output."""

    def __init__(self, progress: object):
        pass

    def update(self) -> None:
        pass

    def close(self) -> None:
        pass


def main() -> None:
    progress.set_progress_ui(_Quiet)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="children per map")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask figure")
    args = parser.parse_args()
    n = args.n
    with tempfile.TemporaryDirectory(prefix="nbdurable-bench-") as tmp:
        o = bench_overhead(Path(tmp), n, args.rounds)
        r = bench_resume(Path(tmp), n)
        d = None if args.no_dask else bench_dask(Path(tmp), n, args.rounds)
    per = (o["step"] - o["bare"]) / n * 1000
    print(f"1. {n} trivial children, medians of {args.rounds} interleaved rounds")
    print(f"   bare ProcessPoolExecutor + cloudpickle   {o['bare']:.3f} s"
          f"  ({o['bare'] / n * 1000:.3f} ms per child)")
    print(f"   nbdurable.map outside a durable step     {o['outside']:.3f} s"
          f"  ({(o['outside'] - o['bare']) / n * 1000:+.3f} ms per child)")
    print(f"   nbdurable.map in a durable step          {o['step']:.3f} s"
          f"  ({per:+.3f} ms per child over bare; target <= 0.5 ms)")
    print(f"2. resume of a {n}-child map SIGKILLed with {r['recorded']} children recorded")
    print(f"   resumed map                              {r['resumed']:.3f} s")
    print(f"   the {n - r['recorded']} unfinished on the bare pool       {r['remainder']:.3f} s"
          f"  (resume - bare: {r['resumed'] - r['remainder']:+.3f} s)")
    print(f"   all {n} recorded, none submitted         {r['skip_all']:.3f} s"
          f"  (skipping; target <= 0.2 s)")
    layouts = {"local": "LocalCluster (scheduler in this process)",
               "own": "scheduler in its own process      "}
    for layout, f in (d or {}).items():
        print(f"3. {n} trivial children on Dask, 2 worker processes, {layouts[layout]}")
        print(f"   bare client.map + as_completed           {f['bare']:.3f} s")
        print(f"   nbdurable.map in a durable step          {f['step']:.3f} s"
              f"  ({f['step'] / f['bare']:.2f}x; target <= 1.2x)")

if __name__ == "__main__":
    main()
