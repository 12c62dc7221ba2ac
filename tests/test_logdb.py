"""LogDB: the lease protocol, opening/validation, and real multi-process behaviour.

Other processes are real interpreters (``subprocess`` or ``multiprocessing``); they report over
stdout lines and are driven over stdin, and every wait has a timeout.
"""

from __future__ import annotations

import fcntl
import gc
import multiprocessing
import os
import queue
import random
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pytest

from nbdurable.errors import (
    LogBusyError,
    LogCorruptError,
    LogError,
    LogVersionError,
    NotALogError,
    UsageError,
)
from nbdurable.store import schema
from nbdurable.store.logdb import LogDB, open_log

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
INSERT = "INSERT INTO events VALUES (?, ?, ?, 'test', now(), CAST(? AS VARCHAR), NULL)"


# -- helpers -------------------------------------------------------------------------------------


class Worker:
    """A separate Python process running ``code``: ``expect`` its stdout words, ``send`` lines."""

    def __init__(self, code: str, *args: object):
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=ENV,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, word: str, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"worker {self.proc.pid} did not say {word!r} "
                                     f"within {timeout} s") from None
            if line is None:
                raise AssertionError(f"worker exited ({self.proc.wait()}) before {word!r}: {self.errors()}")
            if line.split()[:1] == [word]:
                return line.split()[1:]

    def send(self, text: str = "go") -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def finish(self, timeout: float = 60) -> None:
        assert self.proc.wait(timeout=timeout) == 0, self.errors()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def workers():
    started: list[Worker] = []

    def start(code: str, *args: object) -> Worker:
        started.append(Worker(code, *args))
        return started[-1]

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def log(tmp_path) -> Path:
    return tmp_path / "log.duckdb"


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def lease_is_free(path: Path, sidecar: str = ".lock") -> bool:
    """Test the flock without joining the waiters (so no holder is hurried)."""
    fd = os.open(f"{path}{sidecar}", os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def insert(conn, run: str, step: object, attempt: int = 0) -> None:
    conn.execute(INSERT, [run, str(step), attempt, os.getpid()])


def rows(path: Path, run: str | None = None) -> list[tuple]:
    db = LogDB(path, lock_timeout=20)
    with db.transaction() as conn:
        sql = "SELECT run, step FROM events" + (" WHERE run = ?" if run else "") + " ORDER BY run, attempt"
        found = conn.execute(sql, [run] if run else []).fetchall()
    db.close()
    return found


def create(path: Path) -> None:
    db = LogDB(path)
    with db.transaction():
        pass
    db.close()


def snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    """Bytes, mtime and the directory's other files (the lock sidecars excepted)."""
    ignore = {f"{path.name}.lock", f"{path.name}.wait"}
    names = sorted(p.name for p in path.parent.iterdir() if p.name not in ignore)
    return path.read_bytes(), path.stat().st_mtime_ns, names


HOLDER = """
    import os, sys
    from nbdurable.store.logdb import LogDB
    db = LogDB(sys.argv[1], linger=float(sys.argv[2]))
    with db.transaction() as conn:
        conn.execute("INSERT INTO events VALUES ('holder', '0', 0, 'test', now(), "
                     "CAST(? AS VARCHAR), NULL)", [os.getpid()])
        print("inside", os.getpid(), flush=True)
        sys.stdin.readline()
    print("committed", flush=True)
    sys.stdin.readline()
    db.close()
"""

WRITER = """
    import os, sys
    from nbdurable.store.logdb import LogDB
    path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    db = LogDB(path)
    print("ready", flush=True)
    sys.stdin.readline()
    for j in range(n):
        with db.transaction() as conn:
            conn.execute("INSERT INTO events VALUES (?, ?, ?, 'test', now(), CAST(? AS VARCHAR), NULL)",
                         [name, str(j), j, os.getpid()])
    db.close()
    print("done", flush=True)
"""


# -- one process ---------------------------------------------------------------------------------


def test_create_then_reopen(tmp_path):
    path = tmp_path / "sub" / "dir" / "log.duckdb"
    db = LogDB(path)
    assert not path.exists()  # nothing happens before first use
    with db.transaction() as conn:
        insert(conn, "r", "a")
    db.close()
    assert path.is_file()
    leftovers = [p.name for p in path.parent.iterdir() if ".tmp-" in p.name or p.name.endswith(".wal")]
    assert leftovers == []
    db2 = LogDB(str(path))
    with db2.transaction() as conn:
        assert conn.execute("SELECT run, step FROM events").fetchall() == [("r", "a")]
        meta = dict(conn.execute("SELECT key, value FROM nbdurable_meta").fetchall())
    db2.close()
    assert meta["format"] == schema.FORMAT
    assert meta["schema_version"] == str(schema.SCHEMA_VERSION)
    assert meta["created_by"].startswith("nbdurable")
    assert meta["created_at"]
    assert db2.path == path.resolve() and db2.path.is_absolute()
    assert db2.blobs.root == Path(f"{path.resolve()}.blobs")


def test_schema_present(log):
    db = LogDB(log)
    with db.transaction() as conn:
        found = conn.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'log'").fetchall()
        tables = {name for (name,) in found}
        assert conn.execute("SELECT count(*) FROM nbdurable_meta WHERE key = 'format'").fetchone() == (1,)
    db.close()
    assert tables == {m[1] for ddl in schema.DDL if (m := re.search(r"CREATE TABLE (\w+)", ddl))}


def test_commit_and_rollback(log):
    db = LogDB(log)
    with db.transaction() as conn:
        insert(conn, "kept", 1)
    with pytest.raises(ZeroDivisionError):
        with db.transaction() as conn:
            insert(conn, "lost", 1)
            raise ZeroDivisionError
    # a failed statement aborts the transaction: rolled back, and said in nbdurable's words
    with pytest.raises(LogError, match="no_such_table"):
        with db.transaction() as conn:
            insert(conn, "lost", 2)
            conn.execute("SELECT * FROM no_such_table")
    with db.transaction() as conn:
        insert(conn, "kept", 2)
    db.close()
    assert rows(log) == [("kept", "1"), ("kept", "2")]


def test_nested_transaction_joins_outer(log):
    db = LogDB(log)
    with db.transaction() as outer:
        insert(outer, "n", 1)
        with db.transaction() as inner:
            assert inner is outer
            insert(inner, "n", 2)
        assert outer.execute("SELECT count(*) FROM events").fetchone() == (2,)
    with pytest.raises(RuntimeError):
        with db.transaction() as outer:
            with db.transaction() as inner:
                insert(inner, "gone", 1)
            raise RuntimeError("outer fails after the nested block finished")
    with pytest.raises(RuntimeError):
        with db.transaction() as outer:
            insert(outer, "gone", 2)
            with db.transaction():
                raise RuntimeError("inner fails")
    db.close()
    assert rows(log) == [("n", "1"), ("n", "2")]


def test_release_and_close(log):
    db = LogDB(log, linger=30)
    with db.transaction() as conn:
        insert(conn, "r", 1)
        with pytest.raises(UsageError):
            db.release()
        with pytest.raises(UsageError):
            db.close()
    assert not lease_is_free(log)  # lingering
    db.release()
    assert lease_is_free(log)
    with db.transaction() as conn:
        insert(conn, "r", 2)
    db.close()
    db.close()  # idempotent
    assert db.closed and lease_is_free(log)
    with pytest.raises(UsageError):
        with db.transaction():
            pass
    assert len(rows(log)) == 2


def test_linger_in_process(log):
    db = LogDB(log, linger=0.3)
    with db.transaction() as conn:
        insert(conn, "r", 1)
    assert not lease_is_free(log)
    start = time.monotonic()
    assert wait_for(lambda: lease_is_free(log), timeout=10)
    assert time.monotonic() - start > 0.1
    db.close()
    zero = LogDB(log, linger=0)
    with zero.transaction() as conn:
        insert(conn, "r", 2)
    assert lease_is_free(log)
    zero.close()


def test_threads_share_one_logdb(log):
    db = LogDB(log)
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for j in range(40):
                with db.transaction() as conn:
                    insert(conn, name, j, j)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    db.close()
    assert errors == []
    assert len(set(rows(log))) == 160


def test_dropped_logdb_gives_the_lease_back(log):
    db = LogDB(log, linger=60)
    with db.transaction() as conn:
        insert(conn, "r", 1)
    assert not lease_is_free(log)
    del db, conn
    gc.collect()
    assert lease_is_free(log)
    assert rows(log) == [("r", "1")]


EXITS_LINGERING = """
    import sys
    from nbdurable.store.logdb import LogDB
    db = LogDB(sys.argv[1], linger=60)
    with db.transaction() as conn:
        conn.execute("INSERT INTO events VALUES ('exit', '0', 0, 'test', now(), CAST(0 AS VARCHAR), NULL)")
    print("lingering", flush=True)
"""


def test_interpreter_exit_detaches_a_lingering_lease(log, workers):
    worker = workers(EXITS_LINGERING, log)
    worker.expect("lingering")
    start = time.monotonic()
    worker.finish()
    assert time.monotonic() - start < 10  # the linger thread does not keep the process alive
    assert not Path(f"{log}.wal").exists()  # DETACHed (checkpointed) at exit, not just dropped
    assert rows(log) == [("exit", "0")]


def test_two_logdbs_in_one_process_name_the_cure(log):
    first, second = LogDB(log, linger=60), LogDB(log, lock_timeout=0.2)
    with first.transaction():
        with pytest.raises(LogBusyError, match="open_log"):
            with second.transaction():
                pass
    with second.transaction():  # the waiter signal made the lingering first one let go
        pass
    first.close()
    second.close()


def test_open_log_shares_one_instance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = open_log("x.duckdb")
    assert open_log(tmp_path / "x.duckdb") is a
    (tmp_path / "link").symlink_to(tmp_path)
    assert open_log(tmp_path / "link" / "x.duckdb") is a
    assert open_log(tmp_path / "y.duckdb") is not a
    a.close()
    b = open_log("x.duckdb")
    assert b is not a and not b.closed
    b.close()
    open_log(tmp_path / "y.duckdb").close()


def test_bad_arguments(tmp_path):
    with pytest.raises(UsageError):
        LogDB(tmp_path / "x", lock_timeout=-1)
    with pytest.raises(UsageError):
        LogDB(tmp_path / "x", linger=float("nan"))


# -- files that are not (usable) logs stay untouched ---------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(20_000))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _foreign_duckdb(path: Path) -> None:
    conn = duckdb.connect(str(path))
    conn.execute("CREATE TABLE t AS SELECT range AS x FROM range(100)")
    conn.close()


def _duck_magic_garbage(path: Path) -> None:
    path.write_bytes(b"\0" * 8 + b"DUCK" + os.urandom(20_000))


def _newer_schema(path: Path) -> None:
    create(path)
    conn = duckdb.connect(str(path))
    conn.execute("UPDATE nbdurable_meta SET value = ? WHERE key = 'schema_version'",
                 [str(schema.SCHEMA_VERSION + 1)])
    conn.close()


def _newer_storage(path: Path) -> None:
    """A real log whose header claims a storage version from the future (checksum kept valid)."""
    create(path)
    data = bytearray(path.read_bytes())
    k, mask = 0xBF58476D1CE4E5B9, (1 << 64) - 1  # DuckDB's header checksum: xor of word * k

    def words() -> list[int]:
        return [int.from_bytes(data[o : o + 8], "little") for o in (8, 16)]

    before = words()
    data[12:20] = (1000).to_bytes(8, "little")
    checksum = int.from_bytes(data[:8], "little")
    for old, new in zip(before, words(), strict=True):
        checksum ^= ((old * k) & mask) ^ ((new * k) & mask)
    data[:8] = checksum.to_bytes(8, "little")
    path.write_bytes(data)
    try:
        duckdb.connect(str(path), read_only=True).close()
    except duckdb.Error as e:
        if "storage version" in str(e):
            return
    pytest.skip("could not fabricate a file from a newer DuckDB storage format with this DuckDB")


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (_garbage, NotALogError, "not a DuckDB database"),
        (_empty, NotALogError, "empty file"),
        (_foreign_duckdb, NotALogError, "without an nbdurable_meta"),
        (_duck_magic_garbage, LogCorruptError, "damaged"),
        (_newer_schema, LogVersionError, "upgrade nbdurable"),
        (_newer_storage, LogVersionError, "newer DuckDB"),
    ],
    ids=["garbage", "empty", "foreign-duckdb", "duck-magic-garbage", "newer-schema", "newer-storage"],
)
def test_unusable_file_is_refused_and_untouched(log, make, error, words):
    make(log)
    time.sleep(0.01)  # a write by the code under test would then change the mtime visibly
    before = snapshot(log)
    for _ in range(2):  # refusing is not cached as success
        db = LogDB(log, lock_timeout=5)
        with pytest.raises(error) as caught:
            with db.transaction():
                pass
        db.close()
        message = str(caught.value)
        assert str(log) in message and words in message and "\n" not in message
    assert snapshot(log) == before
    assert lease_is_free(log) and lease_is_free(log, ".wait")


