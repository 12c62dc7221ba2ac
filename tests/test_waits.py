"""Durable waits and events: real log files, real processes, real kernels."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from kernels import Kernel, approval_cell, count, wait_for_file

import nbdurable
from nbdurable import settings
from nbdurable.errors import UnknownRunError, UsageError, WaitTimeout

LOAD = "%load_ext nbdurable"


@pytest.fixture
def log(run_log):
    return run_log


def cli(*args, stdin=None, log=None):
    cmd = [sys.executable, "-m", "nbdurable.cli", *args] + (["--log", str(log)] if log else [])
    return subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=120)


# -- without a kernel -------------------------------------------------------------------------

def test_an_event_pushed_before_the_wait_is_kept(log):
    nbdurable.push_event("early", {"n": 1})
    assert nbdurable.wait_for_event("early") == {"n": 1}
    frame = nbdurable.list_events()
    assert frame[["key", "status"]].values.tolist() == [["early", "consumed"]]


def test_each_event_is_consumed_once_oldest_first(log):
    for i in range(3):
        nbdurable.push_event("k", i)
    assert [nbdurable.wait_for_event("k") for _ in range(3)] == [0, 1, 2]
    with pytest.raises(WaitTimeout):
        nbdurable.wait_for_event("k", timeout=0.05)


def test_a_log_replaced_at_the_same_path_is_read_from_its_start(log):
    """A consumer remembers where its mailbox's unconsumed events begin; a new log file at the
    same path (deleted and created again) must not hide its events below that place."""
    import shutil

    from nbdurable.store.logdb import open_log

    for i in range(6):
        nbdurable.push_event("k", i)
    assert [nbdurable.wait_for_event("k") for _ in range(6)] == list(range(6))
    open_log(log).close()
    for path in log.parent.glob("log.duckdb*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    settings.reset()
    nbdurable.once("create-the-run", lambda: None)
    nbdurable.push_event("k", "new log")
    assert nbdurable.wait_for_event("k", timeout=10) == "new log"


def test_wait_any_reports_which_condition_fired(log):
    r = nbdurable.wait_any(nbdurable.Event("never"), nbdurable.Sleep(0.05))
    assert (r.index, r.condition, r.payload) == (1, nbdurable.Sleep(0.05), None)
    nbdurable.push_event("yes", "payload")
    r = nbdurable.wait_any(nbdurable.Sleep(30), nbdurable.Event("yes"))
    assert (r.index, r.condition.key, r.payload) == (1, "yes", "payload")


def test_wait_all_needs_every_condition(log):
    nbdurable.push_event("a", 1)
    t = time.monotonic()
    with pytest.raises(WaitTimeout):
        nbdurable.wait_for_event("zzz", timeout=0.01)
    nbdurable.push_event("b", 2)
    assert nbdurable.wait_all(nbdurable.Event("a"), nbdurable.Sleep(0.1),
                              nbdurable.Event("b")) == [1, None, 2]
    assert time.monotonic() - t >= 0.1


def test_idempotent_push_and_bad_input(log):
    assert nbdurable.push_event("k", id="retry-1") == "retry-1"
    assert nbdurable.push_event("k", id="retry-1") == "retry-1"
    assert len(nbdurable.list_events()) == 1
    with pytest.raises(UsageError, match="JSON"):
        nbdurable.push_event("k", object())
    with pytest.raises(UsageError, match="JSON"):
        nbdurable.push_event("k", float("nan"))
    with pytest.raises(UnknownRunError, match="not in the log"):
        nbdurable.push_event("k", run="no-such-run")
    with pytest.raises(UsageError):
        nbdurable.Sleep(-1)
    with pytest.raises(UsageError):
        nbdurable.wait_any("not a condition")
    with pytest.raises(UsageError, match="was already pushed"):
        nbdurable.push_event("other-key", id="retry-1")  # an id names one event
    with pytest.raises(UsageError, match="100 years"):
        nbdurable.Sleep(1e12)
    with pytest.raises(UsageError, match="JSON"):
        deep = []
        for _ in range(100_000):
            deep = [deep]
        nbdurable.push_event("k", deep)
    assert len(nbdurable.list_events()) == 1  # nothing changed


def test_text_that_is_not_unicode_is_refused_and_the_mailbox_stays_usable(log):
    """A lone surrogate would make DuckDB's JSON functions fail on every later query of the
    run's mailbox: refused at the door."""
    with pytest.raises(UsageError, match="not valid Unicode"):
        nbdurable.push_event("k", "bad \ud800")
    with pytest.raises(UsageError, match="valid Unicode"):
        nbdurable.push_event("\udfff")
    with pytest.raises(UsageError, match="valid Unicode"):
        nbdurable.push_event("k", id="\ud800")
    out = cli("event", "push", "r1", "k", '"\\ud800"', log=log)
    assert out.returncode == 2 and "not valid Unicode" in out.stderr
    nbdurable.push_event("k", "fine ✓")
    assert nbdurable.wait_for_event("k") == "fine ✓"


