"""Events over HTTP: wake latency and throughput of ``nbdurable serve``.
``python bench/bench_http.py``

1. A real kernel runs a durable cell that waits for N events in a row; another process pushes
   them one at a time, alternating between a POST to ``nbdurable serve`` and the baseline, a
   ``nbdurable.push_event`` call (interleaved, same process, same log). Latency: from the
   moment the push starts (pusher's clock) to the moment the waiting cell has the payload
   (kernel's clock). Targets for the POST: p50 <= 50 ms, p99 <= 250 ms.
2. Throughput: ``nbdurable serve`` pinned to one core, 8 clients (keep-alive connections,
   on the other core) POST events into one run of one log; baseline: one thread of this
   process calling ``push_event`` into the same log.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE)]

import bench_waits  # noqa: E402
from kernels import kernel_env  # noqa: E402

TOKEN = "bench-token"

PUSHER = textwrap.dedent("""
    import json, random, sys, time, urllib.request
    import nbdurable
    n, ready, url, token = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    starts = []
    for i in range(n):
        while open(ready).read().strip() != str(i):  # the kernel waits for event i
            time.sleep(0.002)
        time.sleep(random.uniform(0.1, 0.2))  # the wait is set up, idle in its loop
        starts.append(time.time())
        if i % 2:
            request = urllib.request.Request(f"{url}runs/test-run/events/tick",
                                             data=json.dumps(i).encode(), method="POST",
                                             headers={"Authorization": f"Bearer {token}"})
            urllib.request.urlopen(request).read()
        else:
            nbdurable.push_event("tick", i)
    print(json.dumps(starts))
""")


def start_server(work: Path, cpu: int | None = None) -> tuple[subprocess.Popen, str]:
    """``nbdurable serve`` on the log of the tests' kernels (work/log.duckdb)."""
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    proc = subprocess.Popen([sys.executable, "-m", "nbdurable.cli", "serve", "--port", "0"],
                            cwd=work, preexec_fn=pin, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **kernel_env(work), "NBDURABLE_TOKEN": TOKEN})
    return proc, proc.stdout.readline().split()[2]


def bench_latency(work: Path, n: int) -> tuple[list[float], list[float]]:
    server, url = start_server(work)
    try:
        latencies = bench_waits.bench_latency(work, n, PUSHER, (url, TOKEN))
    finally:
        server.terminate()
        server.wait()
    return latencies[1::2], latencies[0::2]  # POST, push_event


def bench_throughput(work: Path, total: int, clients: int = 8) -> tuple[float, float]:
    import nbdurable

    log = work / "log.duckdb"
    nbdurable.push_event("warm", run="test-run", log=log)
    started = time.perf_counter()
    for i in range(total):
        nbdurable.push_event("direct", i, run="test-run", log=log)
    baseline = total / (time.perf_counter() - started)
    server, url = start_server(work, cpu=0)
    host, port = url.split("/")[2].split(":")
    os.sched_setaffinity(0, {1 % os.cpu_count()})
    errors: list[str] = []

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        for i in range(total // clients):
            conn.request("POST", "/nbdurable/api/runs/test-run/events/load",
                         body=json.dumps({"c": c, "i": i}),
                         headers={"Authorization": f"Bearer {TOKEN}"})
            reply = conn.getresponse()
            reply.read()
            if reply.status != 201:
                errors.append(str(reply.status))
        conn.close()

    try:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rate = clients * (total // clients) / (time.perf_counter() - started)
    finally:
        server.terminate()
        server.wait()
    assert not errors, errors[:5]
    return rate, baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="events for the latency figure")
    parser.add_argument("--total", type=int, default=2000, help="events for the throughput")
    args = parser.parse_args()
    random.seed(0)
    with tempfile.TemporaryDirectory(prefix="nbdurable-bench-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        post, direct = bench_latency(work, args.n)
        rate, baseline = bench_throughput(work, args.total)
    pct = bench_waits.pct
    ms = lambda v, q: pct(v, q) * 1000  # noqa: E731
    print(f"1. wake latency, push -> waiting cell resumes ({len(post)} + {len(direct)} events, "
          "interleaved)")
    print(f"   POST to nbdurable serve: p50 {ms(post, 50):.1f} ms   p90 {ms(post, 90):.1f} ms   "
          f"p99 {ms(post, 99):.1f} ms   max {max(post) * 1000:.1f} ms   "
          "(targets p50 <= 50 ms, p99 <= 250 ms)")
    print(f"   push_event (baseline):   p50 {ms(direct, 50):.1f} ms   p90 {ms(direct, 90):.1f} "
          f"ms   p99 {ms(direct, 99):.1f} ms   max {max(direct) * 1000:.1f} ms")
    print(f"   POST / baseline: p50 {pct(post, 50) / pct(direct, 50):.2f}x   "
          f"p99 {pct(post, 99) / pct(direct, 99):.2f}x")
    print(f"2. throughput into one log: nbdurable serve on one core, 8 clients: {rate:.0f} "
          f"POST/s; push_event in one thread: {baseline:.0f}/s ({rate / baseline:.2f}x)")


if __name__ == "__main__":
    main()
