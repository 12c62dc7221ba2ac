"""Costs of the log's lease protocol and of blob writes.

    /tmp/v/bin/python bench/bench_log.py [--dir DIR]

Prints medians and p99 (the maximum for small samples) of:

* a transaction with one small insert while the lease is held (lingering);
* the same right after an idle detach (so it pays the ATTACH);
* the DETACH that ends a lease (checkpoint);
* a fresh LogDB's first use, and the READ_ONLY validation inside it;
* another process's transaction (wait + ATTACH + insert + commit) right after a kernel-like
  holder's transaction: holder already detached (linger 0), lingering 50 ms (the default), and
  lingering 60 s (only the waiter signal makes it let go);
* BlobStore.put of 8 MB and 200 MB numpy buffers vs ``pickle.dump`` + fsync of the same array.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nbdurable.store.blobs import BlobStore  # noqa: E402
from nbdurable.store.logdb import LogDB  # noqa: E402

INSERT = "INSERT INTO replays VALUES ('bench', ?, ?, now(), 0)"


def summary(name: str, samples: list[float], unit: float = 1e3, suffix: str = "ms") -> None:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(
        f"{name:<58} median {statistics.median(ordered) * unit:8.2f} {suffix}   "
        f"p99 {p99 * unit:8.2f} {suffix}   (n={len(ordered)})"
    )


def timed(fn, store: list[float]):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            store.append(time.perf_counter() - start)

    return wrapper


def bench_transactions(work: Path) -> None:
    path = work / "tx.duckdb"
    db = LogDB(path, linger=60)
    held, after_detach, detach = [], [], []
    for i in range(300):
        start = time.perf_counter()
        with db.transaction() as conn:
            conn.execute(INSERT, [str(i), i])
        held.append(time.perf_counter() - start)
    db._lease.release = timed(db._lease.release, detach)
    for i in range(150):
        db.release()
        start = time.perf_counter()
        with db.transaction() as conn:
            conn.execute(INSERT, [str(i), i])
        after_detach.append(time.perf_counter() - start)
    db.close()
    summary("transaction, one insert, lease held", held)
    summary("transaction, one insert, after an idle detach (ATTACH)", after_detach)
    summary("DETACH + unlock (end of a lease, checkpoints)", detach)

    first_use, validation = [], []
    for _ in range(60):
        db = LogDB(path, linger=0)
        db._lease.prepare = timed(db._lease.prepare, validation)
        start = time.perf_counter()
        with db.transaction():
            pass
        first_use.append(time.perf_counter() - start)
        db.close()
    summary("first use of a LogDB (connect, validate, attach, detach)", first_use)
    summary("  of which READ_ONLY validation (sniff, ATTACH, meta, DETACH)", validation)


HOLDER = """
    import os, sys
    sys.path.insert(0, sys.argv[3])
    from nbdurable.store.logdb import LogDB
    db = LogDB(sys.argv[1], linger=float(sys.argv[2]))
    for line in sys.stdin:
        with db.transaction() as conn:
            conn.execute("INSERT INTO replays VALUES ('kernel', '0', 0, now(), ?)", [os.getpid()])
        print("done", flush=True)
    db.close()
"""


def bench_wait_for_holder(work: Path, linger: float, label: str, rounds: int = 40) -> None:
    path = work / "shared.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(path), str(linger), str(REPO)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    db = LogDB(path)
    waits = []
    try:
        for i in range(rounds):
            holder.stdin.write("tx\n")
            holder.stdin.flush()
            if holder.stdout.readline().strip() != "done":
                raise RuntimeError("the holder process failed")
            start = time.perf_counter()  # the holder just committed (and lingers, unless linger=0)
            with db.transaction() as conn:
                conn.execute(INSERT, [str(i), i])
            waits.append(time.perf_counter() - start)  # wait + ATTACH + insert + commit
            db.release()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        db.close()
    summary(label, waits)


def bench_blobs(work: Path) -> None:
    for size, rounds in ((8 << 20, 15), (200 << 20, 5)):
        array = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
        store = BlobStore(work / "bench.blobs")
        puts, dumps = [], []
        for i in range(rounds):
            target = work / "dump.pkl"
            start = time.perf_counter()
            with open(target, "wb") as f:
                pickle.dump(array, f, protocol=5)
                f.flush()
                os.fsync(f.fileno())
            dumps.append(time.perf_counter() - start)
            target.unlink()

            digest = f"{size:016x}{i:016x}"
            start = time.perf_counter()
            store.put(digest, [pickle.PickleBuffer(array)])
            puts.append(time.perf_counter() - start)
            store.path(digest).unlink()
        mb = size >> 20
        summary(f"BlobStore.put {mb} MB", puts)
        summary(f"pickle.dump + fsync {mb} MB", dumps)
        ratio = statistics.median(puts) / statistics.median(dumps)
        print(f"{'  ratio put / pickle.dump (medians)':<58} {ratio:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nbdurable-bench-", dir=args.dir))
    started = time.perf_counter()
    try:
        bench_transactions(work)
        bench_wait_for_holder(work, 0.0, "other process's transaction, holder idle (detached)")
        bench_wait_for_holder(work, 0.05, "other process's transaction, holder lingers 50 ms")
        bench_wait_for_holder(work, 60.0, "other process's transaction, holder lingers 60 s")
        bench_blobs(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