# -- several processes ---------------------------------------------------------------------------


def test_two_processes_300_transactions_each(log, workers):
    writers = [workers(WRITER, log, f"w{i}", 300) for i in range(2)]
    for w in writers:
        w.expect("ready")
    for w in writers:
        w.send()
    for w in writers:
        w.expect("done", timeout=90)
        w.finish()
    found = rows(log)
    assert len(found) == 600 and len(set(found)) == 600
    assert {(f"w{i}", str(j)) for i in range(2) for j in range(300)} == set(found)


def test_concurrent_creation_makes_one_log(log, workers):
    writers = [workers(WRITER, log, f"c{i}", 1) for i in range(3)]
    for w in writers:
        w.expect("ready")
    for w in writers:
        w.send()
    for w in writers:
        w.finish()
    db = LogDB(log)
    with db.transaction() as conn:
        assert conn.execute("SELECT count(*) FROM nbdurable_meta WHERE key = 'format'").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (3,)
    db.close()
    assert not [p for p in log.parent.iterdir() if ".tmp-" in p.name]


def test_busy_error_names_the_holder(log, workers):
    holder = workers(HOLDER, log, 0.05)
    (pid,) = holder.expect("inside")
    db = LogDB(log, lock_timeout=0.5)
    start = time.monotonic()
    with pytest.raises(LogBusyError) as caught:
        with db.transaction():
            pass
    waited = time.monotonic() - start
    assert 0.5 <= waited < 5
    message = str(caught.value)
    assert f"PID {pid} " in message and str(log) in message and "\n" not in message
    assert lease_is_free(log, ".wait")  # the waiter signal was withdrawn
    holder.send()
    holder.expect("committed")
    with db.transaction() as conn:  # the holder lingers 50 ms at most, and we wait for it
        assert conn.execute("SELECT run FROM events").fetchall() == [("holder",)]
    db.close()
    holder.send()
    holder.finish()


