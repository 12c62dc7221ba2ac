"""Nothing on disk is trusted blindly: every stored value is HMAC-checked before it is
unpickled or shown. A bit flip in a blob, a hostile pickle swapped into a blob or a run-index
snapshot, an edited inline value, a log signed with another secret: the value is never loaded,
the step executes again and says why. Files are owner-only under any umask. Real kernels, real
files, real DuckDB."""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from kernels import Kernel, kernel_env

LOAD = "%load_ext nbdurable"
ARRAY = ("%%durable a\nimport numpy as np\nopen('effects.log', 'a').write('a\\n')\n"
         "arr = np.arange(1_000_000)\n")  # 8 MB: a blob file
CHECK = "print(int(arr.sum()), int(arr[-1]))"
EXPECTED = f"{sum(range(1_000_000))} 999999\n"


class Evil:
    """Unpickling this creates a file: proof that code from disk ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def runs(work: Path) -> int:
    path = work / "effects.log"
    return len(path.read_text().split()) if path.exists() else 0


def blobs(work: Path) -> list[Path]:
    return [p for p in (work / "log.duckdb.blobs").rglob("*") if p.is_file()]


def first_run(work: Path, cell: str = ARRAY, env: dict | None = None) -> None:
    with Kernel(work, env) as k:
        k.execute(LOAD)
        assert k.execute(cell).status == "ok"


def rerun(work: Path, cell: str = ARRAY, env: dict | None = None) -> tuple[dict, str]:
    """A fresh kernel runs the cell again: (its nbdurable note, what CHECK printed)."""
    with Kernel(work, env) as k:
        k.execute(LOAD)
        notes = k.execute(cell).notices()
        return notes[0], k.execute(CHECK).stream() if cell is ARRAY else ""


def test_an_untouched_checkpoint_replays(tmp_path):
    first_run(tmp_path)
    note, printed = rerun(tmp_path)
    assert note["kind"] == "replayed" and printed == EXPECTED and runs(tmp_path) == 1


def test_a_bit_flip_in_a_blob_is_never_loaded(tmp_path):
    first_run(tmp_path)
    [blob] = blobs(tmp_path)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01  # the last element of the array
    blob.write_bytes(bytes(data))
    note, printed = rerun(tmp_path)
    assert note["kind"] == "executing" and "does not match its signature" in note["reason"]
    assert printed == EXPECTED and runs(tmp_path) == 2


def test_a_hostile_pickle_in_a_blob_never_runs(tmp_path):
    first_run(tmp_path)
    [blob] = blobs(tmp_path)
    marker = tmp_path / "pwned"
    from nbdurable.engine import serializer

    blob.write_bytes(serializer.pack(Evil(marker)).to_bytes())
    note, printed = rerun(tmp_path)
    assert not marker.exists()
    assert note["kind"] == "executing" and printed == EXPECTED


def test_a_hostile_run_index_snapshot_never_runs(tmp_path):
    first_run(tmp_path)
    [snapshot] = list((tmp_path / "log.duckdb.index").glob("*.pickle"))
    marker = tmp_path / "pwned"
    signature, _, _ = snapshot.read_bytes().partition(b"\n")
    snapshot.write_bytes(signature + b"\n" + pickle.dumps(Evil(marker)))
    note, printed = rerun(tmp_path)
    assert not marker.exists()
    assert note["kind"] == "replayed" and printed == EXPECTED  # rebuilt from the log


@pytest.mark.parametrize("bit", range(12))
def test_a_damaged_snapshot_is_rebuilt_from_the_log(tmp_path, bit):
    first_run(tmp_path)
    [snapshot] = list((tmp_path / "log.duckdb.index").glob("*.pickle"))
    data = bytearray(snapshot.read_bytes())
    position = (len(data) - 1) * bit // 11  # from the signature to the last byte
    data[position] ^= 1 << (bit % 8)
    snapshot.write_bytes(bytes(data))
    note, printed = rerun(tmp_path)
    assert note["kind"] == "replayed" and printed == EXPECTED and runs(tmp_path) == 1


def test_an_edited_inline_value_is_never_loaded(tmp_path):
    cell = "%%durable s\nopen('effects.log', 'a').write('s\\n')\nsecret = 'original'\n"
    first_run(tmp_path, cell)
    con = duckdb.connect(str(tmp_path / "log.duckdb"))
    try:  # someone edits the log by hand: a value of the same length
        [(data,)] = con.execute("SELECT data FROM events WHERE kind = 'attempt_finished'"
                                ).fetchall()
        edited = data.replace(b"original", b"ORIGINAL")
        assert edited != data
        con.execute("UPDATE events SET data = ? WHERE kind = 'attempt_finished'", [edited])
    finally:
        con.close()
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        note = k.execute(cell).notices()[0]
        assert note["kind"] == "executing" and "signature" in note["reason"]
        assert k.execute("print(secret)").stream() == "original\n"


def damage_framing_then_trust(work: Path, kind: str) -> None:
    """Break the header of the one inline value in the ``kind`` row, then `nbdurable trust`
    the log (a person reviewed it): its bytes are signed again, damaged."""
    con = duckdb.connect(str(work / "log.duckdb"))
    try:
        [(data,)] = con.execute("SELECT data FROM events WHERE kind = ?", [kind]).fetchall()
        assert data.count(b"NBD1") == 1  # the value's header; outputs are JSON
        con.execute("UPDATE events SET data = ? WHERE kind = ?",
                    [data.replace(b"NBD1", b"NBD0"), kind])
    finally:
        con.close()
    out = subprocess.run([sys.executable, "-m", "nbdurable.cli", "trust", str(work / "log.duckdb"),
                          "--run", "test-run"], env=kernel_env(work), capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


def test_a_damaged_inline_value_even_once_trusted_is_refused_not_raised(tmp_path):
    """Its bytes are signed (someone ran `nbdurable trust` on them) but their framing is
    damaged: the step executes again and says why, instead of failing with a bare ValueError."""
    cell = "%%durable s\nopen('effects.log', 'a').write('s\\n')\nsecret = 'original'\n"
    first_run(tmp_path, cell)
    damage_framing_then_trust(tmp_path, "attempt_finished")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        reply = k.execute(cell)
        note = reply.notices()[0]
        assert reply.status == "ok", reply.evalue
        assert note["kind"] == "executing" and "damaged" in note["reason"], note
        assert k.execute("print(secret)").stream() == "original\n"
    assert runs(tmp_path) == 2


def test_a_once_whose_trusted_result_is_damaged_is_in_doubt(tmp_path):
    call = "import nbdurable\nreceipt = nbdurable.once('email', lambda: 'sent-42')"
    with Kernel(tmp_path) as k:
        assert k.execute(call).status == "ok"
    damage_framing_then_trust(tmp_path, "once_finished")
    with Kernel(tmp_path) as k:
        again = k.execute(call)
    assert again.ename == "OnceInDoubtError" and "damaged" in again.evalue, again.evalue


def test_a_log_signed_with_another_secret_is_not_trusted(tmp_path):
    first_run(tmp_path, env=kernel_env(tmp_path, NBDURABLE_SECRET="a" * 32))
    note, printed = rerun(tmp_path, env=kernel_env(tmp_path, NBDURABLE_SECRET="b" * 32))
    assert note["kind"] == "executing" and printed == EXPECTED and runs(tmp_path) == 2
    note, _ = rerun(tmp_path, env=kernel_env(tmp_path, NBDURABLE_SECRET="b" * 32))
    assert note["kind"] == "replayed"  # re-signed by executing again


def test_a_tampered_step_result_runs_the_call_again_and_once_asks(tmp_path):
    cell = ("%%durable c\nimport nbdurable, pathlib\n"
            "@nbdurable.step\ndef fetch():\n    open('effects.log', 'a').write('fetch\\n')\n"
            "    return 'fetched'\n"
            "x = fetch()\n"
            "y = nbdurable.once('mail', lambda: open('effects.log', 'a').write('mail\\n'))\n"
            "raise RuntimeError('fail after the calls')\n")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        assert k.execute(cell).ename == "RuntimeError"
    con = duckdb.connect(str(tmp_path / "log.duckdb"))
    try:
        con.execute("UPDATE events SET data = NULL WHERE kind IN ('call_completed', "
                    "'once_finished')")  # their results are gone or changed
    finally:
        con.close()
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        r = k.execute(cell)
        assert r.ename == "OnceInDoubtError" and "once_resolve('mail'" in r.evalue
        assert "step call fetch#0" in r.stream("stderr") and "runs again" in r.stream("stderr")
    assert (tmp_path / "effects.log").read_text().split() == ["fetch", "mail", "fetch"]


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_file_is_owner_only_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        first_run(tmp_path)
        rerun(tmp_path)
    finally:
        os.umask(old)
    found = [p for p in tmp_path.rglob("*") if p.name.startswith("log.duckdb")]
    found += [p for p in tmp_path.rglob("*") if any(q.name.startswith("log.duckdb.")
                                                    for q in p.parents)]
    assert len(found) > 5
    for path in found:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_trust_re_signs_a_reviewed_log_and_only_then_it_replays(tmp_path):
    first_run(tmp_path, env=kernel_env(tmp_path, NBDURABLE_SECRET="a" * 32))
    log = str(tmp_path / "log.duckdb")
    env = {**os.environ, "NBDURABLE_SECRET": "b" * 32}
    out = subprocess.run([sys.executable, "-m", "nbdurable.cli", "trust", log, "--run",
                          "test-run", "--json"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["signed"] == 2 and result["valid"] == 0 and result["runs"] == ["test-run"]
    note, printed = rerun(tmp_path, env=kernel_env(tmp_path, NBDURABLE_SECRET="b" * 32))
    assert note["kind"] == "replayed" and printed == EXPECTED and runs(tmp_path) == 1
    again = subprocess.run([sys.executable, "-m", "nbdurable.cli", "trust", log], env=env,
                           capture_output=True, text=True)
    assert again.returncode == 0 and "0 value(s)" in again.stdout and "2 were signed" in \
        again.stdout
    # a value changed after the review is still refused
    [blob] = blobs(tmp_path)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    note, _ = rerun(tmp_path, env=kernel_env(tmp_path, NBDURABLE_SECRET="b" * 32))
    assert note["kind"] == "executing"


def test_trust_errors_are_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "nbdurable.cli", "trust",
                          str(tmp_path / "missing.duckdb")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("nbdurable: error: there is no log")
    assert len(out.stderr.splitlines()) == 1
