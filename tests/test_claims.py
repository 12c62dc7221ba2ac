"""The claim protocol between a driver and its kernels, with real processes and real locks:
a guarded process stops the moment its driver's claim is gone, also when it started late or
holds the GIL; a new invocation never goes on while a process of an earlier one lives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nbdurable.errors import RunBusyError
from nbdurable.processes import ProcessId, start_time
from nbdurable.store import claims

TIMEOUT = 30

DRIVER = """
import sys, time
from pathlib import Path
from nbdurable.store.claims import Claim
claim = Claim(Path(sys.argv[1]), "r")
print(claim.path, claim.invocation, flush=True)
time.sleep(600)
"""

KERNEL = """
import ctypes, os, subprocess, sys, time
from nbdurable.store.claims import guard_kernel
guard_kernel(sys.argv[1], sys.argv[2])
child = subprocess.Popen(["sleep", "600"])
print(os.getpid(), child.pid, flush=True)
if sys.argv[3] == "gil":  # C code holding the GIL: no other thread of this process runs
    ctypes.PyDLL(None).system(b"echo in-c; exec sleep 600")
time.sleep(600)
"""


def python(code: str, *args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                            stdout=subprocess.PIPE, text=True, **kwargs)


def start_driver(log: Path) -> tuple[subprocess.Popen, str, str]:
    driver = python(DRIVER, log)
    path, invocation = driver.stdout.readline().split()
    return driver, path, invocation


def start_kernel(path: str, invocation: str, mode: str = "sleep"):
    """A guarded process in a session of its own, as jupyter_client starts kernels; it starts
    a child of its own. Returns the process and its child's pid."""
    kernel = python(KERNEL, path, invocation, mode, start_new_session=True)
    line = kernel.stdout.readline().split()
    if mode == "gil":  # printed while the GIL is held, until the process ends
        assert kernel.stdout.readline() == "in-c\n"
    return kernel, int(line[1]) if line else None


def wait_until(condition, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie is gone as far as running goes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def kill(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=TIMEOUT)


def test_a_kernel_stops_with_its_driver_and_its_children_too(tmp_path):
    driver, path, invocation = start_driver(tmp_path / "log.duckdb")
    kernel, child = start_kernel(path, invocation)
    try:
        assert claims.holder(tmp_path / "log.duckdb", "r").role == "driver"
        kill(driver)
        assert kernel.wait(timeout=TIMEOUT) == -signal.SIGKILL
        wait_until(lambda: gone(child), "the kernel's child to be killed with it")
        assert claims.holder(tmp_path / "log.duckdb", "r") is None
    finally:
        for p in (driver, kernel):
            p.kill()


def test_the_run_reads_held_until_the_orphan_is_gone(tmp_path):
    driver, path, invocation = start_driver(tmp_path / "log.duckdb")
    kernel, _ = start_kernel(path, invocation, "gil")  # its watcher thread cannot run
    try:
        kill(driver)
        for _ in range(20):
            who = claims.holder(tmp_path / "log.duckdb", "r")
            assert who is not None and who.role == "kernel" and who.process.pid == kernel.pid
        assert "a driver that died" in who.describe()
    finally:
        kernel.kill()
    kernel.wait(timeout=TIMEOUT)
    wait_until(lambda: claims.holder(tmp_path / "log.duckdb", "r") is None, "the run to be free")


def test_a_new_invocation_ends_an_orphan_that_cannot_stop_itself(tmp_path):
    log = tmp_path / "log.duckdb"
    driver, path, invocation = start_driver(log)
    kernel, child = start_kernel(path, invocation, "gil")
    try:
        kill(driver)
        with claims.Claim(log, "r") as claim:
            assert kernel.poll() == -signal.SIGKILL  # ended before the claim was taken
            assert gone(child)
            assert len(claim.notes) == 1 and f"ended process {kernel.pid}" in claim.notes[0]
            assert claims.holder(log, "r").process.pid == os.getpid()
    finally:
        for p in (driver, kernel):
            p.kill()


def test_a_new_invocation_waits_for_an_orphan_that_stops_by_itself(tmp_path, monkeypatch):
    # the grace is the policy (2 s); a loaded machine can take longer to schedule the orphan,
    # and ending it then is right too (the test above): here the waiting path is under test
    monkeypatch.setattr(claims, "ORPHAN_GRACE", TIMEOUT)
    log = tmp_path / "log.duckdb"
    driver, path, invocation = start_driver(log)
    kernel, _ = start_kernel(path, invocation)
    try:
        driver.send_signal(signal.SIGKILL)  # and take the claim at once, racing the kernel
        with claims.Claim(log, "r") as claim:
            assert kernel.poll() is not None
            assert all("waited" in note for note in claim.notes), claim.notes
    finally:
        for p in (driver, kernel):
            p.kill()
        driver.wait()


def test_a_kernel_that_starts_after_another_invocation_took_the_run_stops_at_once(tmp_path):
    log = tmp_path / "log.duckdb"
    driver, path, invocation = start_driver(log)
    kill(driver)
    with claims.Claim(log, "r"):
        late, _ = start_kernel(path, invocation)
        assert late.wait(timeout=TIMEOUT) == -signal.SIGKILL
        assert late.stdout.read() == ""  # it never got past the guard


def test_a_live_driver_is_never_displaced(tmp_path):
    log = tmp_path / "log.duckdb"
    driver, path, invocation = start_driver(log)
    kernel, _ = start_kernel(path, invocation)
    try:
        with pytest.raises(RunBusyError, match=f"process {driver.pid}"):
            claims.Claim(log, "r")
        assert kernel.poll() is None and driver.poll() is None
    finally:
        for p in (driver, kernel):
            p.kill()


def test_claim_files_are_private_and_name_the_program_not_its_arguments(tmp_path):
    old = os.umask(0o002)
    try:
        with claims.Claim(tmp_path / "log.duckdb", "r") as claim:
            assert claim.path.stat().st_mode & 0o777 == 0o600
            assert claim.path.parent.stat().st_mode & 0o777 == 0o700
            text = claim.path.read_text()
    finally:
        os.umask(old)
    for arg in sys.argv[1:]:
        assert arg not in text


def test_a_reused_pid_is_not_the_old_process():
    me = ProcessId.current()
    assert me.alive() and me.started == start_time(os.getpid())
    assert not ProcessId(me.pid, me.host, me.started + 1).alive()


def test_status_readers_never_make_a_claim_fail(tmp_path):
    """`runs()` looks at claims with a brief shared lock; a claim taken meanwhile waits it out
    instead of reporting the run busy."""
    log = tmp_path / "log.duckdb"
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            claims.holder(log, "r")

    readers = [threading.Thread(target=poll) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for _ in range(300):
            with claims.Claim(log, "r"):
                pass
    finally:
        stop.set()
        for reader in readers:
            reader.join()


def test_a_held_claim_is_refused_with_its_holder(tmp_path):
    log = tmp_path / "log.duckdb"
    driver, _, _ = start_driver(log)
    try:
        assert claims.holder(log, "r").process.pid == driver.pid
        with pytest.raises(RunBusyError, match=f"process {driver.pid} on .*python -c") as busy:
            claims.Claim(log, "r")
        # the same, as fields for a program: the run, and the process (pid + its start time)
        assert busy.value.run == "r" and busy.value.holder.pid == driver.pid
        assert busy.value.holder.started == start_time(driver.pid)
    finally:
        kill(driver)
    assert claims.holder(log, "r") is None  # released when its process ended
    with claims.Claim(log, "r"):
        pass