def test_linger_then_another_process_gets_the_lease(log, workers):
    holder = workers(HOLDER, log, 2.0)
    holder.expect("inside")
    holder.send()
    holder.expect("committed")
    committed = time.monotonic()
    assert not lease_is_free(log)  # still attached, lingering
    assert wait_for(lambda: lease_is_free(log), timeout=15)
    assert time.monotonic() - committed >= 1.0
    conn = duckdb.connect(str(log), read_only=True)  # detached before unlocking: DuckDB lets us in
    assert conn.execute("SELECT run FROM events").fetchall() == [("holder",)]
    conn.close()
    db = LogDB(log, lock_timeout=5)
    with db.transaction() as conn:
        insert(conn, "after", 1)
    db.close()
    holder.send()
    holder.finish()


def test_waiter_makes_a_lingering_holder_release(log, workers):
    holder = workers(HOLDER, log, 60)
    holder.expect("inside")
    holder.send()
    holder.expect("committed")
    start = time.monotonic()
    db = LogDB(log, lock_timeout=10)
    with db.transaction() as conn:
        insert(conn, "waiter", 1)
    assert time.monotonic() - start < 1.0
    db.close()
    holder.send()
    holder.finish()


BURST = """
    import os, sys, time
    from nbdurable.store.logdb import LogDB
    path, stop = sys.argv[1], sys.argv[2]
    db = LogDB(path, linger=60)  # only the waiter signal makes it let go
    n, end = 0, time.monotonic() + 5
    while time.monotonic() < end and not os.path.exists(stop):
        with db.transaction() as conn:
            conn.execute("INSERT INTO events VALUES ('burst', ?, ?, 'test', now(), "
                         "CAST(? AS VARCHAR), NULL)", [str(n), n, os.getpid()])
        n += 1
        if n == 1:
            print("looping", flush=True)
    print("count", n, int(os.path.exists(stop)), flush=True)
    db.close()
"""


