"""No checkpoint is lost and no damage spreads: a log held by another program for longer than
the lease timeout, a disk that fills in the middle of a checkpoint, journals with damaged
lines. Real kernels, real DuckDB files, a real second process holding the file with plain
`duckdb`, a real tmpfs that runs out of space."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from foreign import held
from kernels import Kernel, kernel_env

LOAD = "%load_ext nbdurable"
TIMEOUT = 60


def effect_cell(name: str, extra: str = "") -> str:
    return (f"%%durable {name}\nopen('effects.log', 'a').write({name!r} + '\\n')\n"
            f"{name} = {name!r}\n{extra}")


def effects(work: Path) -> Counter:
    path = work / "effects.log"
    return Counter(path.read_text().split()) if path.exists() else Counter()


def in_kernel_wait(condition: str, what: str) -> str:
    """A cell that waits (bounded) until ``condition`` holds about this kernel's journal ``j``."""
    return ("import time\nj = list(__nbdurable__.engine._journals.values())[0]\n"
            f"t = time.monotonic()\nwhile not ({condition}):\n"
            f"    assert time.monotonic() - t < {TIMEOUT}, 'timed out waiting for {what}'\n"
            "    time.sleep(0.02)\n")


def log_rows(log: Path) -> list[tuple]:
    con = duckdb.connect(str(log), read_only=True)
    try:
        return con.execute("SELECT run, step, attempt, kind, body FROM events").fetchall()
    finally:
        con.close()


def completed_steps(log: Path) -> set[str]:
    return {step for _, step, _, kind, body in log_rows(log)
            if kind == "attempt_finished" and '"completed"' in body}


# -- 1. the log held by another program past the lease timeout -------------------------------------



def test_a_checkpoint_made_while_the_log_is_held_reaches_it_later(tmp_path):
    log = tmp_path / "log.duckdb"
    env = kernel_env(tmp_path, NBDURABLE_LOCK_TIMEOUT="1")
    with Kernel(tmp_path, env) as k:
        k.execute(LOAD)
        assert k.execute(effect_cell("c1")).status == "ok"
        with held(log) as holder:
            assert k.execute(effect_cell("c2")).status == "ok"  # durable in the journal
            stalled = k.execute(in_kernel_wait("j._stalled", "a failed insert")
                                + "print(j._stalled)").stream()
            assert f"PID {holder.pid}" in stalled
            c3 = k.execute(effect_cell("c3"))
            assert c3.status == "ok"
            assert "safe in its journal" in c3.stream("stderr")
            assert f"PID {holder.pid}" in c3.stream("stderr")
        k.execute(in_kernel_wait("j._written == 0", "the journal to reach the log"))
    assert completed_steps(log) == {"c1", "c2", "c3"}
    # what was promised stays true across restarts and other writers
    for _ in range(2):
        with Kernel(tmp_path, env) as k:
            k.execute(LOAD)
            for name in ("c1", "c2", "c3"):
                notes = k.execute(effect_cell(name)).notices()
                assert [n["kind"] for n in notes] == ["replayed"], (name, notes)
            k.execute("import nbdurable\nnbdurable.push_event('poke')")
    assert effects(tmp_path) == Counter(c1=1, c2=1, c3=1)


def test_a_failed_insert_is_retried_in_order_and_the_journal_kept_until_then(tmp_path):
    """Without a kernel: the journal's writer against a log held by plain duckdb."""
    from nbdurable.store import journal, records
    from nbdurable.store.logdb import LogDB

    db = LogDB(tmp_path / "log.duckdb", lock_timeout=0.3)
    with db.lease():
        pass  # create the log
    j = journal.Journal(db)
    rows = [records.run_created(f"r{i}", None) for i in range(3)]
    with held(db.path):
        j.submit([rows[0]], j.append([rows[0]], sync=True))
        deadline = time.monotonic() + TIMEOUT
        while j._stalled is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        j.submit([rows[1]], j.append([rows[1]], sync=True))
    j.submit([rows[2]], j.append([rows[2]], sync=True))
    deadline = time.monotonic() + TIMEOUT
    while j.path.stat().st_size:
        assert time.monotonic() < deadline, "the journal was never applied"
        time.sleep(0.02)
    with db.lease() as con:
        assert [r[0] for r in con.execute("SELECT run FROM events ORDER BY rowid").fetchall()] \
            == ["r0", "r1", "r2"]
    j.close()
    db.close()


# -- 2. a disk that fills during a checkpoint -----------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root, as CI has)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                   check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` but for ``leave`` bytes."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            try:
                if os.write(fd, b"\0" * 65536) == 0:
                    break
            except OSError:
                break
        os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)
    return filler


