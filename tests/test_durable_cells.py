"""Durable cells on real kernels: record, restart, replay, crash, edit, fail, retry.

Each execution of a cell body appends a line to a counter file, so the tests count exactly how
many times a body ran across kernels, crashes and restarts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from kernels import Kernel, count, kernel_env, wait_for_file

LOAD = "%load_ext nbdurable"


def body(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def counter_line(path, tag="x") -> str:
    return f"open({str(path)!r}, 'a').write({tag!r} + '\\n')"


@pytest.fixture
def workdir(tmp_path):
    return tmp_path


def test_restart_replays_outputs_and_variables_without_running_again(workdir):
    counter = workdir / "count"
    cell = body(f"""
        %%durable load
        {counter_line(counter)}
        import sys
        from IPython.display import HTML, display
        data = {{"rows": [1, 2, 3]}}
        total = sum(data["rows"])
        print("loaded", total)
        print("warning!", file=sys.stderr)
        display(HTML("<b>rich</b>"))
        total * 10
    """)
    with Kernel(workdir) as k:
        assert k.execute(LOAD).status == "ok"
        first = k.execute(cell)
    assert first.status == "ok", first.traceback
    assert count(counter) == 1
    assert first.notices() == []  # a first execution looks like a plain cell

    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute("pass")  # shift execution counts: Out[n] must be this cell's
        again = k.execute(cell)
        check = k.execute("print(total, data)")
    assert again.status == "ok", again.traceback
    assert count(counter) == 1
    assert [n["kind"] for n in again.notices()] == ["replayed"]
    assert again.stream("stdout") == first.stream("stdout") == "loaded 6\n"
    assert again.stream("stderr") == "warning!\n"
    html = [d["data"]["text/html"] for d in again.of_type("display_data") if "text/html" in
            d["data"] and "rich" in d["data"]["text/html"]]
    assert html == ["<b>rich</b>"]
    assert again.result["data"]["text/plain"] == "60"
    assert again.result["execution_count"] == again.execution_count != first.execution_count
    assert check.stream() == "6 {'rows': [1, 2, 3]}\n"


def test_traceback_line_numbers_and_out_like_a_plain_cell(workdir):
    with Kernel(workdir) as k:
        k.execute(LOAD)
        r = k.execute("%%durable boom\nx = 1\n\ny = 2\nraise ValueError('bad ' + str(x))")
        assert r.status == "error" and r.ename == "ValueError" and r.evalue == "bad 1"
        tb = "\n".join(r.traceback)
        assert "line 5" in tb  # the raise is on line 5 of the cell, counting %%durable
        ok = k.execute("%%durable fine\nv = 41\nv + 1")
        assert ok.result["data"]["text/plain"] == "42"
        assert k.execute(f"print(Out[{ok.execution_count}])").stream() == "42\n"
        quiet = k.execute("%%durable quiet\nv + 1;")
        assert quiet.result is None


def test_sigkill_in_the_middle_of_a_notebook_then_resume(workdir):
    a, b, c = workdir / "a", workdir / "b", workdir / "c"
    marker = workdir / "crashed-once"
    cells = [
        f"%%durable a\n{counter_line(a)}\nx = 1",
        body(f"""
            %%durable b
            {counter_line(b)}
            import os, signal, pathlib
            if not pathlib.Path({str(marker)!r}).exists():
                pathlib.Path({str(marker)!r}).touch()
                os.kill(os.getpid(), signal.SIGKILL)
            y = x + 1
        """),
        f"%%durable c\n{counter_line(c)}\nz = y + 1\nprint('z =', z)",
    ]
    with Kernel(workdir) as k:
        k.execute(LOAD)
        assert k.execute(cells[0]).status == "ok"
        k.execute_until_death(cells[1])
    assert (count(a), count(b), count(c)) == (1, 1, 0)

    with Kernel(workdir) as k:
        k.execute(LOAD)
        replies = [k.execute(cell) for cell in cells]
    assert all(r.status == "ok" for r in replies), [r.traceback for r in replies]
    assert (count(a), count(b), count(c)) == (1, 2, 1)
    assert replies[0].notices()[0]["kind"] == "replayed"
    assert replies[1].notices()[0]["reason"] == "the previous attempt did not finish (the kernel died)"
    assert replies[2].stream() == "z = 3\n"


def test_sigkill_between_two_step_calls(workdir):
    first, second = workdir / "first", workdir / "second"
    marker = workdir / "crashed-once"
    define = body(f"""
        import nbdurable
        @nbdurable.step
        def expensive(n):
            {counter_line(first)}
            return n * 100
        @nbdurable.step
        def other(n):
            {counter_line(second)}
            return n + 1
    """)
    cell = body(f"""
        %%durable pipeline
        r1 = expensive(3)
        import os, signal, pathlib
        if not pathlib.Path({str(marker)!r}).exists():
            pathlib.Path({str(marker)!r}).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        r2 = other(r1)
        print(r1, r2)
    """)
    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute(define)
        k.execute_until_death(cell)
    assert (count(first), count(second)) == (1, 0)
    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute(define)
        r = k.execute(cell)
    assert r.status == "ok", r.traceback
    assert r.stream() == "300 301\n"
    assert (count(first), count(second)) == (1, 1)


def test_edit_reruns_the_cell_and_its_dependents_while_an_independent_cell_replays(workdir):
    ca, cb, cc = workdir / "a", workdir / "b", workdir / "c"

    def cells(value):
        return [f"%%durable a\n{counter_line(ca)}\nx = {value}",
                f"%%durable b\n{counter_line(cb)}\ny = x * 2",
                f"%%durable c\n{counter_line(cc)}\nz = 'independent'"]

    with Kernel(workdir) as k:
        k.execute(LOAD)
        assert all(k.execute(c).status == "ok" for c in cells(1))
    with Kernel(workdir) as k:
        k.execute(LOAD)
        replies = [k.execute(c) for c in cells(5)]
        assert k.execute("print(x, y, z)").stream() == "5 10 independent\n"
    assert (count(ca), count(cb), count(cc)) == (2, 2, 1)
    assert replies[0].notices()[0]["reason"] == "source edited"
    assert replies[1].notices()[0]["reason"] == "input `x` changed"
    assert replies[2].notices()[0]["kind"] == "replayed"


def test_a_missing_input_is_said_to_be_not_defined_not_changed(workdir):
    """After a restart, the plain cell defining `g` was not run: the note says so."""
    reader = "%%durable uses_g\nh = g + 1"
    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute("g = 1")
        assert k.execute(reader).status == "ok"
    with Kernel(workdir) as k:
        k.execute(LOAD)
        r = k.execute(reader)
        assert r.notices()[0]["reason"] == \
            "input `g` is not defined (run the cell that defines it)", r.notices()
        assert r.ename == "NameError"
        k.execute("g = 1")
        assert k.execute(reader).status == "ok"


def test_changed_plain_cell_input_reruns_the_reader(workdir):
    counter = workdir / "count"
    reader = f"%%durable reader\n{counter_line(counter)}\nout = [p * 2 for p in params['xs']]"
    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute("params = {'xs': [1, 2]}")
        k.execute(reader)
        assert count(counter) == 1
        k.execute("params['xs'].append(3)")  # an in-place change by a plain cell
        r = k.execute(reader)
        assert r.notices()[0]["reason"] == "input `params` changed"
        assert k.execute("print(out)").stream() == "[2, 4, 6]\n"
        assert count(counter) == 2
        k.execute("unrelated = 1")
        assert k.execute(reader).notices()[0]["kind"] == "replayed"
    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute("params = {'xs': [1, 2, 3]}")
        assert k.execute(reader).notices()[0]["kind"] == "replayed"
        k.execute("params = {'xs': [7]}")
        r = k.execute(reader)
        assert r.notices()[0]["reason"] == "input `params` changed"
        assert k.execute("print(out)").stream() == "[14]\n"
    assert count(counter) == 3


def test_in_place_mutation_is_restored(workdir):
    cells = ["lst = [1, 2, 3]",
             "%%durable frame\nimport pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})",
             "%%durable mutate\nlst.append(4)\ndf['c'] = 1"]
    with Kernel(workdir) as k:
        k.execute(LOAD)
        assert all(k.execute(c).status == "ok" for c in cells)
    with Kernel(workdir) as k:
        k.execute(LOAD)
        replies = [k.execute(c) for c in cells]
        assert [r.notices()[0]["kind"] for r in replies[1:]] == ["replayed", "replayed"]
        out = k.execute("print(lst, list(df.columns), df['c'].tolist())").stream()
    assert out == "[1, 2, 3, 4] ['a', 'c'] [1, 1]\n"


def test_failure_is_recorded_and_the_retry_runs_again(workdir):
    counter, flag = workdir / "count", workdir / "ok"
    cell = body(f"""
        %%durable flaky
        {counter_line(counter)}
        import pathlib
        if not pathlib.Path({str(flag)!r}).exists():
            raise RuntimeError("service down")
        result = "fine"
    """)
    with Kernel(workdir) as k:
        k.execute(LOAD)
        r = k.execute(cell)
        assert r.status == "error" and r.evalue == "service down"
        flag.touch()
        r = k.execute(cell)
        assert r.status == "ok" and r.notices()[0]["reason"] == "the previous attempt failed"
        hist = k.execute(
            "import nbdurable\nh = nbdurable.history()\n"
            "print(h[['step', 'status', 'attempt', 'error']].to_json(orient='records'))")
    rows = json.loads(hist.stream())
    assert rows == [{"step": "flaky", "status": "failed", "attempt": 1, "error": "RuntimeError"},
                    {"step": "flaky", "status": "completed", "attempt": 2, "error": None}]
    assert count(counter) == 2


def test_once_survives_edits_force_and_restarts(workdir):
    sent = workdir / "sent"
    define = body(f"""
        import nbdurable
        def send_email(to):
            {counter_line(sent)}
            return f"sent to {{to}}"
    """)
    v1 = "%%durable notify\nreceipt = nbdurable.once('email', send_email, 'ann')\nprint(receipt)"
    v2 = ("%%durable notify --force\n# edited\n"
          "receipt = nbdurable.once('email', send_email, 'bob')\nprint(receipt)")
    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute(define)
        assert k.execute(v1).stream() == "sent to ann\n"
        assert k.execute(v2).stream() == "sent to ann\n"
        assert k.execute("print(nbdurable.once('email', send_email, 'x'))").stream() == "sent to ann\n"
    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute(define)
        assert k.execute(v2).stream() == "sent to ann\n"
    assert count(sent) == 1


def test_unstorable_variable_warns_and_the_step_executes_again(workdir):
    calls = workdir / "calls"
    define = body(f"""
        import nbdurable
        @nbdurable.step
        def fetch():
            {counter_line(calls)}
            return 42
    """)
    cell = body("""
        %%durable connect
        import threading
        lock = threading.Lock()
        answer = fetch()
        gen = (i for i in range(3))
    """)
    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute(define)
        r = k.execute(cell)
        assert r.status == "ok"
        warning = r.stream("stderr")
        assert "`gen`" in warning and "`lock`" in warning and "cannot be stored" in warning
    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute(define)
        r = k.execute(cell)
        assert r.notices()[0]["reason"] == "`gen`, `lock` could not be stored"
        assert k.execute("print(type(lock).__name__, answer)").stream() == "lock 42\n"
    assert count(calls) == 1


def test_functions_classes_and_modules_come_back(workdir):
    cells = [body("""
        %%durable define
        import collections as col
        rate = 2
        def scale(v):
            return v * rate
        class Box:
            def __init__(self, v):
                self.v = v
            def doubled(self):
                return scale(self.v)
        box = Box(5)
    """)]
    with Kernel(workdir) as k:
        k.execute(LOAD)
        assert k.execute(cells[0]).status == "ok"
    with Kernel(workdir) as k:
        k.execute(LOAD)
        assert k.execute(cells[0]).notices()[0]["kind"] == "replayed"
        out = k.execute("print(col.__name__, box.doubled(), isinstance(box, Box))\n"
                        "rate = 10\nprint(scale(1))").stream()
    assert out == "collections 10 True\n10\n"


def test_force_executes_again(workdir):
    counter = workdir / "count"
    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute(f"%%durable s\n{counter_line(counter)}")
        assert k.execute(f"%%durable s\n{counter_line(counter)}").notices()[0]["kind"] == "replayed"
        r = k.execute(f"%%durable s --force\n{counter_line(counter)}")
        assert r.notices()[0]["reason"] == "--force"
    assert count(counter) == 2


def test_nested_time_and_top_level_await(workdir):
    cells = ["%%durable timed\n%%time\nt = sum(range(10))\nt",
             "%%time\n%%durable outer\nu = 7\nu * 2",
             "%%durable waits\nimport asyncio\nawait asyncio.sleep(0.01)\nw = 5\nw"]
    with Kernel(workdir) as k:
        k.execute(LOAD)
        first = [k.execute(c) for c in cells]
    assert all(r.status == "ok" for r in first), [r.traceback for r in first]
    assert "Wall time" in first[0].stream() and first[0].result["data"]["text/plain"] == "45"
    assert "Wall time" in first[1].stream() and first[1].result["data"]["text/plain"] == "14"
    assert first[2].result["data"]["text/plain"] == "5"
    with Kernel(workdir) as k:
        k.execute(LOAD)
        again = [k.execute(c) for c in cells]
        values = k.execute("print(t, u, w)").stream()
    assert [r.notices()[0]["kind"] for r in again] == ["replayed"] * 3
    assert "Wall time" in again[0].stream() and again[0].result["data"]["text/plain"] == "45"
    assert again[1].result["data"]["text/plain"] == "14"
    assert again[2].result["data"]["text/plain"] == "5"
    assert values == "45 7 5\n"


def test_subprocess_and_thread_output_is_recorded(workdir):
    cell = body("""
        %%durable noisy
        import subprocess, threading
        subprocess.run(["echo", "from a subprocess"])
        t = threading.Thread(target=lambda: print("from a thread"))
        t.start(); t.join()
        del t
    """)
    with Kernel(workdir) as k:
        k.execute(LOAD)
        first = k.execute(cell).stream()
    with Kernel(workdir) as k:
        k.execute(LOAD)
        again = k.execute(cell).stream()
    assert "from a subprocess" in first and "from a thread" in first
    assert again == first


def test_subprocess_output_still_in_the_pipe_when_the_cell_ends_is_recorded(workdir):
    # ipykernel forwards fd 1 through a pipe read by a watcher thread; on a loaded machine that
    # thread runs late. It is slowed here (50 ms per 1,000-byte chunk) so the child's output is
    # still in the pipe when the cell ends: the checkpoint must wait for it, not cut it off.
    cell = body("""
        %%durable flood
        import subprocess, sys, threading, time
        def _late(text, _write=sys.stdout.write):
            if threading.current_thread() is sys.stdout.watch_fd_thread:
                time.sleep(0.05)
            return _write(text)
        sys.stdout.write = _late  # IPython puts the stream's write back when the cell ends
        subprocess.run([sys.executable, "-c", "print('x' * 5_000)"])
        del _late
    """)
    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute(cell)
    with Kernel(workdir) as k:
        k.execute(LOAD)
        again = k.execute(cell)
    assert again.notices()[0]["kind"] == "replayed"
    out = again.stream()
    assert out == "x" * 5_000 + "\n", f"{len(out)} characters replayed"


def test_load_twice_is_harmless_and_unload_removes_everything(workdir):
    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute(LOAD)
        r = k.execute("%%durable once_only\nprint('ran')")
        assert r.stream() == "ran\n"
        k.execute("%unload_ext nbdurable")
        gone = k.execute("%%durable x\nprint(1)")
        assert gone.status == "error" and "durable" in gone.evalue
        state = k.execute("ip = get_ipython()\nprint(len(ip.ast_transformers), "
                          "'__nbdurable__' in ip.user_ns)")
        assert state.stream() == "0 False\n"
        k.execute(LOAD)
        assert k.execute("%%durable once_only\nprint('ran')").notices()[0]["kind"] == "replayed"


def test_durable_run_magic_shows_and_changes_the_run(workdir):
    with Kernel(workdir) as k:
        k.execute(LOAD)
        shown = k.execute("%durable_run").stream()
        assert "test-run" in shown and str(workdir / "log.duckdb") in shown
        k.execute("%durable_run other")
        k.execute("%%durable s\nv = 1")
        runs = k.execute("import nbdurable\nprint(sorted(nbdurable.runs()['run']))").stream()
    assert runs == "['other']\n"


def test_usage_errors_are_one_line(workdir):
    with Kernel(workdir) as k:
        k.execute(LOAD)
        r = k.execute("%%durable\nx = 1")  # no NAME, and no cell id to name it by
        assert r.status == "error" and r.ename == "UsageError"
        assert "write %%durable NAME" in r.evalue
        assert len(r.traceback) == 1
        r = k.execute("%%durable a --bogus\nx = 1")
        assert r.ename == "UsageError" and "--bogus" in r.evalue
        r = k.execute("%%durable a b\nx = 1")
        assert r.ename == "UsageError" and "one NAME expected" in r.evalue
        # the options are declared the IPython way: the magic's help lists them
        doc = k.execute("print(get_ipython().find_cell_magic('durable').__doc__)").stream()
        assert "%%durable [--force] [--replace] [NAME]" in doc, doc
        assert "execute the body even" in doc and "--replace  this cell takes" in doc


def test_run_id_comes_from_the_notebook_identity(workdir):
    env = kernel_env(workdir, JPY_SESSION_NAME=str(workdir / "analysis.ipynb"))
    env.pop("NBDURABLE_RUN")
    with Kernel(workdir, env) as k:
        k.execute(LOAD)
        assert "'analysis.ipynb'" in k.execute("%durable_run").stream()


def test_output_streams_live_while_the_cell_runs(workdir):
    go = workdir / "go"
    cell = body(f"""
        %%durable live
        import pathlib, time
        print("first line", flush=True)
        deadline = time.monotonic() + 60
        while not pathlib.Path({str(go)!r}).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        print("second line")
    """)
    with Kernel(workdir) as k:
        k.execute(LOAD)
        msg_id = k.send(cell)
        seen = ""
        while "first line" not in seen:  # the front end gets it before the cell ends
            msg = k.kc.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                seen += msg["content"]["text"]
        assert not go.exists()
        go.touch()
        reply = k.kc.get_shell_msg(timeout=60)
        assert reply["content"]["status"] == "ok"
    with Kernel(workdir) as k:
        k.execute(LOAD)
        assert k.execute(cell).stream() == "first line\nsecond line\n"


def test_kernel_interrupt_is_recorded_as_interrupted(workdir):
    started = workdir / "started"
    cell = body(f"""
        %%durable slow
        import pathlib, time
        pathlib.Path({str(started)!r}).touch()
        time.sleep(60)
    """)
    with Kernel(workdir) as k:
        k.execute(LOAD)
        msg_id = k.send(cell)
        wait_for_file(started)
        k.km.interrupt_kernel()
        reply = k.kc.get_shell_msg(timeout=60)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        out = k.execute("import nbdurable\nprint(nbdurable.history()['status'].tolist())")
        assert out.stream() == "['interrupted']\n"
        again = k.execute(cell.replace("time.sleep(60)", "pass"))
        assert again.notices()[0]["reason"] == "the previous attempt was interrupted"


def test_line_magics_and_shell_commands_inside_a_durable_cell(workdir):
    cell = "%%durable magics\n%time v = 21 * 2\nfiles = !echo hello\nprint(v, files)"
    with Kernel(workdir) as k:
        k.execute(LOAD)
        first = k.execute(cell)
        assert first.status == "ok", first.traceback
        assert "42 ['hello']" in first.stream()
    with Kernel(workdir) as k:
        k.execute(LOAD)
        again = k.execute(cell)
        assert again.notices()[0]["kind"] == "replayed"
        assert "42 ['hello']" in again.stream()
        assert k.execute("print(v, files)").stream() == "42 ['hello']\n"


@pytest.mark.parametrize("point, runs, kind", [
    ("before-commit", 2, "executing"),  # body ran, blobs written, commit not: runs again
    ("after-commit", 1, "replayed"),    # committed, died before reporting: it is done
])
def test_sigkill_at_the_worst_moments_of_a_checkpoint(workdir, point, runs, kind):
    counter = workdir / "count"
    cell = f"%%durable big\n{counter_line(counter)}\nimport numpy as np\narr = np.arange(500_000)"
    with Kernel(workdir, kernel_env(workdir, NBDURABLE_CRASH_AT=point)) as k:
        k.execute(LOAD)
        k.execute_until_death(cell)
    with Kernel(workdir) as k:
        k.execute(LOAD)
        r = k.execute(cell)
        assert r.notices()[0]["kind"] == kind
        assert k.execute("print(int(arr.sum()))").stream() == f"{sum(range(500_000))}\n"
    assert count(counter) == runs


def test_identical_large_values_are_stored_once(workdir):
    cells = ["%%durable one\nimport numpy as np\na = np.ones(300_000)",
             "%%durable two\nb = np.ones(300_000)"]
    with Kernel(workdir) as k:
        k.execute(LOAD)
        assert all(k.execute(c).status == "ok" for c in cells)
    blobs = [p for p in (workdir / "log.duckdb.blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1 and blobs[0].stat().st_size > 2_400_000


def test_history_from_another_process_sees_a_running_cell(workdir):
    go = workdir / "go"
    cell = body(f"""
        %%durable waiting
        import pathlib, time
        deadline = time.monotonic() + 60
        while not pathlib.Path({str(go)!r}).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    """)
    script = ("import nbdurable\n"
              f"h = nbdurable.history('test-run', log={str(workdir / 'log.duckdb')!r})\n"
              "print(h[['step', 'status']].values.tolist())")
    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute("%%durable before\nx = 1")
        msg_id = k.send(cell)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120)
        go.touch()
        reply = k.kc.get_shell_msg(timeout=60)
        assert reply["parent_header"]["msg_id"] == msg_id
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[['before', 'completed'], ['waiting', 'running']]"


def test_classes_defined_in_plain_cells_keep_their_fingerprint_across_restarts(workdir):
    counter = workdir / "count"
    define = body("""
        from dataclasses import dataclass, field
        @dataclass
        class Item:
            name: str
            tags: list = field(default_factory=list)
            def label(self):
                return self.name.upper()
    """)
    cell = f"%%durable build\n{counter_line(counter)}\nitems = [Item('a', [1]), Item('b')]"
    with Kernel(workdir) as k:
        k.execute(LOAD)
        k.execute(define)
        assert k.execute(cell).status == "ok"
    with Kernel(workdir, kernel_env(workdir, PYTHONHASHSEED="12345")) as k:
        k.execute(LOAD)
        k.execute(define)
        r = k.execute(cell)
        assert r.notices()[0]["kind"] == "replayed"
        out = k.execute("print(isinstance(items[0], Item), items[0].label(), items[1].tags)")
        assert out.stream() == "True A []\n"
    assert count(counter) == 1


def test_explicit_run_cell_magic_call_is_durable_too(workdir):
    counter = workdir / "count"
    call = ("get_ipython().run_cell_magic('durable', 'explicit', "
            f"{(counter_line(counter) + chr(10) + 'w = 7' + chr(10) + 'w * 6')!r})")
    with Kernel(workdir) as k:
        k.execute(LOAD)
        first = k.execute(call)
        assert first.status == "ok", first.traceback
        assert first.result["data"]["text/plain"] == "42"
    with Kernel(workdir) as k:
        k.execute(LOAD)
        again = k.execute(call)
        assert again.notices()[0]["kind"] == "replayed"
        assert k.execute("print(w)").stream() == "7\n"
    assert count(counter) == 1
