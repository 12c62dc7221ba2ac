"""Kernel → Interrupt (SIGINT) held back for the few statements that must not be cut in two.

A ``KeyboardInterrupt`` raised between DuckDB attaching the log and nbdurable noting it (or
between detaching and noting it) would leave the file attached in the process with nobody
knowing: every later use of the log in that kernel failed. Inside :func:`deferred`, a SIGINT
is noted instead, and delivered, through the handler that was installed, when the block ends.
Only the main thread receives signals, so elsewhere this does nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def deferred() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    hit: list[int] = []
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: hit.append(signum))
    except ValueError:  # an interpreter that is not the main one
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if hit:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt
