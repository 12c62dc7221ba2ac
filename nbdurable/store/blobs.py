"""Content-addressed files beside the log.

Values too large for a BLOB column live in ``<log>.blobs/<digest[:2]>/<digest>``, named by the
hex digest of their bytes, so identical content is stored once. A blob is written durably *before*
the DuckDB commit that refers to it: the bytes go to a temporary file in the same directory, are
fsynced, renamed to the final name (atomic), and the directory is fsynced. A crash therefore
leaves either no blob or a whole one, plus at worst a ``.tmp-*`` file that no digest can name
(digests are lowercase hex), so it is never mistaken for a blob.

Writes are unbuffered ``os.write`` calls straight from the callers' buffers (for example a numpy
array's memory exposed as a ``pickle.PickleBuffer``): no concatenation, no extra copy.
"""

from __future__ import annotations

import os
import pickle
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from nbdurable.errors import CheckpointError, LogCorruptError, UsageError
from nbdurable.store import files

Chunk = bytes | bytearray | memoryview | pickle.PickleBuffer

_DIGEST = re.compile(r"[0-9a-f]{16,128}")
# Linux moves at most 0x7ffff000 bytes per write(); ask for less so one call is one piece.
_MAX_WRITE = 1 << 30
TMP_PREFIX = ".tmp-"


class BlobStore:
    """Content-addressed, write-once files under ``root`` (created lazily on the first put)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"BlobStore({str(self.root)!r})"

    def path(self, digest: str) -> Path:
        """Where the blob named ``digest`` lives (whether or not it exists)."""
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise UsageError(f"invalid blob digest {digest!r}: expected 16 to 128 lowercase hex digits")
        return self.root / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        """Whether the blob named ``digest`` is stored."""
        return self.path(digest).is_file()

    def put(self, digest: str, chunks: Sequence[Chunk], *, signer: Any = None) -> bool:
        """Store the concatenation of ``chunks`` as ``digest``, durably.

        Returns False (writing nothing) if the blob already exists: the caller vouches that
        ``digest`` names the content, so identical content is stored once. Returns True once the
        bytes, the file name and the directory entry are on disk. Each chunk is given to
        ``signer.add`` (:class:`nbdurable.store.signing.Signer`) as it is written.
        """
        final = self.path(digest)
        if final.exists():
            return False
        tmp = final.parent / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            _ensure_dir(final.parent)
            fd = files.open_private(tmp, os.O_WRONLY | os.O_EXCL)
            try:
                for chunk in chunks:
                    view = _byte_view(chunk)
                    if signer is not None:
                        signer.add(view)
                    _write_all(fd, view)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise CheckpointError(files.describe(exc, final.parent)) from None
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return True

    def open(self, digest: str) -> BinaryIO:
        """Open the blob named ``digest`` for reading (binary, buffered)."""
        path = self.path(digest)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise LogCorruptError(
                f"blob {digest} is missing from {self.root} (deleted or never copied with the log); "
                "the value stored in it cannot be restored: run the step that produced it again"
            ) from None


def _byte_view(chunk: Chunk) -> memoryview:
    """A flat unsigned-byte view of ``chunk`` without copying (copies only non-contiguous data)."""
    try:
        view = pickle.PickleBuffer(chunk).raw()  # any C- or Fortran-contiguous buffer, as bytes
    except BufferError:
        view = memoryview(memoryview(chunk).tobytes())
    return view


def _write_all(fd: int, view: memoryview) -> None:
    for start in range(0, view.nbytes, _MAX_WRITE):
        files.write_all(fd, view[start : start + _MAX_WRITE])


def _ensure_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) so that its entry survives a crash."""
    if path.is_dir():
        return
    _ensure_dir(path.parent)
    try:
        os.mkdir(path, files.dir_mode())
    except FileExistsError:
        return
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
