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
import threading
import types
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum
from typing import Any, BinaryIO

import cloudpickle
import xxhash
from cloudpickle import cloudpickle as _cp

MAGIC = b"NBD1"
_HEADER = struct.Struct("<4sIQ")
_LEN = struct.Struct("<Q")
#: Buffers smaller than this stay in the pickle stream.
OUT_OF_BAND_MIN = 64 * 1024

_load_namespace: ContextVar[dict[str, Any] | None] = ContextVar("nbdurable_load_namespace", default=None)


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


def _main_namespace() -> dict[str, Any]:
    """At load time: the namespace that notebook functions get as their globals."""
    ns = _load_namespace.get()
    if ns is None:
        ns = sys.modules["__main__"].__dict__
    return ns


class _MainNamespaceRef:
    """Pickles as a reference to the live namespace of whoever loads it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_main_namespace, ())


_MAIN_REF = _MainNamespaceRef()


def _main_function_setstate(func: types.FunctionType, state: tuple[Any, Any]) -> None:
    """Like cloudpickle's setstate, but leaves the (live) globals alone."""
    state, slotstate = state
    func.__dict__.update(state)
    slotstate.pop("__globals__", None)
    slotstate.pop("_cloudpickle_submodules", None)
    closure = slotstate.pop("__closure__")
    if closure is not None:
        for i, cell in enumerate(closure):
            try:
                func.__closure__[i].cell_contents = cell.cell_contents  # type: ignore[index]
            except ValueError:  # an empty cell
                pass
    for key, value in slotstate.items():
        setattr(func, key, value)


def _refuse_file(obj: object) -> Any:
    raise pickle.PicklingError("an open file cannot be stored")


_class_ids = threading.local()


def _stable_class_id(cls: type, main_globals: dict[str, Any] | None) -> str:
    """A class's identity for cloudpickle's class tracker, derived from its definition.

    cloudpickle names each class defined in the notebook with a random id, so the same class
    pickles differently in every process and a fingerprint of it (or of its instances) would
    change at every restart. A content-derived id is the same wherever the same class is
    defined, and differs between different versions of it.
    """
    stack = _class_ids.__dict__.setdefault("stack", [])
    stack.append(cls)
    try:
        state = _cp._enum_getstate(cls) if issubclass(cls, Enum) else _cp._class_getstate(cls)
        _drop_caches(state)
        buf = io.BytesIO()
        _IdPickler(buf, main_globals, None).dump(
            (type(cls), cls.__module__, cls.__qualname__, cls.__bases__, state))
    finally:
        stack.pop()
    return "nbd-" + xxhash.xxh3_128_hexdigest(buf.getbuffer())


def _drop_caches(state: Any) -> None:
    """copyreg caches ``__slotnames__`` on a class once an instance is pickled: not part of
    its definition (and it would change the class's fingerprint)."""
    if isinstance(state, tuple) and state and isinstance(state[0], dict):
        state[0].pop("__slotnames__", None)


def _track_stably(cls: type, main_globals: dict[str, Any] | None) -> None:
    """Register a not yet tracked notebook class under its content-derived id."""
    if _cp._DYNAMIC_CLASS_TRACKER_BY_CLASS.get(cls) is not None:
        return
    # the classes cloudpickle pickles by value, as in its _class_reduce
    if (cls in _cp._BUILTIN_TYPE_NAMES or cls in (type(None), type(Ellipsis), type(NotImplemented))
            or _cp._should_pickle_by_reference(cls)
            or cls in _class_ids.__dict__.get("stack", ())):
        return
    class_id = _stable_class_id(cls, main_globals)
    with _cp._DYNAMIC_CLASS_TRACKER_LOCK:
        if _cp._DYNAMIC_CLASS_TRACKER_BY_CLASS.get(cls) is None:
            known = _cp._DYNAMIC_CLASS_TRACKER_BY_ID.setdefault(class_id, cls)
            _cp._DYNAMIC_CLASS_TRACKER_BY_CLASS[cls] = class_id
            if known is not cls:  # an identical definition seen before: still a distinct class
                _cp._DYNAMIC_CLASS_TRACKER_BY_ID[class_id] = cls


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle has no types
    """cloudpickle, plus: notebook functions keep the live namespace; open files are refused."""

    dispatch_table = ChainMap(
        {io.TextIOWrapper: _refuse_file, io.BufferedReader: _refuse_file,
         io.BufferedWriter: _refuse_file, io.FileIO: _refuse_file},
        cloudpickle.Pickler.dispatch_table,
    )

    def __init__(self, file: Any, main_globals: dict[str, Any] | None,
                 buffer_callback: Callable[[pickle.PickleBuffer], bool] | None):
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self._main_globals = main_globals

    def reducer_override(self, obj: Any) -> Any:
        if not isinstance(obj, type):
            return super().reducer_override(obj)
        _track_stably(obj, self._main_globals)
        reduced = super().reducer_override(obj)
        if isinstance(reduced, tuple) and len(reduced) > 2:
            _drop_caches(reduced[2])
        return reduced

    def _dynamic_function_reduce(self, func: types.FunctionType) -> Any:
        if self._main_globals is None or func.__globals__ is not self._main_globals:
            return super()._dynamic_function_reduce(func)
        code, _globals, name, argdefs, closure = self._function_getnewargs(func)
        state, slotstate = _cp._function_getstate(func)
        slotstate["__globals__"] = {}
        return (types.FunctionType, (code, _MAIN_REF, name, argdefs, closure),
                (state, slotstate), None, None, _main_function_setstate)


