"""What tamper-evident checkpoints cost: HMAC-SHA256 of every stored value, checked before load.

1. HMAC-SHA256 throughput here, against xxh3-128 (the content digest) on the same buffer;
2. a 200 MB array checkpoint: ``pickle.dump`` + fsync (baseline) vs nbdurable's signed store
   (the HMAC computed on another thread while the blob is written) vs the same store unsigned
   and signed after the write (what the overlap saves);
3. restoring it: ``pickle.load`` vs nbdurable's verified load (HMAC checked before unpickling).

Runs are interleaved, the page cache is dropped before each (as root) and medians reported:
``python bench/bench_integrity.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import xxhash

from nbdurable.engine import serializer, values as objects
from nbdurable.store import signing
from nbdurable.store.blobs import BlobStore


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass  # not root: the figures then include a warm cache


def timed(fn) -> float:
    drop_caches()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput(mb: int = 256) -> tuple[float, float]:
    data = np.random.default_rng(0).bytes(mb << 20)
    start = time.perf_counter()
    signing.sign([data])
    mac = time.perf_counter() - start
    start = time.perf_counter()
    xxhash.xxh3_128_hexdigest(data)
    xxh = time.perf_counter() - start
    return mb / 1024 / mac, mb / 1024 / xxh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    signing.key()
    hmac_gbs, xxh_gbs = throughput()
    print(f"1. HMAC-SHA256 {hmac_gbs:.2f} GB/s; xxh3-128 {xxh_gbs:.2f} GB/s (same 256 MiB)")

    array = np.random.default_rng(1).random(25_000_000)  # 200 MB
    packed = serializer.pack(array)
    root = Path(tempfile.mkdtemp(prefix="nbd-bench-"))
    times: dict[str, list[float]] = {k: [] for k in ("dump", "signed", "unsigned", "after",
                                                     "load", "verified")}
    for i in range(args.rounds):
        target = root / f"pickle-{i}"

        def dump():
            with open(target, "wb") as f:
                pickle.dump(array, f, protocol=5)
                f.flush()
                os.fsync(f.fileno())

        stores = {name: BlobStore(root / f"{name}-{i}") for name in ("signed", "unsigned",
                                                                      "after")}
        times["dump"].append(timed(dump))
        ref = None

        def signed():
            nonlocal ref
            ref = objects.store_packed(stores["signed"], packed)

        times["signed"].append(timed(signed))
        times["unsigned"].append(timed(lambda: stores["unsigned"].put(packed.digest,
                                                                       packed.chunks)))
        times["after"].append(timed(lambda: (stores["after"].put(packed.digest, packed.chunks),
                                             signing.sign(packed.chunks))))

        def load():
            with open(target, "rb") as f:
                pickle.load(f)

        times["load"].append(timed(load))
        times["verified"].append(timed(lambda: objects.load_value(stores["signed"], ref)))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"2. 200 MB checkpoint, medians of {args.rounds}:")
    print(f"   pickle.dump + fsync (baseline)         {med['dump']:.3f} s")
    print(f"   nbdurable, signed while written        {med['signed']:.3f} s = "
          f"{med['signed'] / med['dump']:.2f}x   (target <= 1.25x)")
    print(f"   nbdurable, unsigned (before this)      {med['unsigned']:.3f} s = "
          f"{med['unsigned'] / med['dump']:.2f}x")
    print(f"   nbdurable, signed after the write      {med['after']:.3f} s = "
          f"{med['after'] / med['dump']:.2f}x")
    print(f"3. 200 MB restore: pickle.load {med['load']:.3f} s; verified load "
          f"{med['verified']:.3f} s = {med['verified'] / med['load']:.2f}x")


if __name__ == "__main__":
    main()