def test_waiter_gets_in_while_holder_loops(log, tmp_path, workers):
    stop = tmp_path / "stop"
    holder = workers(BURST, log, stop)
    holder.expect("looping")
    time.sleep(0.1)  # let the burst run (not a synchronisation: the loop runs for seconds)
    db = LogDB(log, lock_timeout=10)
    waits = []
    for j in range(3):
        start = time.monotonic()
        with db.transaction() as conn:
            insert(conn, "waiter", j)
            waits.append(time.monotonic() - start)
        db.release()
    stop.touch()
    n, stopped_by_us = map(int, holder.expect("count"))
    holder.finish()
    db.close()
    assert stopped_by_us == 1, "the holder's burst ended before the waiter got in"
    assert max(waits) < 1.0, waits
    assert n > 10
    assert len(rows(log, "waiter")) == 3 and len(rows(log, "burst")) == n


KILLED = """
    import os, sys
    from nbdurable.store.logdb import LogDB
    db = LogDB(sys.argv[1])
    for j in range(5):
        with db.transaction() as conn:
            conn.execute("INSERT INTO events VALUES ('committed', ?, ?, 'test', now(), "
                         "CAST(? AS VARCHAR), NULL)", [str(j), j, os.getpid()])
    with db.transaction() as conn:
        conn.execute("INSERT INTO events SELECT 'uncommitted', range::VARCHAR, range, 'test', now(), "
                     "'0', NULL FROM range(50000)")
        print("inside", flush=True)
        sys.stdin.readline()
"""

