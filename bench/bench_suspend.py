"""Suspended runs, measured: ``python bench/bench_suspend.py``.

1. 20 batch runs waiting for an event: with ``--suspend-after`` (every run suspended) against
   the same runs waiting live — what one waiting kernel holds (processes, RSS) times 20; plus
   what an idle ``nbdurable worker`` holds.
2. From a push (``nbdurable.push_event`` in this process, its own cost included) to the resumed
   run's waiting cell going on, with a running ``nbdurable worker`` (its warm resume process
   ready), against one kernel start (``KernelManager.start_kernel`` to ``wait_for_ready``) measured in
   the same run. Medians of 5.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import psutil

import nbdurable

N_RUNS, ROUNDS = 20, 5
CELLS = [
    "%load_ext nbdurable\nimport nbdurable, time",
    "%%durable before\nx = 1",
    "%%durable review\nanswer = nbdurable.wait_for_event('go')\n"
    "open('went-on', 'w').write(repr(time.time()))",
]


def notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nbformat.write(nb, path)
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nbdurable", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def held(root: Path) -> tuple[int, int]:
    """(processes, bytes of RSS) of kernels and nbdurable processes working under ``root``."""
    count = rss = 0
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if ("ipykernel" in cmd or "nbdurable" in cmd) and str(root) in str(proc.cwd()):
                count, rss = count + 1, rss + proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return count, rss


def suspended_runs(work: Path) -> tuple[int, int]:
    notebook(work / "wait.ipynb")

    def one(i: int) -> int:
        return cli("run", "wait.ipynb", f"out-{i}.ipynb", "--run-id", f"r{i}",
                   "--suspend-after", "0.5", cwd=work).returncode

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(one, range(N_RUNS)))
    assert codes == [4] * N_RUNS, codes
    return held(work)


def live_waiting_kernel(work: Path) -> tuple[int, int]:
    """What one run waiting live holds: its driver and its kernel."""
    notebook(work / "wait.ipynb")
    proc = subprocess.Popen([sys.executable, "-m", "nbdurable", "run", "wait.ipynb",
                             "out.ipynb", "--run-id", "live"], cwd=work)
    try:
        deadline = time.monotonic() + 120
        while not _waits_started(work, "live"):
            assert time.monotonic() < deadline, "the run never reached its wait"
            time.sleep(0.2)
        return held(work)
    finally:
        cli("event", "push", "live", "go", cwd=work)
        proc.wait(120)


def _waits_started(work: Path, run: str) -> int:
    out = cli("sql", f"SELECT count(*) AS n FROM events WHERE run = '{run}' AND "
              "kind = 'wait_started'", "--json", cwd=work)
    return int(json.loads(out.stdout)[0]["n"]) if out.returncode == 0 else 0


def _status(work: Path, run: str) -> str:
    rows = json.loads(cli("runs", "--json", cwd=work).stdout or "[]")
    return next((str(r["status"]) for r in rows if r["run"] == run), "")


def idle_worker(work: Path) -> tuple[int, int]:
    proc = subprocess.Popen([sys.executable, "-m", "nbdurable", "worker"], cwd=work,
                            stdout=subprocess.DEVNULL)
    try:
        time.sleep(6)  # started, looking, its warm resume process loaded: its steady state
        return held(work)
    finally:
        proc.terminate()
        proc.wait(30)


def wake_latency(work: Path) -> list[tuple[float, float]]:
    """Per round: (one kernel start, push -> cell goes on), interleaved."""
    notebook(work / "wait.ipynb")
    worker = subprocess.Popen([sys.executable, "-m", "nbdurable", "worker", "--max-parallel",
                               "1"], cwd=work, stdout=subprocess.DEVNULL)
    try:
        latencies = []
        for i in range(ROUNDS):
            assert cli("run", "wait.ipynb", f"out-{i}.ipynb", "--run-id", f"w{i}",
                       "--suspend-after", "0.5", cwd=work).returncode == 4
            marker = work / "went-on"
            marker.unlink(missing_ok=True)
            pushed = time.time()  # a push from Python in this process: the call's own cost in
            nbdurable.push_event("go", run=f"w{i}", log=work / ".nbdurable" / "log.duckdb")
            deadline = time.monotonic() + 120
            while not marker.exists() or not marker.read_text():
                assert time.monotonic() < deadline, "not resumed"
                time.sleep(0.01)
            latencies.append((kernel_start(), float(marker.read_text()) - pushed))
            while _status(work, f"w{i}") != "completed":  # the worker is free again
                time.sleep(0.1)
        return latencies
    finally:
        worker.terminate()
        worker.wait(60)


def kernel_start() -> float:
    """``KernelManager.start_kernel`` to ``wait_for_ready``, on Unix sockets as the batch runner
    starts its kernels."""
    from jupyter_client.manager import KernelManager

    t = time.perf_counter()
    km = KernelManager(kernel_name="python3", transport="ipc",
                       ip=tempfile.mkdtemp(prefix="nbd-") + "/k")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    took = time.perf_counter() - t
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    return took


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="nbdurable-bench-") as tmp:
        root = Path(tmp)
        for name in ("suspended", "live", "worker", "wake"):
            (root / name).mkdir()
        procs, rss = suspended_runs(root / "suspended")
        one_procs, one_rss = live_waiting_kernel(root / "live")
        w_procs, w_rss = idle_worker(root / "suspended")
        wake = wake_latency(root / "wake")
    mb = 2 ** 20
    print(f"1. {N_RUNS} runs waiting for an event")
    print(f"   suspended (--suspend-after 0.5)        {procs} processes, {rss / mb:.0f} MB")
    print(f"   waiting live: one run holds            {one_procs} processes, {one_rss / mb:.0f}"
          f" MB -> {N_RUNS} runs: {one_procs * N_RUNS} processes, {one_rss * N_RUNS / mb:.0f} MB")
    print(f"   an idle `nbdurable worker` + warm spare {w_procs} processes, {w_rss / mb:.0f} MB")
    start = statistics.median(k for k, _ in wake)
    median = statistics.median(w for _, w in wake)
    over = statistics.median(w - k for k, w in wake)
    print(f"2. push -> the resumed run's waiting cell goes on, a running worker, median of "
          f"{ROUNDS} (a kernel start timed in each round)")
    print(f"   one kernel start                       {start:.2f} s")
    print(f"   push -> cell goes on                   {median:.2f} s"
          f"  (kernel start + {over:.2f} s; target <= 0.5 s)")
    print(f"   all: {', '.join(f'{w:.2f} (+{w - k:.2f})' for k, w in wake)} s")


if __name__ == "__main__":
    main()