def test_a_wait_outside_a_cell_needs_a_known_run(log, monkeypatch):
    monkeypatch.setenv("NBDURABLE_RUN", "ghost")
    with pytest.raises(UnknownRunError, match="'ghost' is not in the log") as unknown:
        nbdurable.sleep(0)
    assert unknown.value.run == "ghost" and "r1" in unknown.value.known
    monkeypatch.setenv("NBDURABLE_RUN", "r1")
    assert "ghost" not in set(nbdurable.runs()["run"])


def test_wait_all_after_its_sleep_passed_polls_instead_of_spinning(log, monkeypatch):
    """The sleep of wait_all(Sleep, Event) passes first; waiting on for the event must cost
    what any wait costs (a look at the mailbox when something changed), not a transaction per
    loop (it was ~400 per second)."""
    import threading

    from nbdurable.engine import waits

    looks = []
    real = waits.Wait.try_complete
    monkeypatch.setattr(waits.Wait, "try_complete",
                        lambda self: looks.append(1) or real(self))

    def push_later():
        time.sleep(1.0)  # the scenario: the event comes 0.9 s after the sleep passed
        nbdurable.push_event("late", 1)

    pusher = threading.Thread(target=push_later)
    pusher.start()
    assert nbdurable.wait_all(nbdurable.Sleep(0.1), nbdurable.Event("late")) == [None, 1]
    pusher.join()
    assert len(looks) <= 5, len(looks)  # first look, sleep passed, the push (+ slack)


def test_cli_push_and_list(log):
    out = cli("event", "push", "r1", "go", '{"ok": true}', log=log)
    assert out.returncode == 0, out.stderr
    event_id = out.stdout.strip()
    out = cli("event", "push", "r1", "go", "-", stdin='"from stdin"', log=log)
    assert out.returncode == 0, out.stderr
    assert nbdurable.wait_for_event("go") == {"ok": True}
    listed = cli("event", "list", "r1", "--json", log=log)
    rows = json.loads(listed.stdout)
    assert [(r["id"] == event_id, r["status"]) for r in rows] == [(True, "consumed"),
                                                                   (False, "pending")]
    assert json.loads(rows[1]["payload"]) == "from stdin"


@pytest.mark.parametrize("args, message", [
    (["event", "push", "r1", "k", "{not json"], "not valid JSON"),
    (["event", "push", "unknown", "k"], "is not in the log"),
    (["event", "list", "unknown"], "is not in the log"),
])
def test_cli_bad_input_is_one_line_and_changes_nothing(log, args, message):
    before = len(nbdurable.list_events())
    out = cli(*args, log=log)
    assert out.returncode != 0
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert len(nbdurable.list_events()) == before


