"""The physical floor of a checkpoint on this machine: ``pickle.dump`` + fsync of a numpy array,
``pickle.load`` of it (page cache dropped first when we may), xxh3-128 of its bytes."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_cells  # noqa: E402  (its pickle baseline)


def _drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
    except OSError:
        pass  # not root: the load then reads from the page cache


def _once(path: Path, value: np.ndarray) -> tuple[float, float, float]:
    dump, load = bench_cells._pickle_baseline(value, path, before_load=_drop_caches)
    t = time.perf_counter()
    xxhash.xxh3_128_hexdigest(memoryview(value).cast("B"))
    return dump, load, time.perf_counter() - t


def measure(work: Path) -> dict[str, float]:
    work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, float] = {}
    for mb in (8, 200):
        value = np.ones(mb * 2**20 // 8)
        runs = [_once(work / f"floor-{mb}.pkl", value) for _ in range(3)]
        for i, name in enumerate(("store", "restore", "xxh3")):
            figures[f"array_{mb}mb_{name}_s"] = statistics.median(r[i] for r in runs)
    return figures
