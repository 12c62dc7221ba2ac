"""Tamper-evident stored values: an HMAC-SHA256 of their bytes under a per-user secret.

Replaying a checkpoint unpickles bytes from disk, and unpickling runs code. So every stored
value (a variable, a ``@step`` or ``once`` result, recorded outputs, a run-index snapshot)
carries the HMAC-SHA256 of its bytes, and nothing is unpickled or shown before its HMAC checks.
A file changed by anyone else, by a bit flip, or copied from another user's log fails the
check: the step executes again instead, and a warning says why (``nbdurable trust`` re-signs a
log a person has reviewed, as ``jupyter trust`` does for notebooks).

The secret, first found wins:

- ``NBDURABLE_SECRET``: the secret itself (at least 16 characters), for CI;
- ``NBDURABLE_SECRET_FILE``: a file holding it, for a team sharing a log on purpose;
- ``nbdurable_secret`` in the user's Jupyter data directory (``jupyter --data-dir``), created
  0600 with 64 random bytes on first use.

A secret kept beside the log would protect nothing; an xxh3 digest (non-cryptographic, its
collisions can be built) proves nothing: the HMAC is over the bytes themselves. HMAC-SHA256
runs at about 1.75 GB/s here (SHA extensions), and ``hashlib`` releases the GIL on large
buffers, so a big value is signed while it is being written.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

from nbdurable.errors import ConfigError
from nbdurable.store import files

SECRET_ENV, SECRET_FILE_ENV = "NBDURABLE_SECRET", "NBDURABLE_SECRET_FILE"
FILE_NAME = "nbdurable_secret"
MIN_LENGTH = 16

_cache: dict[tuple[Any, ...], bytes] = {}
_cache_lock = threading.Lock()


def key() -> bytes:
    """This user's secret (see the module doc); read once per process and setting."""
    where = (os.environ.get(SECRET_ENV), os.environ.get(SECRET_FILE_ENV))
    found = _cache.get(where)
    if found is None:
        with _cache_lock:
            found = _cache[where] = _load(*where)
    return found


def _load(text: str | None, file: str | None) -> bytes:
    if text:
        return _checked(text.encode(), SECRET_ENV)
    if file:
        try:
            return _checked(Path(file).expanduser().read_bytes().strip(), SECRET_FILE_ENV)
        except OSError as exc:
            raise ConfigError(f"{SECRET_FILE_ENV}={file} cannot be read ({exc.strerror}); "
                              "point it at the file that holds the secret") from None
    return _user_secret(secret_path())


def _checked(secret: bytes, source: str) -> bytes:
    if len(secret) < MIN_LENGTH:
        raise ConfigError(f"the secret in {source} is shorter than {MIN_LENGTH} characters; "
                          "use a long random one, e.g. `python -c 'import secrets; "
                          "print(secrets.token_urlsafe(48))'`")
    return secret


def secret_path() -> Path:
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / FILE_NAME


def _user_secret(path: Path) -> bytes:
    try:
        return _checked(path.read_bytes().strip(), str(path))
    except FileNotFoundError:
        _create_secret(path)
    except OSError as exc:
        raise ConfigError(f"cannot read the signing secret {path} ({exc.strerror}); fix its "
                          f"permissions, or set {SECRET_ENV} / {SECRET_FILE_ENV}") from None
    return _checked(path.read_bytes().strip(), str(path))


def _create_secret(path: Path) -> None:
    """64 random bytes, 0600, published atomically (another process may publish first)."""
    files.private_dir(path.parent)
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            files.write_all(fd, base64.b64encode(secrets.token_bytes(64)) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        with suppress(FileExistsError):  # another process made one first: use theirs
            os.link(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot create the signing secret {path} ({exc.strerror}); set "
                          f"{SECRET_ENV} or {SECRET_FILE_ENV}") from None
    finally:
        with suppress(OSError):
            tmp.unlink()


# -- signing and checking ---------------------------------------------------------------------------

def _bytes(chunk: Any) -> Any:
    return chunk.raw() if hasattr(chunk, "raw") else chunk


def sign(chunks: Iterable[Any]) -> str:
    """The HMAC-SHA256 (hex) of the concatenation of ``chunks``."""
    mac = hmac.new(key(), digestmod=hashlib.sha256)
    for chunk in chunks:
        mac.update(_bytes(chunk))
    return mac.hexdigest()


def verify(mac: str | None, chunks: Iterable[Any]) -> bool:
    """Whether ``mac`` is the HMAC of ``chunks`` under this user's secret."""
    return isinstance(mac, str) and hmac.compare_digest(mac, sign(chunks))


class Signer:
    """An HMAC computed piece by piece, on another thread: ``add`` pieces as they are written
    or read (they must stay unchanged until :meth:`hexdigest`), then ``hexdigest``."""

    def __init__(self) -> None:
        self._mac = hmac.new(key(), digestmod=hashlib.sha256)
        self._pieces: list[Any] = []
        self._cond = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="nbdurable-sign", daemon=True)
        self._thread.start()

    def add(self, piece: Any) -> None:
        with self._cond:
            self._pieces.append(_bytes(piece))
            self._cond.notify()

    def hexdigest(self) -> str:
        with self._cond:
            self._done = True
            self._cond.notify()
        self._thread.join()
        return self._mac.hexdigest()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pieces and not self._done:
                    self._cond.wait()
                if not self._pieces:
                    return
                piece = self._pieces.pop(0)
            self._mac.update(piece)  # hashlib releases the GIL for large pieces
