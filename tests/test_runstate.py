"""Run claims and statuses, without kernels."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from nbdurable import runstate
from nbdurable.errors import RunBusyError


def test_status_readers_never_make_a_claim_fail(tmp_path):
    """`runs()` looks at claims with a brief shared lock; a claim taken meanwhile waits it out
    instead of reporting the run busy."""
    log = tmp_path / "log.duckdb"
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            runstate.holder(log, "r")

    readers = [threading.Thread(target=poll) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for _ in range(300):
            with runstate.Claim(log, "r"):
                pass
    finally:
        stop.set()
        for reader in readers:
            reader.join()


def test_a_held_claim_is_refused_with_its_holder(tmp_path):
    log = tmp_path / "log.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom nbdurable import runstate\n"
         f"c = runstate.Claim(__import__('pathlib').Path({str(log)!r}), 'r', 'the holder')\n"
         "print('held', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert runstate.holder(log, "r")["pid"] == holder.pid
        with pytest.raises(RunBusyError, match=f"process {holder.pid} .*the holder"):
            runstate.Claim(log, "r")
    finally:
        holder.communicate("", timeout=30)
    assert runstate.holder(log, "r") is None  # released when its process ended
    with runstate.Claim(log, "r"):
        pass