def track_classes(namespace: dict[str, Any]) -> None:
    """Give the notebook classes in ``namespace`` their content-derived ids, so that restored
    instances of an identical class definition come back as instances of *these* classes."""
    for value in list(namespace.values()):
        if isinstance(value, type) and value.__module__ == namespace.get("__name__"):
            with suppress(Exception):  # a class that cannot be pickled just is not tracked
                _track_stably(value, namespace)


class _IdPickler(_Pickler):
    """Only for hashing a class definition: a class being hashed is referred to by name."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) and obj in _class_ids.__dict__.get("stack", ()):
            return (str, (f"<class {obj.__qualname__} being defined>",))
        return super().reducer_override(obj)


def _default_main_globals() -> dict[str, Any] | None:
    main = sys.modules.get("__main__")
    return getattr(main, "__dict__", None)


#: Exact types that pickle alike with cloudpickle and ``pickle``, without buffers: the bytes (and
#: so the digest) are the same either way, at a tenth of the cost (a map's items, a child's
#: result: ~6 us -> ~0.6 us each).
_PLAIN_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})


def pack(value: Any, *, main_globals: dict[str, Any] | None = None) -> Packed:
    """Encode ``value``. Raises :class:`Unstorable` with a reason when it cannot be pickled."""
    if type(value) in _PLAIN_SCALARS:
        data = pickle.dumps(value, protocol=5)
        header = _HEADER.pack(MAGIC, 0, len(data))
        return Packed(_digest((header, data)), len(header) + len(data), (header, data))
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
    size = sum(memoryview(c).nbytes for c in chunks)  # type: ignore[arg-type,misc]  # all buffers
    return Packed(_digest(chunks), size, chunks)


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
def loading_into(namespace: dict[str, Any] | None) -> Iterator[None]:
    """Notebook functions unpickled inside this block get ``namespace`` as their globals."""
    token = _load_namespace.set(namespace)
    try:
        yield
    finally:
        _load_namespace.reset(token)


def unpack_bytes(data: bytes | memoryview) -> Any:
    """Decode a value held in memory (small values stored inline in the log)."""
    return load_parts(split_bytes(data))


def split_bytes(data: bytes | memoryview) -> Parts:
    """The parts of a value held in memory, not decoded yet; ValueError if its framing is
    damaged (truncated, bytes past its end, not an nbdurable value)."""
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise ValueError("it is truncated")
    n, stream_len = _parse_header(view[: _HEADER.size])
    pos = _HEADER.size + n * _LEN.size
    if pos > len(view):
        raise ValueError("it is truncated")
    lens = _parse_lens(view[_HEADER.size: pos], n)
    expected = pos + stream_len + sum(lens)
    if expected != len(view):
        raise ValueError("it is truncated" if expected > len(view) else "it has bytes past its end")
    stream = bytes(view[pos: pos + stream_len])
    pos += stream_len
    buffers = []
    for length in lens:
        buffers.append(bytearray(view[pos: pos + length]))  # writable, like the original
        pos += length
    return Parts(stream, buffers)


#: Where modules of nbdurable 0.1 live now: values it pickled (a ``WaitResult``, a ``@step``
#: function) name the old module, and must load unchanged.
MOVED_MODULES = {
    **{f"nbdurable.{m}": f"nbdurable.store.{m}" for m in (
        "logdb", "journal", "blobs", "spool", "schema", "files", "records", "claims", "signing")},
    **{f"nbdurable.{m}": f"nbdurable.engine.{m}" for m in (
        "analysis", "fingerprint", "serializer", "steps", "waits", "events", "context",
        "resets", "cleanup", "trusts")},
    "nbdurable.engine": "nbdurable.engine.cells",
    "nbdurable.objects": "nbdurable.engine.values",
    "nbdurable.reports": "nbdurable.engine.history",
    "nbdurable.runstate": "nbdurable.store.invocations",
    "nbdurable.runindex": "nbdurable.store.attempt_index",
    "nbdurable.batch": "nbdurable.batch.runner",
    "nbdurable.papermill_engine": "nbdurable.batch.papermill_engine",
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


def _loads(stream: bytes, buffers: list[bytearray]) -> Any:
    """Unpickle; through :class:`_Unpickler` (whose Python ``find_class`` doubles the cost of a
    DataFrame's load) only when the pickle names a module of nbdurable at all."""
    if b"nbdurable." not in stream:
        return pickle.loads(stream, buffers=buffers)
    return _Unpickler(io.BytesIO(stream), buffers=buffers).load()


@dataclass
class Parts:
    """An encoded value read from a file, not decoded yet."""

    stream: bytes
    buffers: list[bytearray]


_SLICE = 8 << 20  # read big buffers in pieces, so that a signer hashes while we read on


def read_parts(f: BinaryIO, on_piece: Callable[[Any], None] = lambda piece: None) -> Parts:
    """Read an encoded value from a blob file, each buffer straight into writable memory,
    handing every piece read, in file order, to ``on_piece`` (a signer). Nothing is decoded:
    check the pieces first, then :func:`load_parts`. A file whose lengths do not add up to its
    size raises ValueError before any large allocation."""
    start = f.tell()
    size = f.seek(0, io.SEEK_END) - start
    f.seek(start)
    head = _read_exact(f, _HEADER.size)
    n, stream_len = _parse_header(head)
    if _HEADER.size + n * _LEN.size > size:
        raise ValueError("it is truncated")
    raw_lens = _read_exact(f, n * _LEN.size)
    lens = _parse_lens(raw_lens, n)
    expected = _HEADER.size + len(raw_lens) + stream_len + sum(lens)
    if expected != size:
        raise ValueError("it is truncated" if expected > size else "it has bytes past its end")
    stream = _read_exact(f, stream_len)
    for piece in (head, raw_lens, stream):
        on_piece(piece)
    buffers = [_read_buffer(f, length, on_piece) for length in lens]
    return Parts(stream, buffers)


def _read_buffer(f: Any, length: int, on_piece: Callable[[Any], None]) -> bytearray:
    """``length`` bytes of the binary file ``f`` (which has ``readinto``) into a new buffer."""
    buf = bytearray(length)
    view = memoryview(buf)
    for start in range(0, length, _SLICE):
        piece = view[start: start + _SLICE]
        if f.readinto(piece) != len(piece):
            raise ValueError("it is truncated")
        on_piece(piece)
    return buf


def load_parts(parts: Parts) -> Any:
    """Decode what :func:`read_parts` read (unpickles: check it first)."""
    return _loads(parts.stream, parts.buffers)


def unpack_file(f: BinaryIO) -> Any:
    """Decode a value from a blob file (unchecked: prefer read_parts + a signature check)."""
    return load_parts(read_parts(f))


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError("it is truncated")
    return data


def _parse_header(head: bytes | memoryview) -> tuple[int, int]:
    magic, n, stream_len = _HEADER.unpack(bytes(head))
    if magic != MAGIC:
        raise ValueError("not an nbdurable value (bad magic)")
    return n, stream_len


def _parse_lens(raw: bytes | memoryview, n: int) -> Sequence[int]:
    return [_LEN.unpack_from(raw, i * _LEN.size)[0] for i in range(n)]
