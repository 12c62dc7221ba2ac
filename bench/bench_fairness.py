"""Fairness: a waiting kernel against busy pushers. ``python bench/bench_fairness.py``

A real kernel runs a durable cell that waits for ``pushers * pushes`` events in a row. Meanwhile
``--pushers`` processes each push ``--pushes`` events with ``nbdurable.push_event``, at
``--rate`` pushes per second each (jittered; 0: as fast as they can). Each payload carries its
pusher, its index and the moment its push began. Reported:

- wake latency: push began (pusher's clock) -> the waiting cell has that payload (kernel's
  clock, same machine); a growing latency is a backlog;
- push latency: how long one ``push_event`` call took;
- what the consumer keeps up with: events consumed per second while pushers push;
- none lost, none twice: every (pusher, index) consumed exactly once.

Run twice, in the same process: pushes with an ``id`` (checked under the log's lease, one
ATTACH/INSERT/COMMIT/DETACH each: the baseline) and pushes without (spooled beside the log,
no lease). ``--mode`` runs one.

Targets (issue 8) with 8 pushers x 250 pushes at 10/s each: wake p50 <= 100 ms, p99 <= 1 s,
push p99 <= 250 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from kernels import Kernel, kernel_env, wait_for_file  # noqa: E402

PUSHER = textwrap.dedent("""
    import json, random, sys, time
    import nbdurable
    who, n, rate, go = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    with_ids = sys.argv[5] == "lease"  # a push with an id is checked under the lease
    random.seed(who)
    while not __import__("os").path.exists(go):
        time.sleep(0.005)
    took = []
    for i in range(n):
        began = time.time()
        nbdurable.push_event("tick", {"who": who, "i": i, "t": began},
                             id=f"{who}-{i}" if with_ids else None)
        took.append(time.time() - began)
        if rate:
            time.sleep(max(0.0, random.uniform(0.5, 1.5) / rate - took[-1]))
    print(json.dumps(took))
""")


MODES = {"lease": "baseline: every push under the lease (pushes with an id)",
         "spool": "pushes without an id: spooled beside the log, no lease"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run(work: Path, pushers: int, pushes: int, rate: float, mode: str) -> dict:
    total = pushers * pushes
    waiting, go = work / "waiting", work / "go"
    cell = textwrap.dedent(f"""
        %%durable listen
        import nbdurable, pathlib, time
        got = []
        pathlib.Path({str(waiting)!r}).touch()
        for _ in range({total}):
            payload = nbdurable.wait_for_event("tick")
            got.append([payload["who"], payload["i"], payload["t"], time.time()])
    """).strip()
    env = {**os.environ, **kernel_env(work)}
    with Kernel(work) as k:
        k.execute("%load_ext nbdurable")
        k.execute("%%durable setup\nx = 1")
        msg_id = k.kc.execute(cell)
        wait_for_file(waiting)
        procs = [subprocess.Popen([sys.executable, "-c", PUSHER, str(w), str(pushes), str(rate),
                                   str(go), mode], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for w in range(pushers)]
        time.sleep(1.0)  # the pushers have imported nbdurable
        go.touch()
        began = time.time()
        outs = [p.communicate(timeout=3600) for p in procs]
        pushed_by = time.time()
        reply = k.reply_to(msg_id, timeout=3600)
        assert reply["content"]["status"] == "ok", reply["content"]
        got = json.loads(k.execute("import json\nprint(json.dumps(got))").stream())
    for proc, (_out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
    took = [t for out, _ in outs for t in json.loads(out)]
    seen = Counter((who, i) for who, i, _, _ in got)
    consumed_while_pushing = sum(1 for *_, at in got if at <= pushed_by)
    return {"wake": [at - t for _, _, t, at in got], "push": took,
            "lost": total - len(seen), "twice": sum(1 for c in seen.values() if c > 1),
            "rate_in": total / (pushed_by - began),
            "rate_out": consumed_while_pushing / (pushed_by - began),
            "drained_after": max(at for *_, at in got) - pushed_by}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushers", type=int, default=8)
    parser.add_argument("--pushes", type=int, default=250)
    parser.add_argument("--rate", type=float, default=10.0, help="pushes/s per pusher (0: max)")
    parser.add_argument("--mode", choices=["both", *MODES], default="both")
    args = parser.parse_args()
    print(f"{args.pushers} pushers x {args.pushes} pushes at {args.rate:g}/s each into one "
          f"waiting kernel")
    results = {}
    for mode in MODES if args.mode == "both" else [args.mode]:
        with tempfile.TemporaryDirectory(prefix="nbdurable-bench-",
                                         ignore_cleanup_errors=True) as tmp:
            results[mode] = r = run(Path(tmp), args.pushers, args.pushes, args.rate, mode)
        report(mode, r)
    if len(results) == 2:
        lease, spooled = results["lease"], results["spool"]
        print(f"spool vs lease: wake p50 {ratio(spooled['wake'], lease['wake'], 50)}, p99 "
              f"{ratio(spooled['wake'], lease['wake'], 99)}; push p99 "
              f"{ratio(spooled['push'], lease['push'], 99)}")


def ratio(new: list[float], base: list[float], q: float) -> str:
    return f"{pct(new, q) / pct(base, q):.3f}x"


def report(mode: str, r: dict) -> None:
    wake, push = r["wake"], r["push"]
    print(f"{MODES[mode]}:")
    backlog = (f"the backlog drained {r['drained_after']:.1f} s after the last push"
               if r["drained_after"] > 0 else "no backlog")
    print(f"   pushed {r['rate_in']:.1f} events/s; consumed {r['rate_out']:.1f} events/s while "
          f"they pushed; {backlog}")
    print(f"   wake latency p50 {pct(wake, 50) * 1000:.0f} ms   p99 {pct(wake, 99) * 1000:.0f} ms"
          f"   max {max(wake) * 1000:.0f} ms   (targets p50 <= 100 ms, p99 <= 1000 ms)")
    print(f"   push latency p50 {pct(push, 50) * 1000:.0f} ms   p99 {pct(push, 99) * 1000:.0f} ms"
          f"   max {max(push) * 1000:.0f} ms   (target p99 <= 250 ms)")
    print(f"   lost {r['lost']}, consumed twice {r['twice']}")


if __name__ == "__main__":
    main()
