"""Attempts in flight (journals), the write generation and the run index snapshots."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from kernels import Kernel

from nbdurable.store import journal, records
from nbdurable.store.logdb import LogDB

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


def _attempt_rows(prefix: str, n: int) -> list[list]:
    rows = []
    for i in range(n):
        rows.append(_started(step=f"{prefix}{i}"))
        rows.append(["r", f"{prefix}{i}", 1, "attempt_finished", records.now(), json.dumps({
            "status": "completed", "duration_s": 0.1, "variables": [], "outputs": None,
            "unstorable": {}, "error": None}), None])
    return rows


@pytest.mark.parametrize("attempts", [2, 300])  # 2: VALUES; 300: 600 rows, as columns
def test_moving_rows_in_keeps_their_order_and_skips_those_already_there(tmp_path, attempts):
    """A dead journal's rows go in through one staged anti-join: an attempt's start must stay
    before its outcome (DuckDB's join alone reordered a few rows into a log holding more, in
    about half of the tries), and rows already in the log stay once."""
    for trial in range(5):
        db = LogDB(tmp_path / f"log{trial}.duckdb")
        db.execute(*records.combine_rows(_attempt_rows("earlier", 50)))
        rows = _attempt_rows("s", attempts)
        db.execute(*records.combine_rows(rows[:1]))  # one was in before the process died
        with db.transaction() as con:
            journal.insert_missing(con, rows + rows[:1])
        with db.lease() as con:
            stored = con.execute("SELECT step, kind, ts FROM events WHERE step LIKE 's%'"
                                 " ORDER BY rowid").fetchall()
        assert stored == [(r[1], r[3], r[4]) for r in rows]
        db.close()


@pytest.mark.parametrize("n", [5, 100])  # below and above the columnar threshold
def test_rows_inserted_as_columns_or_values_come_back_exactly(tmp_path, n):
    """NULLs in every nullable column, text beyond ASCII, bytes with zeros, microseconds."""
    rows = [["r\u00e9", None if i % 3 == 0 else f"s{i}", None if i % 5 == 0 else i,
             "child_finished", records.now(), json.dumps({"k": "\u2713" * i}),
             None if i % 2 else b"\x00\xff" * i] for i in range(n)]
    db = LogDB(tmp_path / "log.duckdb")
    with db.transaction() as con:
        records.insert_rows(con, rows)
        records.insert_rows(con, [])
    with db.lease() as con:
        stored = con.execute("SELECT * FROM events ORDER BY rowid").fetchall()
    db.close()
    assert stored == [tuple(r) for r in rows]


def test_a_dead_process_journal_is_moved_into_the_log(tmp_path):
    log_path = tmp_path / "log.duckdb"
    code = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from nbdurable.store import journal, records
        from nbdurable.store.logdb import LogDB
        a = records.Attempt("r", "crashy", 1, "running", "h", {{}}, records.now())
        j = journal.Journal(LogDB(Path({str(log_path)!r})))
        j.append([records.attempt_started(a, source="boom", forced=False, reason=None)[1]])
        print("started", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == -9 and out.stdout == "started\n", out.stderr
    assert journal.look(log_path).dead_rows()
    db = LogDB(log_path)
    with db.lease() as con:
        assert journal.gather(con, log_path) == (True, [])
        assert journal.gather(con, log_path) == (False, [])
        attempts = records.run_attempts(con, "r")
    db.close()
    assert [(a.step, a.attempt, a.status) for a in attempts] == [("crashy", 1, "running")]
    assert not journal.look(log_path).dead_rows()
    assert list((tmp_path / "log.duckdb.journal").glob("*.jsonl")) == []


def test_a_dead_process_journal_is_found_dead_on_a_host_whose_name_has_a_dash(tmp_path,
                                                                             monkeypatch):
    """Journal file names carry the host as a token ("-" is their separator): a host named like
    JupyterHub's ``jupyter-alice`` must still see its own dead processes' journals as dead."""
    from nbdurable import processes

    monkeypatch.setattr(processes, "HOST", "jupyter-alice")
    monkeypatch.setattr(processes, "HOST_TOKEN", "jupyter_alice")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = processes.start_time(child.pid)
    child.kill()
    child.wait()
    directory = tmp_path / "log.duckdb.journal"
    directory.mkdir()
    dead = directory / f"jupyter_alice-{child.pid}-{started}.jsonl"
    dead.write_bytes(b"")
    other = directory / f"elsewhere-{child.pid}-{started}.jsonl"  # another machine: unknown
    other.write_bytes(b"")
    seen = journal.look(tmp_path / "log.duckdb")
    assert seen.dead == [dead]


def test_a_process_that_dies_while_the_journals_are_read_loses_nothing(tmp_path, monkeypatch):
    """The journal's owner is SIGKILLed right after its liveness was judged (as a resumed
    kernel may see an orphan that is being ended): its rows are pending, then recovered; judged
    twice, they were once in neither list and a completed cell ran again."""
    from nbdurable.processes import ProcessId

    log_path = tmp_path / "log.duckdb"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from nbdurable.store import journal, records
        from nbdurable.store.logdb import LogDB
        a = records.Attempt("r", "one", 1, "running", "h", {{}}, records.now())
        j = journal.Journal(LogDB(Path({str(log_path)!r})))
        j.append([records.attempt_started(a, source="x", forced=False, reason=None)[1]],
                 sync=True)
        print("written", flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline() == "written\n"
    judged = ProcessId.alive

    def judged_then_killed(self):
        answer = judged(self)
        if self.pid == owner.pid and owner.poll() is None:
            owner.kill()
            owner.wait(timeout=60)
        return answer

    monkeypatch.setattr(ProcessId, "alive", judged_then_killed)
    db = LogDB(log_path)
    with db.lease() as con:
        wrote, live = journal.gather(con, log_path, "r")
        assert not wrote and [row[1] for row in live] == ["one"]  # seen alive: pending
        assert journal.gather(con, log_path, "r") == (True, [])  # now dead: moved in
        attempts = records.run_attempts(con, "r")
    db.close()
    assert [(a.step, a.status) for a in attempts] == [("one", "running")]


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