def test_cli_malformed_command(log):
    out = cli("event", "push", log=log)
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_many_processes_push_concurrently_none_lost_none_doubled(log, tmp_path):
    n_procs, per_proc = 4, 30
    script = textwrap.dedent(f"""
        import sys, nbdurable
        for i in range({per_proc}):
            nbdurable.push_event("job", {{"proc": int(sys.argv[1]), "i": i}})
            if i % 10 == 0:  # a retried push must not add an event
                nbdurable.push_event("job", {{"proc": int(sys.argv[1]), "i": i}},
                                     id=f"retry-{{sys.argv[1]}}-{{i}}")
                nbdurable.push_event("job", {{"proc": int(sys.argv[1]), "i": i}},
                                     id=f"retry-{{sys.argv[1]}}-{{i}}")
    """)
    env = {"NBDURABLE_LOG": str(log), "NBDURABLE_RUN": "r1", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(p)], env=env)
             for p in range(n_procs)]
    expected = n_procs * (per_proc + 3)
    got = [nbdurable.wait_for_event("job", timeout=120) for _ in range(expected)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    with pytest.raises(WaitTimeout):
        nbdurable.wait_for_event("job", timeout=0.2)
    pairs = [(g["proc"], g["i"]) for g in got]
    assert sorted(set(pairs)) == sorted((p, i) for p in range(n_procs) for i in range(per_proc))
    assert len(pairs) == expected  # the 3 retried ids per process are 3 extra events, once each


# -- in a kernel ------------------------------------------------------------------------------

def test_event_from_the_cli_releases_a_waiting_cell_then_replays(tmp_path, ipykernel_python):
    counter = tmp_path / "count"
    cell = approval_cell(counter)
    log = tmp_path / "log.duckdb"
    with Kernel(tmp_path, python=ipykernel_python) as k:
        k.execute(LOAD)
        k.execute("%%durable setup\nx = 1")
        msg_id = k.send(cell)
        wait_for_file(counter)
        out = cli("event", "push", "test-run", "approve", '{"by": "ann"}', log=log)
        assert out.returncode == 0, out.stderr
        reply = k.kc.get_shell_msg(timeout=60)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "ok"
    with Kernel(tmp_path, python=ipykernel_python) as k:
        k.execute(LOAD)
        t = time.monotonic()
        r = k.execute(cell)
        assert time.monotonic() - t < 10
        assert r.notices()[0]["kind"] == "replayed"
        assert "got {'by': 'ann'}" in r.stream()
        assert k.execute("print(answer)").stream() == "{'by': 'ann'}\n"
    assert count(counter) == 1


def test_pushes_while_the_kernel_is_idle_or_running_another_cell(tmp_path):
    """The log is shared: a push lands while the kernel is idle and while it runs a long cell
    (which holds no lease), and the later waits get those events at once."""
    started = tmp_path / "started"
    log = tmp_path / "log.duckdb"
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute("%%durable setup\nx = 1")
        out = cli("event", "push", "test-run", "a", '"while idle"', log=log)
        assert out.returncode == 0, out.stderr
        busy = k.send(f"%%durable busy\nimport pathlib, time\n"
                            f"pathlib.Path({str(started)!r}).touch()\n"
                            f"while not pathlib.Path({str(tmp_path / 'go')!r}).exists():\n"
                            "    time.sleep(0.05)")
        wait_for_file(started)
        out = cli("event", "push", "test-run", "b", '"while running"', log=log)
        assert out.returncode == 0, out.stderr
        (tmp_path / "go").touch()
        assert k.reply_to(busy)["content"]["status"] == "ok"
        r = k.execute("%%durable w\nimport nbdurable\n"
                      "print(nbdurable.wait_all(nbdurable.Event('a'), nbdurable.Event('b')))")
        assert r.stream().endswith("['while idle', 'while running']\n"), r.stream()


def test_a_crash_after_the_wait_returns_the_recorded_payload(tmp_path):
    marker = tmp_path / "crashed"
    cell = textwrap.dedent(f"""
        %%durable approve-then-crash
        import nbdurable, os, signal, pathlib
        answer = nbdurable.wait_for_event("go")
        if not pathlib.Path({str(marker)!r}).exists():
            pathlib.Path({str(marker)!r}).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        print("answer", answer)
    """).strip()
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute("%%durable setup\nx = 1")
        nb_push = "import nbdurable; nbdurable.push_event('go', 41)"
        k.execute(nb_push)
        k.execute_until_death(cell)
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        r = k.execute(cell)  # re-executes (the kernel died), the wait returns its record
        assert r.status == "ok", r.traceback
        assert "answer 41" in r.stream()
        events = k.execute("import nbdurable\nprint(nbdurable.list_events()['status'].tolist())")
        assert events.stream() == "['consumed']\n"


def test_a_durable_sleep_keeps_its_deadline_across_sigkill(tmp_path):
    started = tmp_path / "started"
    cell = textwrap.dedent(f"""
        %%durable nap
        import nbdurable, pathlib, time
        pathlib.Path({str(started)!r}).touch()
        t0 = time.monotonic()
        nbdurable.sleep(6)
        slept = time.monotonic() - t0
    """).strip()
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.send(cell)
        wait_for_file(started)
        time.sleep(3)  # let 3 s of the 6 s sleep pass before the kill
        k.sigkill()
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        r = k.execute(cell)
        assert r.status == "ok", r.traceback
        slept = float(k.execute("print(slept)").stream())
    assert 1.0 < slept < 4.5  # only what was left of the recorded deadline


def test_a_different_wait_at_the_same_point_is_an_error(tmp_path):
    cell = ("%%durable w\nimport nbdurable, pathlib\n"
            "key = pathlib.Path('which').read_text()\n"
            "r = nbdurable.wait_any(nbdurable.Event(key), nbdurable.Sleep(0.05))\n"
            "import os, signal\nos.kill(os.getpid(), signal.SIGKILL) if key == 'a' else None")
    (tmp_path / "which").write_text("a")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute_until_death(cell)
    (tmp_path / "which").write_text("b")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        r = k.execute(cell)
        # the same, as fields for a program (IPython keeps the last error in sys.last_value)
        fields = k.execute("import json, sys\ne = sys.last_value\nprint(json.dumps([e.step, e.wait, "
                           "e.recorded['conditions'], e.reached['conditions']]))").stream()
    assert r.ename == "WaitMismatchError"
    assert "event `b`" in r.evalue and "event `a`" in r.evalue and len(r.traceback) == 1
    assert json.loads(fields) == ["w", "wait#0", [["event", "a"], ["sleep", 0.05]],
                                  [["event", "b"], ["sleep", 0.05]]]


def test_timeout_in_a_cell_is_recorded(tmp_path):
    cell = ("%%durable t\nimport nbdurable\ntry:\n    nbdurable.wait_for_event('x', timeout=0.2)\n"
            "except nbdurable.WaitTimeout as e:\n    outcome = str(e)")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        r = k.execute(cell)
        assert r.status == "ok" and "no event within" in k.execute("print(outcome)").stream()


def test_interrupting_a_wait(tmp_path):
    started = tmp_path / "started"
    cell = (f"%%durable patient\nimport nbdurable, pathlib\npathlib.Path({str(started)!r})"
            ".touch()\nv = nbdurable.wait_all(nbdurable.Event('a'), nbdurable.Event('b'))")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute("%%durable first\nimport nbdurable\nnbdurable.push_event('a', 1)")
        msg_id = k.send(cell)
        wait_for_file(started)
        k.km.interrupt_kernel()
        reply = k.kc.get_shell_msg(timeout=60)
        assert reply["parent_header"]["msg_id"] == msg_id
        # also when the interrupt lands inside a DuckDB query (it raises its own error there)
        assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]["evalue"]
        hist = k.execute("import nbdurable\nprint(nbdurable.history()['status'].tolist())")
        assert hist.stream() == "['completed', 'interrupted']\n", (hist.ename, hist.evalue)
        pending = k.execute("print(nbdurable.list_events()[['key', 'status']].values.tolist())")
        assert pending.stream() == "[['a', 'pending']]\n"  # nothing consumed, nothing lost
        assert k.execute("print(1 + 1)").stream() == "2\n"
