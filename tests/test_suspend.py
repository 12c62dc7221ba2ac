"""Waiting runs hold no kernel: `nbdurable run --suspend-after`, `nbdurable resume`, and
`nbdurable worker`. Real papermill runs on real kernels, each command a process of its own; every
execution of a cell's body appends a line to effects.log, so the counts say what ran again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import psutil
import pytest
from kernels import wait_for_file
from test_batch import (
    clean_env,
    effect,
    effects,
    nbdurable,
    outputs,
    papermill,
    runs_json,
    write_notebook,
)

APPROVAL = [
    "%load_ext nbdurable\nimport nbdurable",
    "%%durable draft\n" + effect("draft") + "text = 'hello'",
    "%%durable review\n" + effect("review")
    + "answer = nbdurable.wait_for_event('approve', timeout={timeout})\n"
      "print('approved by', answer['by'])",
    "%%durable publish\n" + effect("publish") + "print('published', text)",
]

SLEEPY = [
    "%load_ext nbdurable\nimport nbdurable",
    "%%durable before\n" + effect("before") + "x = 1",
    "%%durable nap\n" + effect("nap") + "nbdurable.sleep({seconds})\nprint('woke up')",
    "%%durable after\n" + effect("after") + "print('after', x)",
]


def wait_past(deadline: str) -> None:
    """Until the log's clock (naive UTC) is past ``deadline``."""
    end = datetime.fromisoformat(deadline)
    while datetime.now(UTC).replace(tzinfo=None) <= end:
        time.sleep(0.1)


