"""Attempts in flight (journals), the write generation and the run index snapshots."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from nbdurable import journal, records
from nbdurable.logdb import LogDB
from kernels import Kernel

LOAD = "%load_ext nbdurable"


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _started(run="r", step="s", attempt=1):
    a = records.Attempt(run, step, attempt, "running", "h", {"x": "h:1"}, records.now())
    return records.attempt_started(a, source="x = 1", forced=False, reason=None)[1]


def test_journal_holds_events_until_they_are_in_the_log(tmp_path):
    db = LogDB(tmp_path / "log.duckdb")
    j = journal.Journal(db)
    started = _started()
    j.append([started])
    assert [r[:4] for r in j.rows()] == [["r", "s", 1, "attempt_started"]]
    assert [r[:4] for r in journal.live_rows(db.path, "r")] == [["r", "s", 1, "attempt_started"]]
    upto = j.append([["r", "s", 1, "attempt_finished", records.now(), json.dumps({
        "status": "failed", "duration_s": 0.1, "variables": [], "outputs": None,
        "unstorable": {}, "error": None}), b"\x00bin"]], sync=True)
    j.submit([started, j.rows()[1]], upto)
    wait_for(lambda: j.path.read_bytes() == b"", what="the journal to empty")
    with db.lease() as con:
        attempts = records.run_attempts(con, "r")
        data = con.execute("SELECT data FROM events WHERE kind = 'attempt_finished'").fetchone()
    assert [(a.step, a.status) for a in attempts] == [("s", "failed")]
    assert data == (b"\x00bin",)
    j.close()
    assert not j.path.exists()
    db.close()


def test_a_dead_process_journal_is_moved_into_the_log(tmp_path):
    log_path = tmp_path / "log.duckdb"
    code = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from nbdurable import journal, records
        from nbdurable.logdb import LogDB
        a = records.Attempt("r", "crashy", 1, "running", "h", {{}}, records.now())
        j = journal.Journal(LogDB(Path({str(log_path)!r})))
        j.append([records.attempt_started(a, source="boom", forced=False, reason=None)[1]])
        print("started", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == -9 and out.stdout == "started\n", out.stderr
    assert journal.has_dead(log_path)
    db = LogDB(log_path)
    with db.lease() as con:
        assert journal.recover(con, log_path) is True
        assert journal.recover(con, log_path) is False
        attempts = records.run_attempts(con, "r")
    db.close()
    assert [(a.step, a.attempt, a.status) for a in attempts] == [("crashy", 1, "running")]
    assert not journal.has_dead(log_path)
    assert list((tmp_path / "log.duckdb.journal").glob("*.jsonl")) == []


def test_writes_announce_a_new_generation_unless_told_not_to(tmp_path):
    db = LogDB(tmp_path / "log.duckdb")
    with db.lease():
        pass
    g0 = db.generation()
    db.execute(*records.replayed("r", "s", 1))
    g1 = db.generation()
    db.execute(*records.replayed("r", "s", 2), announce=False)
    with db.transaction(announce=False) as con:
        con.execute(*records.replayed("r", "s", 3))
    assert g1 == g0 + 1 and db.generation() == g1
    with db.transaction() as con:
        con.execute("SELECT 1")
    assert db.generation() == g1 + 1
    db.close()


def test_deferred_rows_are_written_soon_by_a_process_not_using_the_log(tmp_path):
    path = tmp_path / "log.duckdb"
    LogDB(path).close()  # create it
    db = LogDB(path)
    db.defer(*records.replayed("r", "deferred", 1))
    reader = LogDB(path)

    def written():
        with reader.lease() as con:
            return con.execute("SELECT count(*) FROM events WHERE step = 'deferred'").fetchone()[0]

    wait_for(lambda: written() == 1, what="the deferred row")
    db.close()
    reader.close()


def test_a_restarted_kernel_replays_without_opening_duckdb(tmp_path):
    cells = ["%%durable a\nx = [1, 2, 3]\nprint(len(x))", "%%durable b\ny = sum(x)\ny"]
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        assert all(k.execute(c).status == "ok" for c in cells)
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        replies = [k.execute(c) for c in cells]
        assert [r.notices()[0]["kind"] for r in replies] == ["replayed", "replayed"]
        assert replies[1].result["data"]["text/plain"] == "6"
        assert k.execute("import sys\nprint('duckdb' in sys.modules)").stream() == "False\n"


def test_a_snapshot_is_not_used_when_another_process_wrote_meanwhile(tmp_path):
    counter = tmp_path / "count"
    cell = f"%%durable a\nopen({str(counter)!r}, 'a').write('x\\n')\nx = 1"
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(cell)
    # another process forces the step again: its new attempt must be seen, not the snapshot's
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(cell.replace("%%durable a", "%%durable a --force").replace("x = 1", "x = 2"))
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        r = k.execute(cell)
        assert r.notices()[0]["reason"] == "source edited"
        assert k.execute("print(x)").stream() == "1\n"
    assert len(counter.read_text().splitlines()) == 3
