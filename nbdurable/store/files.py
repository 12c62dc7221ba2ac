"""Files and folders nbdurable writes: owner-only, written completely, errors said plainly.

Everything beside a log holds the user's data (variables, outputs, cell sources, payloads), and
a writable blob or cache would let another user put code into the kernel. So every file is
created 0600 and every folder 0700 (a umask only ever removes bits, so no umask widens them).
A team that shares a log on purpose sets ``NBDURABLE_SHARE=group``: files are then created
0660 and folders 2770 (new files take the folder's group), and the team shares one signing
secret (``NBDURABLE_SECRET_FILE``). Existing files keep the mode they have.
``os.write`` may write less than it was given (a full disk): :func:`write_all` finishes the job
or raises.
"""

from __future__ import annotations

import errno
import os
from contextlib import suppress
from pathlib import Path

OWNER_FILE, OWNER_DIR = 0o600, 0o700
GROUP_FILE, GROUP_DIR = 0o660, 0o2770


def shared() -> bool:
    return os.environ.get("NBDURABLE_SHARE", "").strip().lower() == "group"


def file_mode() -> int:
    return GROUP_FILE if shared() else OWNER_FILE


def dir_mode() -> int:
    return GROUP_DIR if shared() else OWNER_DIR


def private_dir(path: Path) -> Path:
    """Create folder ``path`` and its missing parents with :func:`dir_mode`."""
    path = Path(path)
    if not path.is_dir():
        missing = [p for p in (path, *path.parents) if not p.exists()]
        path.mkdir(mode=dir_mode(), parents=True, exist_ok=True)
        if shared():  # the setgid bit is not set by mkdir's mode
            for folder in missing:
                with suppress(OSError):
                    os.chmod(folder, GROUP_DIR)
    return path


def open_private(path: Path | str, flags: int) -> int:
    """Open ``path``, creating it with :func:`file_mode`, close-on-exec."""
    return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, file_mode())


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` or raise ``OSError`` (``ENOSPC`` for a disk that took
    nothing more)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def write_private(path: Path, data: bytes) -> None:
    """Write a new owner-only file at ``path`` in one go, synced."""
    fd = open_private(path, os.O_WRONLY | os.O_TRUNC)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def sync(path: Path | str) -> None:
    """``fsync`` a file or folder by path (a folder: so that a rename in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def describe(exc: OSError, path: Path | str | None = None) -> str:
    """One line for an OS error on a file of the log, with what to do about it."""
    where = f" writing {path}" if path else ""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full{where}; free some space"
    if code == errno.EROFS:
        return f"the file system is read-only{where}; put the log on a writable disk (--log)"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}; the log's folder must be writable by you"
    return f"{exc.strerror or exc}{where}"