def kernels_of(work: Path) -> list[psutil.Process]:
    """ipykernel processes whose working directory is ``work``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "ipykernel_launcher" in " ".join(proc.info["cmdline"] or []) and \
                    Path(proc.cwd()) == work:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_a_waiting_run_is_suspended_and_a_worker_resumes_it_after_the_push(tmp_path):
    write_notebook(tmp_path / "approval.ipynb",
                   [c.format(timeout=3600) for c in APPROVAL])
    started = time.monotonic()
    first = nbdurable("run", "approval.ipynb", "out.ipynb", "--run-id", "a1",
                      "--suspend-after", "2", cwd=tmp_path)
    assert first.returncode == 4, (first.stdout, first.stderr)
    assert time.monotonic() - started < 60
    assert "waiting" in first.stdout and "event `approve`" in first.stdout, first.stdout
    assert not kernels_of(tmp_path), "a suspended run holds no kernel"
    texts = outputs(tmp_path / "out.ipynb")
    assert "⏸" in texts[2] and "nbdurable resume a1" in texts[2], texts[2]
    assert not any("Error" in t for t in texts), texts  # waiting, not failed
    row = runs_json(tmp_path)["a1"]
    assert (row["status"], row["waiting_for"]) == ("waiting", "approve"), row

    idle = nbdurable("worker", "--once", cwd=tmp_path)  # nothing pushed: nothing to resume
    assert idle.returncode == 0 and "resuming" not in idle.stdout, idle.stdout
    assert nbdurable("event", "push", "a1", "approve", '{"by": "ann"}',
                     cwd=tmp_path).returncode == 0
    resumed = nbdurable("worker", "--once", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming run 'a1'" in resumed.stdout and "run 'a1': completed" in resumed.stdout, \
        resumed.stdout
    assert effects(tmp_path) == {"draft": 1, "review": 2, "publish": 1}  # draft replayed
    texts = outputs(tmp_path / "out.ipynb")
    assert "approved by ann" in texts[2] and "published hello" in texts[3], texts
    assert runs_json(tmp_path)["a1"]["status"] == "completed"
    again = nbdurable("resume", "a1", cwd=tmp_path)
    assert again.returncode == 2 and "nothing to resume" in again.stderr, again.stderr


def test_a_running_worker_resumes_a_suspended_sleep_after_its_deadline_not_before(tmp_path):
    write_notebook(tmp_path / "sleepy.ipynb", [c.format(seconds=6) for c in SLEEPY])
    first = nbdurable("run", "sleepy.ipynb", "out.ipynb", "--run-id", "s1",
                      "--suspend-after", "1", cwd=tmp_path)
    assert first.returncode == 4, (first.stdout, first.stderr)
    row = runs_json(tmp_path)["s1"]
    assert row["waiting_for"] == "a deadline" and row["next_deadline"], row
    deadline = datetime.fromisoformat(row["next_deadline"])
    worker = subprocess.Popen([sys.executable, "-m", "nbdurable", "worker"], cwd=tmp_path,
                              env=clean_env(), stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in worker.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "resuming run 's1'" in line:
                resumed_at = datetime.now(UTC).replace(tzinfo=None)
            if "run 's1':" in line:
                break
        assert "run 's1': completed" in lines[-1], lines
        assert resumed_at >= deadline, (resumed_at, deadline)  # not before the deadline
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0  # stops cleanly
    finally:
        worker.kill()
    assert effects(tmp_path) == {"before": 1, "nap": 2, "after": 1}
    texts = outputs(tmp_path / "out.ipynb")
    assert "woke up" in texts[2] and "after 1" in texts[3], texts


def test_a_wait_that_times_out_while_suspended_resumes_into_wait_timeout(tmp_path):
    write_notebook(tmp_path / "approval.ipynb", [c.format(timeout=3) for c in APPROVAL])
    first = nbdurable("run", "approval.ipynb", "out.ipynb", "--run-id", "t1",
                      "--suspend-after", "1", cwd=tmp_path)
    assert first.returncode == 4, (first.stdout, first.stderr)
    wait_past(runs_json(tmp_path)["t1"]["next_deadline"])  # the timeout passes, no kernel
    resumed = nbdurable("resume", "t1", cwd=tmp_path)
    assert resumed.returncode == 1, resumed.stderr  # as live: the cell raises WaitTimeout
    assert "WaitTimeout" in resumed.stderr, resumed.stderr
    nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert any(o.get("ename") == "WaitTimeout" for c in nb.cells for o in c.get("outputs", []))
    assert effects(tmp_path) == {"draft": 1, "review": 2}


def test_two_workers_resume_each_of_three_waiting_runs_exactly_once(tmp_path):
    cells = [c.format(timeout=3600) for c in APPROVAL]
    for i in range(3):
        run = tmp_path / f"r{i}"
        run.mkdir()
        write_notebook(run / "approval.ipynb", [c.replace("effects.log", f"../effects-{i}.log")
                                                for c in cells])
        first = nbdurable("run", run / "approval.ipynb", run / "out.ipynb", "--run-id",
                          f"r{i}", "--suspend-after", "1", "--cwd", run,
                          "--log", tmp_path / ".nbdurable" / "log.duckdb", cwd=tmp_path)
        assert first.returncode == 4, (first.stdout, first.stderr)
        assert nbdurable("event", "push", f"r{i}", "approve", '{"by": "bo"}',
                         cwd=tmp_path).returncode == 0
    workers = [subprocess.Popen([sys.executable, "-m", "nbdurable", "worker", "--once",
                                 "--max-parallel", "3"], cwd=tmp_path, env=clean_env(),
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    said = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), said
    for i in range(3):
        counts = Counter((tmp_path / f"effects-{i}.log").read_text().split())
        assert counts == {"draft": 1, "review": 2, "publish": 1}, (i, counts, said)
        assert runs_json(tmp_path)[f"r{i}"]["status"] == "completed"
    completed = [line for text in said for line in text.splitlines() if ": completed" in line]
    assert len(completed) == 3, said  # one resume each; the other worker's was refused


SLOW_AFTER = [
    "%load_ext nbdurable\nimport nbdurable",
    "%%durable review\n" + effect("review") + "nbdurable.wait_for_event('approve')",
    "%%durable slow\nimport pathlib, time\n" + effect("slow")
    + "pathlib.Path('slow.started').touch()\n"
      "while not pathlib.Path('go.on').exists():\n    time.sleep(0.05)",
    "%%durable publish\n" + effect("publish") + "print('published')",
]


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_a_worker_stopped_mid_resume_leaves_the_run_to_the_next_worker(tmp_path, stop):
    """SIGKILL of the worker and its resume (a machine crash): the run is crashed; SIGTERM of
    the worker alone: it interrupts its resume and exits 0. Either way the next worker goes
    on."""
    write_notebook(tmp_path / "slow.ipynb", SLOW_AFTER)
    first = nbdurable("run", "slow.ipynb", "out.ipynb", "--run-id", "k1", "--suspend-after", "1",
                      cwd=tmp_path)
    assert first.returncode == 4, (first.stdout, first.stderr)
    assert nbdurable("event", "push", "k1", "approve", cwd=tmp_path).returncode == 0
    worker = subprocess.Popen([sys.executable, "-m", "nbdurable", "worker"], cwd=tmp_path,
                              env=clean_env(), stdout=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for_file(tmp_path / "slow.started")  # the resume is in the middle of the run
        if stop == "SIGTERM":
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):  # SIGKILL: the worker and its resume
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)
    ended = {"SIGKILL": "crashed", "SIGTERM": "failed"}[stop]  # crashed: the kernel follows
    deadline = time.monotonic() + 60                           # its driver's death
    while runs_json(tmp_path)["k1"]["status"] != ended:
        assert time.monotonic() < deadline, runs_json(tmp_path)["k1"]
        time.sleep(0.2)
    (tmp_path / "go.on").touch()
    second = nbdurable("worker", "--once", cwd=tmp_path)
    assert "run 'k1': completed" in second.stdout, (second.stdout, second.stderr)
    assert effects(tmp_path) == {"review": 2, "slow": 2, "publish": 1}
    assert "published" in outputs(tmp_path / "out.ipynb")[3]


def resume_processes(parent: int) -> list[psutil.Process]:
    """The warm `nbdurable resume -` processes a worker (process ``parent``) keeps."""
    found = []
    for child in psutil.Process(parent).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.cmdline()[-4:-2] == ["resume", "-"]:
                found.append(child)
    return found


def until(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return value


def test_serve_with_worker_takes_the_push_over_http_and_resumes_the_run(tmp_path):
    """`nbdurable serve --worker`: one process takes the event over HTTP and resumes the run
    in the resume process it kept warm; SIGTERM stops both, nothing left running."""
    from test_http import Served

    write_notebook(tmp_path / "approval.ipynb", [c.format(timeout=3600) for c in APPROVAL])
    first = nbdurable("run", "approval.ipynb", "out.ipynb", "--run-id", "h1",
                      "--suspend-after", "1", cwd=tmp_path)
    assert first.returncode == 4, (first.stdout, first.stderr)
    served = Served(tmp_path, "--worker", env=clean_env())
    try:
        warm = until(lambda: resume_processes(served.proc.pid), "no warm resume process")[0]
        assert served.push("h1", "approve", {"by": "web"})[0] == 201
        lines = []
        for line in served.proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "run 'h1':" in line:
                break
        assert "resuming run 'h1'" in lines[-2] and "run 'h1': completed" in lines[-1], lines
        assert not warm.is_running()  # it ran the resume, and ended with it
        assert until(lambda: resume_processes(served.proc.pid), "no new warm process")[0].pid \
            != warm.pid
        children = psutil.Process(served.proc.pid).children(recursive=True)
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(30) == 0
        assert not [c for c in children if c.is_running() and c.status() != "zombie"]
    finally:
        served.proc.kill()
    assert effects(tmp_path) == {"draft": 1, "review": 2, "publish": 1}
    texts = outputs(tmp_path / "out.ipynb")
    assert "approved by web" in texts[2] and "published hello" in texts[3], texts


def test_plain_papermill_with_the_engine_suspends_and_says_it_did_not_complete(tmp_path):
    write_notebook(tmp_path / "approval.ipynb", [c.format(timeout=3600) for c in APPROVAL])
    (tmp_path / "sub").mkdir()
    first = papermill("--engine", "nbdurable", "approval.ipynb", "out.ipynb", "--cwd", "sub",
                      cwd=tmp_path, env=clean_env(NBDURABLE_RUN="p1",
                                                  NBDURABLE_SUSPEND_AFTER="1"))
    assert first.returncode != 0, "a suspended run is not a completed notebook"
    assert first.stderr.strip().splitlines()[-1].startswith(
        "nbdurable.errors.RunSuspended: run 'p1' suspended in step 'review'"), first.stderr
    assert not kernels_of(tmp_path / "sub")
    assert "⏸" in outputs(tmp_path / "out.ipynb")[2]
    assert runs_json(tmp_path / "sub")["p1"]["waiting_for"] == "approve"
    assert nbdurable("event", "push", "p1", "approve", '{"by": "pm"}',
                     cwd=tmp_path / "sub").returncode == 0
    resumed = nbdurable("worker", "--once", cwd=tmp_path / "sub")
    assert "run 'p1': completed" in resumed.stdout, (resumed.stdout, resumed.stderr)
    texts = outputs(tmp_path / "out.ipynb")  # the same output, relative to papermill's cwd
    assert "approved by pm" in texts[2] and "published hello" in texts[3], texts
    assert Counter((tmp_path / "sub" / "effects.log").read_text().split()) == {
        "draft": 1, "review": 2, "publish": 1}


def test_a_suspended_run_resumed_interactively_and_interactive_kernels_never_suspend(tmp_path):
    """Open the notebook with the run's id and run all: completed cells replay, the waiting
    cell waits live — not suspended, though NBDURABLE_SUSPEND_AFTER is inherited."""
    from kernels import Kernel, kernel_env

    cells = [c.format(timeout=3600) for c in APPROVAL]
    write_notebook(tmp_path / "approval.ipynb", cells)
    first = nbdurable("run", "approval.ipynb", "out.ipynb", "--run-id", "i1",
                      "--suspend-after", "1", cwd=tmp_path)
    assert first.returncode == 4, (first.stdout, first.stderr)
    env = kernel_env(tmp_path, NBDURABLE_RUN="i1", NBDURABLE_SUSPEND_AFTER="0.2",
                     NBDURABLE_LOG=str(tmp_path / ".nbdurable" / "log.duckdb"))
    with Kernel(tmp_path, env=env) as k:
        assert k.execute(cells[0]).status == "ok"
        assert k.execute(cells[1]).notices()[0]["kind"] == "replayed"
        msg_id = k.send(cells[2])
        until(lambda: effects(tmp_path)["review"] == 2, "the waiting cell never ran")
        time.sleep(1)  # five times --suspend-after: a batch kernel would have stopped by now
        assert nbdurable("event", "push", "i1", "approve", '{"by": "me"}',
                         cwd=tmp_path).returncode == 0
        reply = k.reply_to(msg_id)
        assert reply["content"]["status"] == "ok", reply["content"]
        assert k.execute(cells[3]).status == "ok"
    assert effects(tmp_path) == {"draft": 1, "review": 2, "publish": 1}
    assert runs_json(tmp_path)["i1"]["status"] == "completed"
    idle = nbdurable("worker", "--once", cwd=tmp_path)
    assert "resuming" not in idle.stdout, idle.stdout  # nothing left to resume


def test_a_run_whose_resume_is_refused_is_said_once_and_left_alone(tmp_path):
    write_notebook(tmp_path / "approval.ipynb", [c.format(timeout=3600) for c in APPROVAL])
    first = nbdurable("run", "approval.ipynb", "out.ipynb", "--run-id", "g1",
                      "--suspend-after", "1", cwd=tmp_path)
    assert first.returncode == 4, (first.stdout, first.stderr)
    assert nbdurable("event", "push", "g1", "approve", cwd=tmp_path).returncode == 0
    (tmp_path / "approval.ipynb").rename(tmp_path / "moved.ipynb")
    said = nbdurable("worker", "--once", cwd=tmp_path)
    assert said.returncode == 0, said.stderr
    ended = [line for line in said.stdout.splitlines() if "run 'g1':" in line]
    assert len(ended) == 1 and "not resumed" in ended[0] and "approval.ipynb" in ended[0] \
        and "left alone" in ended[0], said.stdout
    assert runs_json(tmp_path)["g1"]["status"] == "waiting"  # nothing lost: still resumable
    assert effects(tmp_path) == {"draft": 1, "review": 1}
