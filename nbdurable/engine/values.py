"""Where a stored value's bytes live: inline in its log row when small, else in a blob file.

A blob file is written and synced *before* the transaction that references it commits, so a
committed row never points at a missing or partial file. Files are content-addressed, so an
identical value is stored once however many steps produce it.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

import xxhash

from nbdurable.engine import serializer
from nbdurable.errors import LogCorruptError, SignatureError
from nbdurable.store import signing
from nbdurable.store.records import StoredRef

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Sequence

    from nbdurable.store.blobs import BlobStore
    from nbdurable.store.logdb import LogDB

#: Encoded values up to this size are kept in the row's BLOB column.
INLINE_LIMIT = 64 * 1024


def store_packed(blobs: BlobStore, packed: serializer.Packed) -> StoredRef:
    """Make ``packed`` durable and signed: inline bytes, or a synced blob file for big values
    (signed while it is written)."""
    if packed.size <= INLINE_LIMIT:
        data = packed.to_bytes()
        return StoredRef(packed.digest, packed.size, data, signing.sign([data]))
    return StoredRef(packed.digest, packed.size, None, _put(blobs, packed.digest, packed.chunks))


def store_bytes(blobs: BlobStore, data: bytes) -> StoredRef:
    """Like :func:`store_packed` for bytes that are already encoded (outputs JSON)."""
    digest = xxhash.xxh3_128_hexdigest(data)
    if len(data) <= INLINE_LIMIT:
        return StoredRef(digest, len(data), data, signing.sign([data]))
    return StoredRef(digest, len(data), None, _put(blobs, digest, [data]))


def _put(blobs: BlobStore, digest: str, chunks: Sequence[Any]) -> str:
    signer = signing.Signer()
    if not blobs.put(digest, chunks, signer=signer):  # stored already: sign what we have
        for chunk in chunks:
            signer.add(chunk)
    return signer.hexdigest()


def load_value(log: LogDB, ref: StoredRef, namespace: dict[str, Any] | None = None) -> Any:
    """Decode a value stored by :func:`store_packed` in ``log``, once its signature checks:
    :class:`~nbdurable.errors.SignatureError` if it does not (nothing is unpickled)."""
    with serializer.loading_into(namespace):
        if ref.data is not None:
            _check(log, ref, signing.sign([ref.data]))
            try:
                parts = serializer.split_bytes(ref.data)
            except ValueError as exc:
                raise LogCorruptError(f"stored value {ref.hash[:16]} is damaged ({exc}); it was "
                                      "not loaded") from None
            return serializer.load_parts(parts)
        with log.blobs.open(ref.hash) as f:
            signer = signing.Signer()
            try:
                parts = serializer.read_parts(f, signer.add)
            except ValueError as exc:
                signer.hexdigest()
                raise LogCorruptError(f"blob {ref.hash} is damaged ({exc}); it was not loaded"
                                      ) from None
            _check(log, ref, signer.hexdigest())
            return serializer.load_parts(parts)


def load_bytes(log: LogDB, ref: StoredRef) -> bytes:
    """Read bytes stored by :func:`store_bytes` in ``log``, once their signature checks."""
    data = raw_bytes(log.blobs, ref)
    _check(log, ref, signing.sign([data]))
    return data


def raw_bytes(blobs: BlobStore, ref: StoredRef) -> bytes:
    """A stored value's bytes, unchecked (to sign them, never to load them)."""
    if ref.data is not None:
        return bytes(ref.data)
    with blobs.open(ref.hash) as f:
        return bytes(f.read())


def _check(log: LogDB, ref: StoredRef, computed: str) -> None:
    """Accept the bytes whose HMAC is ``computed`` if the ref's signature, or one that
    ``nbdurable trust`` recorded for them, is that HMAC."""
    if _same(ref.mac, computed):
        return
    trusted = getattr(log, "trusted_macs", None)
    if trusted is not None and any(_same(mac, computed) for mac in trusted(ref.hash)):
        return
    if ref.mac is None:
        raise SignatureError(f"stored value {ref.hash[:16]} carries no signature (a log from "
                             "nbdurable 0.1, or rows added by hand); it was not loaded. Review "
                             "the log, then `nbdurable trust LOG`")
    raise SignatureError(f"stored value {ref.hash[:16]} does not match its signature: changed "
                         "or damaged since it was written, or signed with another secret; it "
                         "was not loaded")


def _same(mac: str | None, computed: str) -> bool:
    return isinstance(mac, str) and hmac.compare_digest(mac, computed)
