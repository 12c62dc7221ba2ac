"""``once`` and ``@step`` outside a kernel: real log files, real processes killed with SIGKILL."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import pytest
from kernels import count

import nbdurable
from nbdurable import settings
from nbdurable.errors import OnceInDoubtError, UsageError


@pytest.fixture
def log(tmp_path, monkeypatch):
    monkeypatch.setenv("NBDURABLE_LOG", str(tmp_path / "log.duckdb"))
    monkeypatch.setenv("NBDURABLE_RUN", "r1")
    settings.reset()
    return tmp_path / "log.duckdb"


def run_script(code: str, log, timeout=120) -> subprocess.CompletedProcess:
    env = {"NBDURABLE_LOG": str(log), "NBDURABLE_RUN": "r1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_once_runs_once_and_returns_the_recorded_result(log, tmp_path):
    counter = tmp_path / "count"

    def pay(amount):
        with counter.open("a") as f:
            f.write("paid\n")
        return {"paid": amount}

    assert nbdurable.once("pay", pay, 10) == {"paid": 10}
    assert nbdurable.once("pay", pay, 99) == {"paid": 10}
    assert nbdurable.once("other", pay, 1) == {"paid": 1}
    assert count(counter) == 2
    # another process sees the same record
    out = run_script("import nbdurable; print(nbdurable.once('pay', lambda: 1/0))", log)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'paid': 10}"


def test_a_failed_once_runs_again(log):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("down")
        return "ok"

    with pytest.raises(ConnectionError):
        nbdurable.once("flaky", flaky)
    assert nbdurable.once("flaky", flaky) == "ok"
    assert len(calls) == 2


def test_a_once_whose_process_died_is_in_doubt_until_resolved(log, tmp_path):
    counter = tmp_path / "count"
    died = run_script(f"""
        import os, signal, nbdurable
        def charge():
            open({str(counter)!r}, 'a').write('charged\\n')
            os.kill(os.getpid(), signal.SIGKILL)
        nbdurable.once('charge', charge)
    """, log)
    assert died.returncode == -9
    assert count(counter) == 1
    with pytest.raises(OnceInDoubtError, match="once_resolve") as doubt:
        nbdurable.once("charge", lambda: "again")
    assert doubt.value.key == "charge"
    nbdurable.once_resolve("charge", "checked by hand")
    assert nbdurable.once("charge", lambda: "again") == "checked by hand"
    assert nbdurable.once_reset("charge") is True
    assert nbdurable.once("charge", lambda: "again") == "again"
    assert count(counter) == 1


def test_concurrent_once_from_many_processes_runs_once(log, tmp_path):
    counter = tmp_path / "count"
    script = f"""
        import time, nbdurable
        from nbdurable.errors import StepError
        def work():
            open({str(counter)!r}, 'a').write('x\\n')
            time.sleep(0.3)
            return 'done'
        for _ in range(200):
            try:
                print(nbdurable.once('job', work)); break
            except StepError:
                time.sleep(0.05)
    """
    env = {"NBDURABLE_LOG": str(log), "NBDURABLE_RUN": "r1", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [o.strip() for o, _ in outs] == ["done"] * 4, outs
    assert count(counter) == 1


def test_bad_arguments_are_usage_errors(log):
    with pytest.raises(UsageError):
        nbdurable.once("", print)
    with pytest.raises(UsageError):
        nbdurable.once("k", "not callable")
    with pytest.raises(UsageError):
        nbdurable.step(42)


def test_step_outside_a_durable_cell_is_a_plain_function(log):
    @nbdurable.step
    def double(x):
        return 2 * x

    assert double(4) == 8
    assert double.__name__ == "double"
    assert pickle.loads(pickle.dumps(nbdurable.step(len)))([1, 2]) == 2