@contextlib.contextmanager
def kernel_with_c1_on(disk: Path, work: Path):
    """A kernel whose log is on ``disk``, c1 checkpointed and in the log."""
    env = kernel_env(work, NBDURABLE_LOG=str(disk / "log.duckdb"))
    with Kernel(work, env) as k:
        k.execute(LOAD)
        assert k.execute(effect_cell("c1")).status == "ok"
        k.execute(in_kernel_wait("j._written == 0", "c1 to reach the log"))
        yield k, env


def test_a_full_disk_fails_the_checkpoint_loudly_and_leaves_no_partial_line(tmp_path, small_disk):
    with kernel_with_c1_on(small_disk, tmp_path) as (k, env):
        filler = fill(small_disk, leave=4096)
        r = k.execute(effect_cell("c2", "print('x' * 6000)"))
        stderr = r.stream("stderr")
        assert "not checkpointed, it will execute again" in stderr and "disk is full" in stderr
        assert "Traceback" not in stderr and "Error in callback" not in stderr
        filler.unlink()
        journals = list((small_disk / "log.duckdb.journal").glob("*.jsonl"))
        for path in journals:  # whole lines only: each ends with a newline
            assert path.read_bytes().endswith(b"\n") or not path.read_bytes()
        k.sigkill()
    with Kernel(tmp_path, env) as k:
        k.execute(LOAD)
        assert [n["kind"] for n in k.execute(effect_cell("c1")).notices()] == ["replayed"]
        note = k.execute(effect_cell("c2", "print('x' * 6000)")).notices()[0]
        assert note["kind"] == "executing" and note["reason"] == "the previous attempt failed"
        assert k.execute(effect_cell("c3")).status == "ok"
        k.execute(in_kernel_wait("j._written == 0", "the journal to reach the log"))
    assert effects(tmp_path) == Counter(c1=1, c2=2, c3=1)
    assert completed_steps(small_disk / "log.duckdb") == {"c1", "c2", "c3"}


# -- 3. damaged journal lines ---------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["invalid UTF-8", "valid JSON, changed byte"])
def test_a_damaged_journal_line_is_set_aside_and_never_spreads(tmp_path, damage):
    env = kernel_env(tmp_path, NBDURABLE_CRASH_AT="after-commit")
    with Kernel(tmp_path, kernel_env(tmp_path)) as k:
        k.execute(LOAD)
        k.execute(effect_cell("c1"))
        k.execute(in_kernel_wait("j._written == 0", "c1 to reach the log"))
    with Kernel(tmp_path, env) as k:  # c1 replays; c2 is checkpointed, then the kernel dies
        k.execute(LOAD)
        k.execute(effect_cell("c1"))
        k.execute_until_death(effect_cell("c2"))
    [path] = list((tmp_path / "log.duckdb.journal").glob("*.jsonl"))
    lines = path.read_bytes().split(b"\n")
    finished = next(i for i, line in enumerate(lines) if b'"attempt_finished"' in line)
    if damage == "invalid UTF-8":
        lines[finished] = lines[finished].replace(b'"c2"', b'"c\xff"', 1)
    else:
        lines[finished] = lines[finished].replace(b'\\"completed\\"', b'\\"complete!\\"', 1)
        assert b"complete!" in lines[finished]
    path.write_bytes(b"\n".join(lines))

    said = []
    for command in (["runs"], ["log", "test-run"], ["event", "list", "test-run"]):
        out = subprocess.run([sys.executable, "-m", "nbdurable.cli", *command, "--log",
                              str(tmp_path / "log.duckdb")], capture_output=True, text=True,
                             timeout=TIMEOUT)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        said += out.stderr.splitlines()
    assert len(said) == 1 and said[0].startswith("nbdurable: warning: 1 damaged line(s)")
    quarantined = list((tmp_path / "log.duckdb.journal" / "quarantine").glob("*.bad"))
    assert len(quarantined) == 1 and lines[finished] in quarantined[0].read_bytes()
    assert not any("complete!" in body or "\ufffd" in body
                   for *_, body in log_rows(tmp_path / "log.duckdb"))
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        assert [n["kind"] for n in k.execute(effect_cell("c1")).notices()] == ["replayed"]
        assert k.execute(effect_cell("c2")).notices()[0]["kind"] == "executing"
        history = k.execute("import nbdurable\nprint(sorted(set(nbdurable.history()['step'])))")
        assert history.stream() == "['c1', 'c2']\n"
    assert effects(tmp_path) == Counter(c1=1, c2=2)


# -- every failure speaks nbdurable ---------------------------------------------------------------

@pytest.mark.parametrize("damage", ["ALTER TABLE events RENAME COLUMN body TO b",
                                    "ALTER TABLE events DROP COLUMN data",
                                    "DROP TABLE events CASCADE"])
