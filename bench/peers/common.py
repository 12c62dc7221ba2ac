"""What every side of the peer benchmark shares (imported by the peers' interpreter too: no
nbdurable here)."""

from __future__ import annotations

import time


def plain_loop(n: int) -> float:
    """Seconds for ``n`` plain calls of a function returning its argument: the baseline of a
    trivial step."""

    def trivial(i):
        return i

    t = time.perf_counter()
    for i in range(n):
        trivial(i)
    return time.perf_counter() - t


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]
