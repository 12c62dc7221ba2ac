"""Who executes a run: the claim of a batch driver, and of every kernel it starts.

A driver (``nbdurable run``, the papermill engine) holds the run's **claim** while it executes
the run: an exclusive ``flock`` on ``<log>.runs/<hash of the run>.lock``, whose content (JSON)
names the invocation and the process. A second invocation finds it held and is refused with
:class:`~nbdurable.errors.RunBusyError` naming that process.

The claim must cover the driver's kernel too. jupyter_client starts each kernel in a session of
its own, so a driver killed with SIGKILL leaves its kernel executing the run; ipykernel notices
only on its next one-second poll of its parent, and never when a wrapper (a shell script,
``conda run``) is the kernel's parent. So before the first cell, the engine *guards* each
kernel (:func:`guard_kernel`):

- the kernel holds a **kernel claim**: an exclusive flock on
  ``<hash>.<invocation>.kernel``, naming the kernel;
- it checks that its invocation still holds the run's claim, and stops if not;
- a thread blocks on a shared flock of the run's claim, which the OS grants the moment the
  driver's claim is released: then the kernel SIGKILLs its process group (itself and what it
  started, never the driver's group). No polling: this costs nothing while the run goes on.

A run is executing while its claim or a kernel claim is held (:func:`holder`). A new invocation
takes the claim, then looks for kernel claims still held: it lets such a kernel stop by itself
for up to ``ORPHAN_GRACE`` seconds, else SIGKILLs it, and says which in a note. A kernel that
takes its kernel claim after that look finds another invocation in the run's claim and stops,
so once an invocation holds the claim no process of an earlier one executes the run.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import xxhash

from nbdurable import processes
from nbdurable.errors import RunBusyError
from nbdurable.processes import ProcessId
from nbdurable.store import files
from nbdurable.store.sidecars import Sidecars

#: How long taking a claim waits out the shared locks that status readers hold for microseconds.
CLAIM_PATIENCE = 0.5
#: How long a new invocation lets an orphaned kernel stop by itself before it SIGKILLs it.
ORPHAN_GRACE = 2.0
#: How long the locks of a SIGKILLed kernel may take to be released.
KILL_WAIT = 10.0
_POLL = 0.01


@dataclass(frozen=True)
class Holder:
    """Who executes a run now: its ``driver``, or a ``kernel`` left by a driver that died."""

    run: str
    role: str
    process: ProcessId | None = None
    since: str | None = None

    def describe(self) -> str:
        who = self.process.describe() if self.process else "another process"
        return who + ("" if self.role == "driver" else ", the kernel of a driver that died")


def claim_path(log_path: Path, run: str) -> Path:
    return Sidecars.of(log_path).runs / f"{xxhash.xxh3_64_hexdigest(run.encode())}.lock"


def _kernel_path(claim: Path, invocation: str) -> Path:
    return claim.with_name(f"{claim.stem}.{invocation}.kernel")


def _kernel_paths(claim: Path) -> list[Path]:
    return sorted(claim.parent.glob(f"{claim.stem}.*.kernel"))


# -- the driver's claim ---------------------------------------------------------------------------

class Claim:
    """This process executes ``run`` (see the module doc); a context manager. ``notes`` say
    what had to be done first (an orphaned kernel waited for or ended)."""

    def __init__(self, log_path: Path, run: str):
        self.run = run
        self.invocation = uuid.uuid4().hex
        self.path = claim_path(log_path, run)
        self.notes: list[str] = []
        files.private_dir(self.path.parent)
        self._fd = _open(self.path)
        try:
            self._take()
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise

    def _take(self) -> None:
        if not _lock_within(self._fd, fcntl.LOCK_EX, CLAIM_PATIENCE):
            before = _driver(self.path, self.run)
            if before.process is None or before.process.alive():
                raise _busy(before)
            # its driver is gone: what holds the claim is a kernel that driver left running
            self.notes += _end_kernels(self.path, self.run)
            if not _lock_within(self._fd, fcntl.LOCK_EX, CLAIM_PATIENCE):
                raise _busy(Holder(self.run, "driver"))
        _write_json(self._fd, self._content())
        self.notes += _end_kernels(self.path, self.run)

    def _content(self) -> dict[str, Any]:
        return {"run": self.run, "invocation": self.invocation, "pgid": os.getpgid(0),
                "since": _now(), **processes.me().to_dict()}

    def kernel_guard_code(self) -> str:
        """Python for a kernel of this invocation to run before any cell (silently)."""
        return ("try:\n"
                "    __import__('nbdurable.store.claims', fromlist=['guard_kernel'])"
                f".guard_kernel({str(self.path)!r}, {self.invocation!r})\n"
                "except ImportError:\n"
                "    pass\n")

    def release(self) -> None:
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # drops the flock
            self._fd = -1

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _busy(who: Holder, more: str = "") -> RunBusyError:
    return RunBusyError(_busy_message(who) + more, run=who.run, holder=who.process)


def _busy_message(who: Holder) -> str:
    if who.process is None:
        return (f"run {who.run!r} is being executed by another process; wait for it to end, or "
                "give another --run-id")
    return (f"run {who.run!r} is being executed by {who.describe()}, since {who.since or '?'} "
            "UTC; wait for it to end or stop that process, or give another --run-id")


def _end_kernels(claim: Path, run: str) -> list[str]:
    """Stop every kernel an earlier invocation left executing ``run``; one note for each."""
    notes = []
    for path in _kernel_paths(claim):
        note = _end_kernel(path, run)
        if note:
            notes.append(note)
    return notes


def _end_kernel(path: Path, run: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if _try_lock(fd, fcntl.LOCK_EX):  # no kernel behind it any more
            _forget(path, fd)
            return None
        kernel = _kernel_holder(fd, run)
        began = time.monotonic()
        if _lock_within(fd, fcntl.LOCK_EX, ORPHAN_GRACE):
            _forget(path, fd)
            return (f"run {run!r}: waited {time.monotonic() - began:.1f} s for "
                    f"{kernel.describe()} to stop executing it")
        _kill(kernel, fd)
        _forget(path, fd)
        return (f"run {run!r}: ended {kernel.describe()}, which was still executing it "
                f"{ORPHAN_GRACE:g} s after its driver died")
    finally:
        os.close(fd)


def _kill(kernel: Holder, fd: int) -> None:
    """SIGKILL an orphaned kernel and wait for its claim, or raise RunBusyError."""
    process = kernel.process
    if process is None or not process.local or not process.alive():
        raise _busy(kernel, " (nbdurable cannot end it: stop it by hand)")
    pgid = _read_json(fd).get("pgid")
    processes.kill(process.pid, pgid if isinstance(pgid, int) else None,
                   spare_group=os.getpgid(0))
    if not _lock_within(fd, fcntl.LOCK_EX, KILL_WAIT):
        raise _busy(kernel, " (it survived SIGKILL; stop it by hand)")


def _forget(path: Path, fd: int) -> None:
    """Remove a kernel claim we hold the lock of, if the path still names that file."""
    with suppress(OSError):
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            path.unlink()


# -- who holds a run ------------------------------------------------------------------------------

def holder(log_path: Path, run: str) -> Holder | None:
    """Who executes ``run`` now: the holder of its claim, else a kernel an earlier driver left
    running; None when no process does."""
    path = claim_path(log_path, run)
    if _held(path):
        return _driver(path, run)
    for kernel in _kernel_paths(path):
        if _held(kernel):
            with _opened(kernel) as fd:
                return _kernel_holder(fd, run) if fd is not None else Holder(run, "kernel")
    return None


def _driver(path: Path, run: str) -> Holder:
    data = _driver_content(path)
    return Holder(run, "driver", ProcessId.from_dict(data), data.get("since"))


def _kernel_holder(fd: int, run: str) -> Holder:
    data = _read_json(fd)
    return Holder(run, "kernel", ProcessId.from_dict(data), data.get("since"))


# -- the kernel's side ----------------------------------------------------------------------------

_guarded: dict[str, threading.Thread] = {}  # invocation -> its watcher, in this process


def driven() -> bool:
    """Whether this process is a kernel of a batch driver (``guard_kernel`` ran here)."""
    return bool(_guarded)


def guard_kernel(claim: str, invocation: str) -> None:
    """Make this process (a kernel of the driver holding ``claim`` for ``invocation``) part of
    the claim, and stop it the moment the driver's claim is released. Called by the engine
    before the first cell; calling it again for the same invocation does nothing."""
    if invocation in _guarded:
        return
    path = Path(claim)
    fd = _lock_fresh(_kernel_path(path, invocation))
    _write_json(fd, {"invocation": invocation, "pgid": os.getpgid(0), "since": _now(),
                     **processes.me().to_dict()})  # fd stays open: the kernel claim
    driver = _driver_content(path)
    if driver.get("invocation") != invocation or not _held(path):
        _stop(driver.get("pgid"))  # another invocation took the run before this kernel began
    watcher = threading.Thread(target=_watch, args=(path, driver.get("pgid")), daemon=True,
                               name="nbdurable-claim")
    _guarded[invocation] = watcher
    watcher.start()


def _watch(claim: Path, driver_group: object) -> None:
    fd = os.open(claim, os.O_RDONLY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_SH)  # granted when no driver holds the claim any more
    _stop(driver_group)


def _stop(driver_group: object) -> None:
    with suppress(OSError):
        os.write(2, b"nbdurable: the driver of this kernel's run is gone; stopping the kernel\n")
    processes.kill(os.getpid(), os.getpgid(0),
                   spare_group=driver_group if isinstance(driver_group, int) else None)


def _driver_content(path: Path) -> dict[str, Any]:
    with _opened(path) as fd:
        return _read_json(fd) if fd is not None else {}


def _lock_fresh(path: Path) -> int:
    """Exclusively lock the file at ``path``, creating it; retried if an invocation that ended
    this kernel's predecessor removed the file while we waited for its lock."""
    while True:
        fd = _open(path)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)


# -- files and locks ------------------------------------------------------------------------------

def _open(path: Path) -> int:
    return files.open_private(path, os.O_RDWR)


class _opened:
    """``with _opened(path) as fd``: a read-only descriptor, or None if there is no file."""

    def __init__(self, path: Path):
        try:
            self.fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = None

    def __enter__(self) -> int | None:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _held(path: Path) -> bool:
    """Whether a process holds an exclusive lock on ``path`` (our probe is released at once)."""
    with _opened(path) as fd:
        return fd is not None and not _try_lock(fd, fcntl.LOCK_SH)


def _try_lock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _lock_within(fd: int, mode: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not _try_lock(fd, mode):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def _read_json(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(fd: int, data: dict[str, Any]) -> None:
    raw = json.dumps(data).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, raw, 0)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")[:19]