def test_a_damaged_schema_is_one_line_everywhere(tmp_path, damage):
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(effect_cell("c1"))
        k.execute(in_kernel_wait("j._written == 0", "c1 to reach the log"))
    con = duckdb.connect(str(tmp_path / "log.duckdb"))
    try:
        con.execute(damage)
    finally:
        con.close()
    for command in (["runs"], ["log", "test-run"], ["event", "list", "test-run"]):
        out = subprocess.run([sys.executable, "-m", "nbdurable.cli", *command, "--log",
                              str(tmp_path / "log.duckdb")], capture_output=True, text=True,
                             timeout=TIMEOUT)
        assert out.returncode in (0, 2) and "Traceback" not in out.stderr, out.stderr
        if out.returncode:  # what the damage touches fails in one line; the rest works
            assert len(out.stderr.splitlines()) == 1 and "changed by hand" in out.stderr
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        r = k.execute(effect_cell("c1"))
        assert r.ename == "LogCorruptError" and len(r.traceback) == 1
        assert "changed by hand or damaged" in r.evalue
        r = k.execute("import nbdurable\nnbdurable.history()")
        assert r.status == "ok" or (r.ename == "LogCorruptError" and len(r.traceback) == 1)


def test_no_space_at_all_is_one_line(tmp_path, small_disk):
    with kernel_with_c1_on(small_disk, tmp_path) as (k, _):
        fill(small_disk, leave=0)
        r = k.execute(effect_cell("c2", "x = list(range(100_000))"))
        assert r.status == "error" and len(r.traceback) == 1, r.traceback
        assert "disk is full" in r.evalue or "disk is full" in r.stream("stderr")
        h = k.execute("import nbdurable\nnbdurable.history()")
        assert h.status == "ok" or (len(h.traceback) == 1 and h.ename.endswith("Error")), \
            h.traceback
        assert "Traceback" not in h.stream("stderr")
    assert effects(tmp_path)["c1"] == 1


# -- querying the log safely, and cleaning up beside it ---------------------------------------------

def cli(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbdurable.cli", *args, "--log",
                           str(work / "log.duckdb")], capture_output=True, text=True,
                          timeout=TIMEOUT)


def test_sql_reads_under_the_lease_and_never_writes(tmp_path):
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(effect_cell("c1"))
        k.execute(in_kernel_wait("j._written == 0", "c1 to reach the log"))
        out = cli(tmp_path, "sql", "SELECT step, status FROM attempts", "--json")
        assert out.returncode == 0, out.stderr  # while the kernel is alive and idle
        assert json.loads(out.stdout) == [{"step": "c1", "status": "completed"}]
        before = len(log_rows(tmp_path / "log.duckdb"))
        for bad in ("DELETE FROM events", "SELECT 1; DROP TABLE events", "SELECT nope FROM x",
                    "CREATE TABLE t AS SELECT 1"):
            out = cli(tmp_path, "sql", bad)
            assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
        assert len(log_rows(tmp_path / "log.duckdb")) == before
        r = k.execute("import nbdurable\nprint(nbdurable.sql('SELECT count(*) AS n FROM "
                      "events')['n'][0] > 0)")
        assert r.stream() == "True\n"


def test_gc_removes_only_what_nothing_needs(tmp_path):
    cell = ("%%durable a\nimport numpy as np\nopen('effects.log', 'a').write('a\\n')\n"
            "arr = np.arange(1_000_000)\n")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(cell)
    blobs = tmp_path / "log.duckdb.blobs"
    [kept] = [p for p in blobs.rglob("*") if p.is_file()]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    old = time.time() - 40 * 86400
    orphan = blobs / "ff" / ("f" * 32)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"x" * 1000)
    temporary = kept.parent / f".tmp-{dead}-abcd"
    temporary.write_bytes(b"y" * 10)
    quarantined = tmp_path / "log.duckdb.journal" / "quarantine" / "old.bad"
    quarantined.parent.mkdir(parents=True, exist_ok=True)
    quarantined.write_bytes(b"z")
    for path in (orphan, quarantined, kept):
        os.utime(path, (old, old))
    young = blobs / "ee" / ("e" * 32)  # unreferenced but young: maybe about to be referenced
    young.parent.mkdir(exist_ok=True)
    young.write_bytes(b"e")

    listed = json.loads(cli(tmp_path, "gc", "--dry-run", "--json").stdout)
    assert listed["blobs"] == [str(orphan)] and listed["temporary"] == [str(temporary)]
    assert listed["quarantine"] == [str(quarantined)] and orphan.exists()
    done = cli(tmp_path, "gc")
    assert done.returncode == 0 and "removed 1 unreferenced blob(s)" in done.stdout
    assert not orphan.exists() and not temporary.exists() and not quarantined.exists()
    assert kept.exists() and young.exists()
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        assert [n["kind"] for n in k.execute(cell).notices()] == ["replayed"]
