"""Turning notebook values into bytes and back.

A value is pickled with cloudpickle (protocol 5) so that functions and classes defined in the
notebook travel by value. Large contiguous buffers (numpy arrays, pandas columns, bytes-like
data) go *out of band*: they are written as they are, never copied into the pickle stream, and
read back into writable memory without another copy.

Encoded layout (all integers little-endian)::

    b"NBD1" | u32 n_buffers | u64 stream_len | u64 len(buffer_i) * n | stream | buffer_0 ...

The digest is xxh3-128 of exactly those bytes: it names the blob file (identical content is
stored once) and serves as the value's content fingerprint.

Functions defined in the notebook are restored with the *live* namespace as their globals (not
a stale copy), so after a replay they see later changes to the variables they use, exactly as a
function defined by running the cell would.
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
import types
from collections import ChainMap
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, BinaryIO

import cloudpickle
import xxhash
from cloudpickle import cloudpickle as _cp

MAGIC = b"NBD1"
_HEADER = struct.Struct("<4sIQ")
_LEN = struct.Struct("<Q")
#: Buffers smaller than this stay in the pickle stream.
OUT_OF_BAND_MIN = 64 * 1024

_load_namespace: ContextVar[dict | None] = ContextVar("nbdurable_load_namespace", default=None)


class Unstorable(Exception):
    """Internal: a value cannot be pickled. ``reason`` says why, in words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Packed:
    """An encoded value: ``chunks`` concatenated are the bytes whose xxh3-128 is ``digest``."""

    digest: str
    size: int
    chunks: tuple[Any, ...]

    def to_bytes(self) -> bytes:
        return b"".join(bytes(memoryview(c).cast("B")) if not isinstance(c, bytes) else c
                        for c in self.chunks)


def _main_namespace() -> dict:
    """At load time: the namespace that notebook functions get as their globals."""
    ns = _load_namespace.get()
    if ns is None:
        ns = sys.modules["__main__"].__dict__
    return ns


class _MainNamespaceRef:
    """Pickles as a reference to the live namespace of whoever loads it."""

    def __reduce__(self):
        return (_main_namespace, ())


_MAIN_REF = _MainNamespaceRef()


def _main_function_setstate(func, state):
    """Like cloudpickle's setstate, but leaves the (live) globals alone."""
    state, slotstate = state
    func.__dict__.update(state)
    slotstate.pop("__globals__", None)
    slotstate.pop("_cloudpickle_submodules", None)
    closure = slotstate.pop("__closure__")
    if closure is not None:
        for i, cell in enumerate(closure):
            try:
                func.__closure__[i].cell_contents = cell.cell_contents
            except ValueError:  # an empty cell
                pass
    for key, value in slotstate.items():
        setattr(func, key, value)


def _refuse_file(obj):
    raise pickle.PicklingError("an open file cannot be stored")


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, plus: notebook functions keep the live namespace; open files are refused."""

    dispatch_table = ChainMap(
        {io.TextIOWrapper: _refuse_file, io.BufferedReader: _refuse_file,
         io.BufferedWriter: _refuse_file, io.FileIO: _refuse_file},
        cloudpickle.Pickler.dispatch_table,
    )

    def __init__(self, file, main_globals: dict | None, buffer_callback):
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self._main_globals = main_globals

    def _dynamic_function_reduce(self, func):
        if self._main_globals is None or func.__globals__ is not self._main_globals:
            return super()._dynamic_function_reduce(func)
        code, _globals, name, argdefs, closure = self._function_getnewargs(func)
        state, slotstate = _cp._function_getstate(func)
        slotstate["__globals__"] = {}
        return (types.FunctionType, (code, _MAIN_REF, name, argdefs, closure),
                (state, slotstate), None, None, _main_function_setstate)


def _default_main_globals() -> dict | None:
    main = sys.modules.get("__main__")
    return getattr(main, "__dict__", None)


def pack(value: Any, *, main_globals: dict | None = None) -> Packed:
    """Encode ``value``. Raises :class:`Unstorable` with a reason when it cannot be pickled."""
    buffers: list[pickle.PickleBuffer] = []

    def keep_out_of_band(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < OUT_OF_BAND_MIN:
            return True  # in band
        buffers.append(buf)
        return False

    stream = io.BytesIO()
    globals_ = main_globals if main_globals is not None else _default_main_globals()
    try:
        _Pickler(stream, globals_, keep_out_of_band).dump(value)
    except Exception as exc:  # pickling runs arbitrary __reduce__ code: any error means "no"
        raise Unstorable(_reason(exc)) from None
    raws = [b.raw() for b in buffers]
    header = _HEADER.pack(MAGIC, len(raws), stream.getbuffer().nbytes)
    header += b"".join(_LEN.pack(r.nbytes) for r in raws)
    chunks = (header, stream.getbuffer(), *raws)
    return Packed(_digest(chunks), sum(memoryview(c).nbytes for c in chunks), chunks)


def _digest(chunks: Iterable[Any]) -> str:
    h = xxhash.xxh3_128()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.replace("Could not pickle object as ", "")
    return text[:200]


@contextmanager
def loading_into(namespace: dict | None):
    """Notebook functions unpickled inside this block get ``namespace`` as their globals."""
    token = _load_namespace.set(namespace)
    try:
        yield
    finally:
        _load_namespace.reset(token)


def unpack_bytes(data: bytes | memoryview) -> Any:
    """Decode a value held in memory (small values stored inline in the log)."""
    view = memoryview(data)
    n, stream_len = _parse_header(view[: _HEADER.size])
    lens = _parse_lens(view[_HEADER.size: _HEADER.size + n * _LEN.size], n)
    pos = _HEADER.size + n * _LEN.size
    stream = view[pos: pos + stream_len]
    pos += stream_len
    buffers = []
    for length in lens:
        buffers.append(bytearray(view[pos: pos + length]))  # writable, like the original
        pos += length
    return pickle.loads(stream, buffers=buffers)


def unpack_file(f: BinaryIO) -> Any:
    """Decode a value from a blob file: each buffer is read straight into writable memory."""
    n, stream_len = _parse_header(_read_exact(f, _HEADER.size))
    lens = _parse_lens(_read_exact(f, n * _LEN.size), n)
    stream = _read_exact(f, stream_len)
    buffers = []
    for length in lens:
        buf = bytearray(length)
        if f.readinto(buf) != length:
            raise ValueError("blob file is truncated")
        buffers.append(buf)
    return pickle.loads(stream, buffers=buffers)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError("blob file is truncated")
    return data


def _parse_header(head) -> tuple[int, int]:
    magic, n, stream_len = _HEADER.unpack(bytes(head))
    if magic != MAGIC:
        raise ValueError("not an nbdurable value (bad magic)")
    return n, stream_len


def _parse_lens(raw, n: int) -> Sequence[int]:
    return [_LEN.unpack_from(raw, i * _LEN.size)[0] for i in range(n)]