CHECK = """
    import json, sys
    from nbdurable.store.logdb import LogDB
    db = LogDB(sys.argv[1], lock_timeout=10)
    with db.transaction() as conn:
        found = conn.execute("SELECT run, count(*) FROM events GROUP BY run ORDER BY run").fetchall()
        conn.execute("INSERT INTO events VALUES ('checker', '0', 0, 'test', now(), CAST(0 AS VARCHAR), NULL)")
    db.close()
    print("rows", json.dumps(found, separators=(",", ":")), flush=True)
"""


def test_sigkill_while_holding_the_lease(log, workers):
    victim = workers(KILLED, log)
    victim.expect("inside")
    assert not lease_is_free(log)
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(timeout=30)
    assert lease_is_free(log)  # a dead holder's flock dies with it
    checker = workers(CHECK, log)
    (found,) = checker.expect("rows")
    checker.finish()
    assert found == '[["committed",5]]'
    assert rows(log, "checker") == [("checker", "0")]


FOREIGN = """
    import os, sys, duckdb
    conn = duckdb.connect(sys.argv[1])
    print("open", os.getpid(), flush=True)
    sys.stdin.readline()
"""


def test_foreign_duckdb_connection_is_named(log, workers):
    create(log)
    foreign = workers(FOREIGN, log)
    (pid,) = foreign.expect("open")
    db = LogDB(log, lock_timeout=0.5)
    with pytest.raises(LogBusyError, match=f"PID {pid} "):
        with db.transaction():
            pass
    foreign.send()
    foreign.finish()
    with db.transaction() as conn:
        insert(conn, "after", 1)
    db.close()


def _fork_child(db: LogDB, parent_pid: int) -> None:
    assert os.getpid() != parent_pid
    assert open_log(db.path) is not _PARENT_SHARED[0]
    for j in range(10):
        with db.transaction() as conn:
            insert(conn, "child", j, j)
    db.close()


_PARENT_SHARED: list[LogDB] = []


