"""Pushes without the lease (the spool): a push to a known run needs no lease, so busy pushers
never keep a waiting kernel from its mailbox. Real DuckDB files, a real second process holding
the log with plain `duckdb`, real pushing processes, a real kernel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from foreign import held
from kernels import Kernel, wait_for_file

import nbdurable
import nbdurable.store.logdb
from nbdurable import settings
from nbdurable.errors import UnknownRunError
from nbdurable.store import journal, records, schema, spool

TIMEOUT = 60


@pytest.fixture
def log(run_log):
    return run_log


def push_elsewhere(log: Path, *args: str, run: str = "r1") -> subprocess.CompletedProcess:
    """``nbdurable event push`` in another process, giving up on the lease after 1 s."""
    env = {"PATH": "/usr/bin:/bin", "NBDURABLE_LOCK_TIMEOUT": "1"}
    return subprocess.run([sys.executable, "-m", "nbdurable.cli", "event", "push", run, *args,
                           "--log", str(log)], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT)


def spooled(log: Path) -> list[Path]:
    return spool.pending(log)


def payloads() -> list:
    return [__import__("json").loads(p) for p in nbdurable.list_events()["payload"]]


def test_pushes_to_a_known_run_need_no_lease_and_keep_their_order(log):
    nbdurable.push_event("k", 0)  # the first push checks the run under the lease
    with held(log):
        for i in (1, 2, 3):
            out = push_elsewhere(log, "k", str(i))
            assert out.returncode == 0, out.stderr  # would be "in use by another program"
        assert len(spooled(log)) == 3
        refused = push_elsewhere(log, "k", "4", "--id", "explicit")
        assert refused.returncode == 2 and "outside nbdurable" in refused.stderr  # an id: the lease
    assert payloads() == [0, 1, 2, 3]
    assert spooled(log) == []  # moved into the log by the process that opened it
    assert list(nbdurable.list_events()["status"]) == ["pending"] * 4


def test_a_push_moved_into_the_log_twice_is_one_event(log, tmp_path):
    nbdurable.push_event("k", "first")
    with held(log):
        assert push_elsewhere(log, "k", '"again"').returncode == 0
    [path] = spooled(log)
    copy = shutil.copy(path, tmp_path / "copy")
    assert payloads() == ["first", "again"]
    shutil.copy(copy, path)  # as if the process crashed between the commit and the delete
    assert payloads() == ["first", "again"]
    assert spooled(log) == []


def test_an_unknown_run_is_refused_and_nothing_is_spooled(log):
    nbdurable.push_event("k", 1)
    with pytest.raises(UnknownRunError):
        nbdurable.push_event("k", 1, run="no-such-run")
    out = push_elsewhere(log, "k", "1", run="no-such-run")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert spooled(log) == []


def forged(log: Path, row: list, name: str) -> Path:
    path = spool.folder(log) / f"{name}{spool.SUFFIX}"
    path.write_bytes(journal.encode(row))
    return path


@pytest.mark.parametrize("damage", ["flipped byte", "unknown run", "not a push", "cut short"])
def test_a_damaged_or_forged_spooled_push_is_set_aside(log, damage):
    nbdurable.push_event("k", "good-1")
    nbdurable.push_event("k", "victim")
    [victim] = spooled(log)
    body = '{"id": "x", "key": "k", "payload": 1}'
    if damage == "flipped byte":
        data = bytearray(victim.read_bytes())
        data[20] ^= 0x01
        victim.write_bytes(bytes(data))
    elif damage == "unknown run":
        forged(log, ["other", None, None, schema.Kind.EVENT_PUSHED, records.now(), body, None],
               victim.stem)
    elif damage == "not a push":  # a forged checkpoint must never enter the log this way
        forged(log, ["r1", "s", 1, schema.Kind.ATTEMPT_FINISHED, records.now(),
                     '{"status": "completed"}', None], victim.stem)
    else:
        victim.write_bytes(victim.read_bytes()[:30])
    nbdurable.push_event("k", "good-2")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert payloads() == ["good-1", "good-2"]
    assert any("push the event again" in str(w.message) for w in said), [str(w.message)
                                                                         for w in said]
    assert len(list((spool.folder(log) / "quarantine").glob("*.bad"))) == 1
    assert spooled(log) == []
    assert nbdurable.history()["step"].tolist().count("s") == 0


def test_something_unreadable_in_the_spool_is_left_alone(log):
    nbdurable.push_event("k", 1)
    (spool.folder(log) / f"{'0' * 20}-odd{spool.SUFFIX}").mkdir(parents=True)  # not a file
    nbdurable.push_event("k", 2)
    assert payloads() == [1, 2]


def test_a_waiting_kernel_takes_pushes_spooled_while_the_log_was_held(tmp_path):
    """Two of three pushes are spooled while another program holds the log; the waiting cell
    gets all three in order once it is free, and a new kernel replays the same payloads."""
    started, log = tmp_path / "started", tmp_path / "log.duckdb"
    cell = textwrap.dedent(f"""
        %%durable three
        import nbdurable, pathlib
        pathlib.Path({str(started)!r}).touch()
        got = [nbdurable.wait_for_event("go") for _ in range(3)]
        print("got", got)
    """).strip()
    with Kernel(tmp_path) as k:
        k.execute("%load_ext nbdurable")
        k.execute("%%durable setup\nx = 1")
        msg_id = k.send(cell)
        wait_for_file(started)
        assert push_elsewhere(log, "go", "1", run="test-run").returncode == 0
        with held(log):
            for i in (2, 3):
                out = push_elsewhere(log, "go", str(i), run="test-run")
                assert out.returncode == 0, out.stderr
        assert k.reply_to(msg_id)["content"]["status"] == "ok"
        assert k.execute("print(got)").stream() == "[1, 2, 3]\n"
    with Kernel(tmp_path) as k:
        k.execute("%load_ext nbdurable")
        r = k.execute(cell)
        assert r.notices()[0]["kind"] == "replayed"
        assert "got [1, 2, 3]" in r.stream()


def test_gc_removes_what_dead_pushers_left_and_old_quarantine(log):
    nbdurable.push_event("k", 1)
    nbdurable.push_event("k", 2)
    [kept] = spooled(log)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    left = spool.folder(log) / f".tmp-{dead}-0001-abcd"  # a pusher killed before its rename
    left.write_bytes(b"half a push")
    mine = spool.folder(log) / f".tmp-{os.getpid()}-0002-abcd"  # a live pusher's, in progress
    mine.write_bytes(b"a push being written")
    old = spool.folder(log) / "quarantine" / "old.bad"
    old.parent.mkdir()
    old.write_bytes(b"z")
    long_ago = time.time() - 40 * 86400
    os.utime(old, (long_ago, long_ago))
    result = nbdurable.gc()
    assert result.temporary == [str(left)] and result.quarantine == [str(old)]
    assert mine.exists() and not left.exists() and not old.exists()
    assert not kept.exists() and payloads() == [1, 2]  # gc took the lease: the push is in


def test_a_log_created_anew_at_the_same_path_knows_no_run(log):
    nbdurable.push_event("k", 1)
    assert spool.known(log, "r1")
    nbdurable.store.logdb.open_log(log).close()
    for path in log.parent.glob("log.duckdb*"):
        if path.is_file() and path.suffix != ".spool":
            path.unlink()
    settings.reset()
    with pytest.raises(UnknownRunError):  # the new log has no run r1: checked under the lease
        nbdurable.push_event("k", 2, log=log)
    assert spooled(log) == []
