"""Where a stored value's bytes live: inline in its log row when small, else in a blob file.

A blob file is written and synced *before* the transaction that references it commits, so a
committed row never points at a missing or partial file. Files are content-addressed, so an
identical value is stored once however many steps produce it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import xxhash

from . import serializer
from .errors import LogCorruptError

#: Encoded values up to this size are kept in the row's BLOB column.
INLINE_LIMIT = 64 * 1024


@dataclass(frozen=True)
class StoredRef:
    """How a row refers to its bytes: ``data`` inline, or ``None`` with a blob named ``hash``."""

    hash: str
    size: int
    data: bytes | None


def store_packed(blobs, packed: serializer.Packed) -> StoredRef:
    """Make ``packed`` durable: inline bytes, or a synced blob file for big values."""
    if packed.size <= INLINE_LIMIT:
        return StoredRef(packed.digest, packed.size, packed.to_bytes())
    blobs.put(packed.digest, packed.chunks)
    return StoredRef(packed.digest, packed.size, None)


def store_bytes(blobs, data: bytes) -> StoredRef:
    """Like :func:`store_packed` for bytes that are already encoded (outputs JSON)."""
    digest = xxhash.xxh3_128_hexdigest(data)
    if len(data) <= INLINE_LIMIT:
        return StoredRef(digest, len(data), data)
    blobs.put(digest, [data])
    return StoredRef(digest, len(data), None)


def load_value(blobs, hash_: str, data: bytes | None, namespace: dict | None = None) -> Any:
    """Decode a value stored by :func:`store_packed`."""
    with serializer.loading_into(namespace):
        if data is not None:
            return serializer.unpack_bytes(data)
        with blobs.open(hash_) as f:
            try:
                return serializer.unpack_file(f)
            except ValueError as exc:
                raise LogCorruptError(
                    f"blob {hash_} is damaged ({exc}); run the step again with --force"
                ) from None


def load_bytes(blobs, hash_: str, data: bytes | None) -> bytes:
    """Read bytes stored by :func:`store_bytes`."""
    if data is not None:
        return bytes(data)
    with blobs.open(hash_) as f:
        return f.read()
