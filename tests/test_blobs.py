"""BlobStore: content-addressed, durable, write-once files."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xxhash

from nbdurable.errors import LogCorruptError, UsageError
from nbdurable.store.blobs import BlobStore

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]


def digest_of(*chunks) -> str:
    h = xxhash.xxh3_128()
    for chunk in chunks:
        h.update(memoryview(chunk).cast("B") if not isinstance(chunk, pickle.PickleBuffer) else chunk.raw())
    return h.hexdigest()


@pytest.fixture
def store(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "log.duckdb.blobs")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_put_exists_open(store):
    data = b"hello blob" * 1000
    digest = digest_of(data)
    assert not store.root.exists()  # created lazily
    assert not store.exists(digest)
    assert store.put(digest, [data]) is True
    assert store.exists(digest)
    assert store.path(digest) == store.root / digest[:2] / digest
    with store.open(digest) as f:
        assert f.read() == data
    assert files_under(store.root) == [f"{digest[:2]}/{digest}"]


def test_identical_content_is_stored_once(store):
    data = os.urandom(4096)
    digest = digest_of(data)
    assert store.put(digest, [data]) is True
    before = store.path(digest).stat()
    assert store.put(digest, [data]) is False
    after = store.path(digest).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(files_under(store.root)) == 1


def test_chunk_kinds_are_written_without_change(store):
    matrix = np.arange(60, dtype=np.float64).reshape(6, 10)
    fortran = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
    strided = np.arange(20, dtype=np.int16)[::2]  # not contiguous: copied, still correct
    chunks = [
        b"head",
        bytearray(b"\x00\x01\x02"),
        memoryview(b"view")[1:],
        pickle.PickleBuffer(matrix),
        memoryview(matrix),
        pickle.PickleBuffer(fortran),
        memoryview(strided),
        b"",
    ]
    expected = b"head" + b"\x00\x01\x02" + b"iew" + matrix.tobytes() + matrix.tobytes()
    expected += fortran.tobytes(order="F") + strided.tobytes()
    digest = digest_of(expected)
    assert store.put(digest, chunks)
    assert store.path(digest).read_bytes() == expected


def test_large_buffer_round_trip(store):
    array = np.random.default_rng(1).integers(0, 2**31, size=6_000_000, dtype=np.int64)  # 48 MB
    digest = digest_of(pickle.PickleBuffer(array))
    assert store.put(digest, [pickle.PickleBuffer(array)])
    with store.open(digest) as f:
        back = np.frombuffer(f.read(), dtype=np.int64)
    assert np.array_equal(back, array)


def test_empty_blob(store):
    digest = digest_of(b"")
    assert store.put(digest, [])
    assert store.path(digest).read_bytes() == b""


def test_missing_blob_is_a_clear_error(store):
    digest = "ab" * 16
    with pytest.raises(LogCorruptError) as caught:
        store.open(digest)
    assert digest in str(caught.value) and "\n" not in str(caught.value)
    store.put(digest, [b"x"])
    store.path(digest).unlink()
    with pytest.raises(LogCorruptError):
        store.open(digest)


@pytest.mark.parametrize("digest", ["", "short", "../../etc/passwd", ".tmp-123-abcd", "AB" * 16,
                                    "ab/cd" * 8, 12])
def test_invalid_digests_are_refused(store, digest):
    with pytest.raises(UsageError):
        store.path(digest)
    with pytest.raises(UsageError):
        store.put(digest, [b"x"])


def test_temp_files_are_never_blobs(store):
    digest = digest_of(b"real")
    shard = store.root / digest[:2]
    shard.mkdir(parents=True)
    (shard / f".tmp-999-{digest}").write_bytes(b"half written")
    (shard / ".tmp-999-abcd1234").write_bytes(b"half written")
    assert not store.exists(digest)
    with pytest.raises(LogCorruptError):
        store.open(digest)
    assert store.put(digest, [b"real"])
    assert store.path(digest).read_bytes() == b"real"


def test_failed_write_leaves_no_file(store):
    digest = digest_of(b"never")
    with pytest.raises(TypeError):
        store.put(digest, [b"never", object()])  # not a buffer: fails after the first chunk
    assert not store.exists(digest)
    assert files_under(store.root) == []


KILLED_WRITER = """
    import os, sys
    from nbdurable.store.blobs import BlobStore

    class Slow:
        def __iter__(self):
            yield b"x" * 1_000_000
            print("writing", flush=True)
            sys.stdin.readline()  # killed here, half written
            yield b"y"

    BlobStore(sys.argv[1]).put(sys.argv[2], Slow())
"""


def test_killed_writer_leaves_no_blob(store):
    digest = "cd" * 16
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(store.root), digest],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    leftovers = files_under(store.root)
    assert len(leftovers) == 1 and Path(leftovers[0]).name.startswith(".tmp-")
    assert not store.exists(digest)
    assert store.put(digest, [b"complete"])
    assert store.path(digest).read_bytes() == b"complete"