# The fork is the point of the test (users fork after using nbdurable: multiprocessing's "fork"
# start method); Python 3.12+ warns on every fork of a process with threads, as this one has.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_uses_its_own_lease(log):
    db = LogDB(log, linger=30)
    _PARENT_SHARED[:] = [open_log(log)]
    with db.transaction() as conn:
        insert(conn, "parent", 0)
    assert not lease_is_free(log)  # lingering when we fork: the fork hook gives the lease back
    child = multiprocessing.get_context("fork").Process(target=_fork_child, args=(db, os.getpid()))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    with db.transaction() as conn:  # the parent's LogDB still works
        insert(conn, "parent", 1, 1)
    db.close()
    _PARENT_SHARED[0].close()
    assert [r for r in rows(log) if r[0] == "parent"] == [("parent", "0"), ("parent", "1")]
    assert len(rows(log, "child")) == 10


def _spawn_child(path: str, name: str) -> None:
    db = open_log(path)
    for j in range(20):
        with db.transaction() as conn:
            insert(conn, name, j, j)
    db.close()


def test_spawned_processes_and_parent_write_together(log):
    ctx = multiprocessing.get_context("spawn")
    children = [ctx.Process(target=_spawn_child, args=(str(log), f"s{i}")) for i in range(2)]
    for child in children:
        child.start()
    db = LogDB(log)
    for j in range(20):
        with db.transaction() as conn:
            insert(conn, "parent", j, j)
    db.close()
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert len(set(rows(log))) == 60


def test_an_interrupt_during_a_query_is_a_keyboard_interrupt(tmp_path):
    """SIGINT (Kernel -> Interrupt) while DuckDB runs a query: DuckDB raises an error of its
    own; the log turns it into the KeyboardInterrupt users expect, and the log stays usable."""
    script = textwrap.dedent(f"""
        import sys, threading, time
        from nbdurable.store.logdb import open_log
        log = open_log({str(tmp_path / 'log.duckdb')!r})
        main = threading.main_thread().ident
        QUERY_LINE = None

        def announce():  # once the main thread is inside DuckDB's execute (C code)
            while True:
                frame = sys._current_frames()[main]
                if frame.f_code.co_name == "<module>" and frame.f_lineno == QUERY_LINE:
                    print("querying", flush=True)
                    return
                time.sleep(0.001)

        threading.Thread(target=announce, daemon=True).start()
        try:
            with log.lease() as con:
                QUERY_LINE = sys._getframe().f_lineno + 1
                con.execute("SELECT sum(range) FROM range(100000000000)").fetchall()
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
        except BaseException as exc:
            print(type(exc).__name__, exc, flush=True)
        print(log.execute("SELECT count(*) FROM events", announce=False))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "querying"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never leave a query of minutes running
        proc.wait()
    assert out.splitlines() == ["KeyboardInterrupt", "[(0,)]"]


def test_interrupts_at_any_moment_never_leave_the_log_attached_behind_our_back(log):
    """Kernel -> Interrupt can land anywhere, also between DuckDB attaching the file and the
    lease noting it; the log must stay usable after every one of them."""
    db = LogDB(log, linger=0)  # attach and detach at every transaction: the risky moments
    with db.transaction() as conn:
        insert(conn, "r", "first")
    stop = threading.Event()

    def interrupter():
        while not stop.is_set():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(random.uniform(0, 0.04))

    armed = [False]

    def handler(signum, frame):  # raises at most once per transaction, inside the `try`
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    thread = threading.Thread(target=interrupter)
    interrupted = done = 0
    deadline = time.monotonic() + 30  # enough of both, however loaded the machine is
    try:
        thread.start()
        while time.monotonic() < deadline and min(done, interrupted) < 60:
            try:
                armed[0] = True
                with db.transaction() as conn:
                    insert(conn, "r", done)
                armed[0] = False
                done += 1
            except KeyboardInterrupt:
                interrupted += 1
    finally:
        armed[0] = False
        stop.set()
        thread.join()
        signal.signal(signal.SIGINT, previous)
    with db.transaction() as conn:  # still usable
        insert(conn, "r", "last")
    db.close()
    assert interrupted >= 5 and done >= 5
    steps = [r[1] for r in rows(log, "r")]
    # each transaction reported done is there; one interrupted may have committed just before
    assert {"first", "last", *map(str, range(done))} <= set(steps)
    assert len(steps) <= done + interrupted + 2
