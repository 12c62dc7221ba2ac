"""A log held by a program outside nbdurable: a plain ``duckdb`` connection in another process,
as a person querying the file with the duckdb CLI would hold it."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

HOLDER = """
import sys, time, duckdb
deadline = time.monotonic() + 60
while True:  # nbdurable may hold the file for a few ms (its lease): try until we have it
    try:
        con = duckdb.connect(sys.argv[1])
        break
    except duckdb.IOException:
        assert time.monotonic() < deadline
        time.sleep(0.01)
print("held", flush=True)
sys.stdin.read()
con.close()
"""


@contextmanager
def held(log: Path, timeout: float = 60):
    """Hold ``log`` in another process for the block; yields that process."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(log)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.communicate("", timeout=timeout)
