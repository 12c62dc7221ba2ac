"""Batch runs that resume: `nbdurable run`, the papermill engine, plain papermill, and the
`runs` / `log` / `reset` commands. Real papermill runs on real kernels, each in a process of
its own; a durable cell SIGKILLs its own kernel the first time; every execution of a cell's
body appends a line to effects.log, so the counts say what ran again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nbformat
import pytest
from kernels import wait_for_file

TIMEOUT = 180


def effect(name: str) -> str:
    return f"open('effects.log', 'a').write({name!r} + '\\n')\n"


CRASHY = [
    "%load_ext nbdurable",
    ("n = 3\nm = 1", ["parameters"]),
    "%%durable first\n" + effect("first") + "a = n * 2\nprint('first ran', a)",
    "%%durable crashy\nimport os, signal, pathlib\n" + effect("crashy")
    + "if not pathlib.Path('crashed.once').exists():\n"
      "    pathlib.Path('crashed.once').touch()\n"
      "    os.kill(os.getpid(), signal.SIGKILL)\n"
      "b = m + 1\nprint('crashy ran', b)",
    "%%durable last\n" + effect("last") + "c = b * 10\nprint('last ran', c)",
    "print('plain cell', a, b, c)",
]


def write_notebook(path: Path, cells) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    for cell in cells:
        source, tags = (cell, []) if isinstance(cell, str) else cell
        nb.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": tags}))
    nbformat.write(nb, path)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NBDURABLE_", "PYTEST_", "JPY_"))}
    env.update(extra)
    return env


def nbdurable(*args, cwd: Path, env: dict | None = None, timeout: float = TIMEOUT):
    return subprocess.run([sys.executable, "-m", "nbdurable.cli", *map(str, args)], cwd=cwd,
                          env=env or clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def papermill(*args, cwd: Path, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "papermill", *map(str, args)], cwd=cwd,
                          env=env or clean_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)


def effects(work: Path) -> Counter:
    path = work / "effects.log"
    return Counter(path.read_text().split()) if path.exists() else Counter()


ADDED = {"papermill-error-cell-tag", "injected-parameters"}  # cells papermill adds


def outputs(path: Path) -> list[str]:
    """Each code cell's text output (streams, errors), in order; cells papermill adds skipped."""
    nb = nbformat.read(path, as_version=4)
    texts = []
    for cell in nb.cells:
        if cell.cell_type != "code" or ADDED & set(cell.metadata.get("tags", [])):
            continue
        parts = []
        for out in cell.outputs:
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type == "error":
                parts.append(f"{out.ename}: {out.evalue}")
        texts.append("".join(parts))
    return texts


def statuses(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [c.metadata["papermill"]["status"] for c in nb.cells
            if c.cell_type == "code" and not ADDED & set(c.metadata.get("tags", []))]


def runs_json(work: Path, *extra) -> dict[str, dict]:
    out = nbdurable("runs", "--json", *extra, cwd=work)
    assert out.returncode == 0, out.stderr
    return {row["run"]: row for row in json.loads(out.stdout)}


def assert_resumed_outputs(texts: list[str]) -> None:
    assert "first ran 6" in texts[2]
    assert "crashy ran 2" in texts[3]
    assert "last ran 20" in texts[4]
    assert "plain cell 6 2 20" in texts[5]


@pytest.fixture
def work(tmp_path) -> Path:
    write_notebook(tmp_path / "crashy.ipynb", CRASHY)
    return tmp_path


# -- crash, then resume ---------------------------------------------------------------------------

def test_nbdurable_run_resumes_after_the_kernel_dies(work):
    first = nbdurable("run", "crashy.ipynb", "out.ipynb", "--run-id", "r1", cwd=work)
    assert first.returncode == 3, first.stderr
    last_line = first.stderr.strip().splitlines()[-1]
    assert "kernel died in cell 4 (crashy)" in last_line and "run the same command" in last_line
    assert "Traceback" not in first.stderr
    # The output is honest: the dying cell failed, saying why; later cells did not run.
    texts, marks = outputs(work / "out.ipynb"), statuses(work / "out.ipynb")
    assert "first ran 6" in texts[2] and texts[3].startswith("DeadKernelError: the kernel died")
    assert marks[2:] == ["completed", "failed", "pending", "pending"]
    assert runs_json(work)["r1"]["status"] == "crashed"

    second = nbdurable("run", "crashy.ipynb", "out.ipynb", "--run-id", "r1", cwd=work)
    assert second.returncode == 0, second.stderr
    assert "run 'r1' completed: 1 durable cell(s) replayed, 2 executed" in second.stdout
    assert effects(work) == Counter(first=1, crashy=2, last=1)  # only the crashed cell twice
    texts = outputs(work / "out.ipynb")
    assert_resumed_outputs(texts)
    assert "replayed" in nbformat.read(work / "out.ipynb", as_version=4).cells[2].outputs[0] \
        .metadata["nbdurable"]["kind"]
    assert set(statuses(work / "out.ipynb")) == {"completed"}
    row = runs_json(work)["r1"]
    assert (row["status"], row["steps_completed"], row["steps_failed"]) == ("completed", 3, 0)
    assert row["notebook"] == str(work / "crashy.ipynb")


def test_max_restarts_resumes_in_one_invocation(work):
    out = nbdurable("run", "crashy.ipynb", "out.ipynb", "--run-id", "r2", "--max-restarts", "1",
                    "--json", cwd=work)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["status"], result["restarts"]) == ("completed", 1)
    assert result["replayed"] == ["first"] and result["executed"] == ["crashy", "last"]
    assert effects(work) == Counter(first=1, crashy=2, last=1)
    assert_resumed_outputs(outputs(work / "out.ipynb"))
    nb = nbformat.read(work / "out.ipynb", as_version=4)
    assert nb.metadata["nbdurable"]["restarts"] == 1
    log = json.loads(nbdurable("log", "r2", "--json", cwd=work).stdout)
    assert {s["step"]: s["attempts"] for s in log["steps"]} == {"first": 1, "crashy": 2,
                                                                 "last": 1}


def test_plain_papermill_resumes_with_nbdurable_run(work):
    env = clean_env(NBDURABLE_RUN="plain")
    first = papermill("crashy.ipynb", "out.ipynb", cwd=work, env=env)
    assert first.returncode != 0
    second = papermill("crashy.ipynb", "out.ipynb", cwd=work, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert effects(work) == Counter(first=1, crashy=2, last=1)
    assert_resumed_outputs(outputs(work / "out.ipynb"))
    assert runs_json(work)["plain"]["status"] == "completed"  # from its steps: no driver


def test_plain_papermill_resumes_with_a_run_id_parameter(work):
    write_notebook(work / "param.ipynb", [CRASHY[0], ("n = 3\nm = 1\nrun_id = None",
                                                       ["parameters"]), *CRASHY[2:]])
    for expected in (False, True):
        out = papermill("param.ipynb", "out.ipynb", "-p", "run_id", "by-param", cwd=work)
        assert (out.returncode == 0) is expected, out.stderr[-2000:]
    assert effects(work) == Counter(first=1, crashy=2, last=1)
    assert "by-param" in runs_json(work)


def test_papermill_engine_nbdurable(work):
    env = clean_env(NBDURABLE_RUN="engine")
    first = papermill("--engine", "nbdurable", "crashy.ipynb", "out.ipynb", cwd=work, env=env)
    assert first.returncode == 1
    assert "DeadKernelError" in first.stderr
    assert statuses(work / "out.ipynb")[3] == "failed"  # plain papermill says "completed"
    assert runs_json(work)["engine"]["status"] == "crashed"
    second = papermill("--engine", "nbdurable", "crashy.ipynb", "out.ipynb", cwd=work, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert effects(work) == Counter(first=1, crashy=2, last=1)
    assert_resumed_outputs(outputs(work / "out.ipynb"))
    assert runs_json(work)["engine"]["status"] == "completed"


def test_papermill_engine_restarts_from_the_environment(work):
    env = clean_env(NBDURABLE_RUN="engine2", NBDURABLE_MAX_RESTARTS="1")
    out = papermill("--engine", "nbdurable", "crashy.ipynb", "out.ipynb", cwd=work, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert effects(work) == Counter(first=1, crashy=2, last=1)


# -- parameters, run ids ----------------------------------------------------------------------------

def test_changed_parameters_rerun_exactly_the_cells_that_read_them(work):
    (work / "crashed.once").touch()  # no crash here
    args = ("run", "crashy.ipynb", "out.ipynb", "--run-id", "p")
    assert nbdurable(*args, "-p", "n", "3", cwd=work).returncode == 0
    out = nbdurable(*args, "-p", "n", "5", "--json", cwd=work)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["executed"] == ["first"] and result["replayed"] == ["crashy", "last"]
    assert effects(work) == Counter(first=2, crashy=1, last=1)
    assert "first ran 10" in outputs(work / "out.ipynb")[2]
    assert json.loads(runs_json(work)["p"]["parameters"]) == {"n": 5}


def test_a_derived_run_id_is_stable_and_printed(work):
    (work / "crashed.once").touch()
    ids = []
    for params in (["-p", "n", "3"], ["-p", "n", "3"], ["-p", "n", "4"]):
        out = nbdurable("run", "crashy.ipynb", *params, "--json", cwd=work)
        assert out.returncode == 0, out.stderr
        ids.append(json.loads(out.stdout)["run"])
        assert (work / "crashy.out.ipynb").exists()  # the default output
    assert ids[0] == ids[1] != ids[2] and ids[0].startswith("crashy-")
    assert effects(work)["first"] == 2  # the second invocation replayed
    printed = nbdurable("run", "crashy.ipynb", "-p", "n", "3", cwd=work)
    assert f"run '{ids[0]}' completed" in printed.stdout


# -- statuses, concurrency ----------------------------------------------------------------------

def test_a_failing_cell_names_the_cell_and_the_error(work):
    write_notebook(work / "fails.ipynb", [
        "%load_ext nbdurable", "%%durable ok\n" + effect("ok"),
        "%%durable boom\nraise ValueError('bad input row 7')", "print('never')"])
    out = nbdurable("run", "fails.ipynb", "out.ipynb", "--run-id", "f", cwd=work)
    assert out.returncode == 1
    line = out.stderr.strip().splitlines()[-1]
    assert "cell 3 (boom) raised ValueError: bad input row 7" in line, out.stderr
    row = runs_json(work)["f"]
    assert (row["status"], row["steps_completed"], row["steps_failed"]) == ("failed", 1, 1)


def test_a_second_invocation_of_a_running_run_is_refused(work):
    write_notebook(work / "slow.ipynb", [
        "%load_ext nbdurable",
        "%%durable slow\nimport pathlib, time\npathlib.Path('started').touch()\n"
        "while not pathlib.Path('go').exists():\n    time.sleep(0.05)"])
    cmd = [sys.executable, "-m", "nbdurable.cli", "run", "slow.ipynb", "out.ipynb",
           "--run-id", "busy"]
    holder = subprocess.Popen(cmd, cwd=work, env=clean_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for_file(work / "started", timeout=TIMEOUT)
        assert runs_json(work)["busy"]["status"] == "running"
        second = nbdurable("run", "slow.ipynb", "other.ipynb", "--run-id", "busy", cwd=work)
        assert second.returncode == 2
        assert f"being executed by process {holder.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        assert not (work / "other.ipynb").exists()
    finally:
        (work / "go").touch()
        holder.communicate(timeout=TIMEOUT)
    assert holder.returncode == 0
    assert runs_json(work)["busy"]["status"] == "completed"


# -- log and reset ------------------------------------------------------------------------------

def test_log_and_reset(work):
    write_notebook(work / "steps.ipynb", [
        "%load_ext nbdurable\nimport nbdurable",
        "%%durable fetch\n" + effect("fetch") + "rows = [1, 2, 3]",
        "%%durable approve\ndecision = nbdurable.wait_any(nbdurable.Event('ok'), "
        "nbdurable.Sleep(0.2))\nprint('decision', decision.index)",
        "%%durable send\n" + effect("send")
        + "nbdurable.once('mail', lambda: open('effects.log', 'a').write('mail\\n'))",
    ])
    run = ("run", "steps.ipynb", "out.ipynb", "--run-id", "L")
    assert nbdurable(*run, cwd=work).returncode == 0
    log = json.loads(nbdurable("log", "L", "--json", cwd=work).stdout)
    assert [s["step"] for s in log["steps"]] == ["fetch", "approve", "send"]
    assert all(s["status"] == "completed" and s["last"] == "executed" for s in log["steps"])
    wait = log["steps"][1]["waits"][0]
    assert wait["waiting_for"] == "event `ok` or sleep 0.2 s"
    assert wait["outcome"] == "sleep 0.2 s fired"
    text = nbdurable("log", "L", cwd=work).stdout
    assert "approve: completed, 1 attempt(s)" in text and "sleep 0.2 s fired" in text

    reset = nbdurable("reset", "L", "--from", "approve", "--json", cwd=work)
    assert json.loads(reset.stdout) == {"run": "L", "reset": ["approve", "send"]}
    pending = json.loads(nbdurable("log", "L", "--json", cwd=work).stdout)["steps"]
    assert [s["status"] for s in pending] == ["completed", "reset", "reset"]
    assert nbdurable(*run, cwd=work).returncode == 0
    assert effects(work) == Counter(fetch=1, send=2, mail=1)  # once kept
    steps = {s["step"]: s for s in json.loads(nbdurable("log", "L", "--json",
                                                        cwd=work).stdout)["steps"]}
    assert steps["fetch"]["last"] == "replayed" and steps["send"]["attempts"] == 2
    assert len(steps["approve"]["waits"]) == 2  # waited anew

    assert nbdurable("reset", "L", "--include-once", cwd=work).returncode == 0
    assert nbdurable(*run, cwd=work).returncode == 0
    assert effects(work) == Counter(fetch=2, send=3, mail=2)


# -- bad input ----------------------------------------------------------------------------------

def _foreign_log(work: Path) -> Path:
    import duckdb

    path = work / "foreign.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t AS SELECT 1 AS x")
    con.close()
    return path


def _newer_log(work: Path) -> Path:
    import duckdb

    from nbdurable.store import schema
    from nbdurable.store.logdb import open_log

    path = work / "newer.duckdb"
    log = open_log(path)
    with log.lease():
        pass
    log.close()
    con = duckdb.connect(str(path))
    con.execute("UPDATE nbdurable_meta SET value = ? WHERE key = 'schema_version'",
                [str(schema.SCHEMA_VERSION + 1)])
    con.close()
    return path


@pytest.fixture(scope="module")
def ran_once(tmp_path_factory) -> Path:
    """A directory with user files and a log holding run r0 (one real run, copied per case)."""
    work = tmp_path_factory.mktemp("ran-once")
    write_notebook(work / "crashy.ipynb", CRASHY)
    (work / "notes.txt").write_text("my notes\n")
    (work / "crashed.once").touch()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    nbformat.write(nb, work / "nokernel.ipynb")  # no kernelspec
    assert nbdurable("run", "crashy.ipynb", "first.ipynb", "--run-id", "r0",
                     cwd=work).returncode == 0
    return work


@pytest.mark.parametrize("args, message", [
    (["run", "missing.ipynb"], "notebook missing.ipynb not found"),
    (["run", "notes.txt"], "is not a readable notebook"),
    (["run", "crashy.ipynb", "crashy.ipynb"], "is the notebook itself"),
    (["run", "crashy.ipynb", "notes.txt"], "is not the output of an earlier run"),
    (["run", "crashy.ipynb", "--cwd", "nowhere"], "is not a directory"),
    (["run", "crashy.ipynb", "--kernel", "no-such-kernel"], "no kernel named"),
    (["run", "crashy.ipynb", "--run-id", "a", "-p", "run_id", "b"], "disagree"),
    (["run", "crashy.ipynb", "--log", "{foreign}"], "not an nbdurable log"),
    (["run", "crashy.ipynb", "--log", "{newer}"], "upgrade nbdurable"),
    (["runs", "--log", "{foreign}"], "not an nbdurable log"),
    (["log", "nope"], "run 'nope' is not in the log"),
    (["reset", "nope"], "run 'nope' is not in the log"),
    (["reset", "r0", "--from", "nope"], "step 'nope' is not in run 'r0'"),
    (["event", "list", "nope"], "run 'nope' is not in the log"),
    (["event", "push", "r0", "k", "{not json"], "not valid JSON"),
    (["run", "nokernel.ipynb"], "names no kernel"),
    (["run", "crashy.ipynb", "-p", "a-b", "1"], "is not a Python name"),
    (["run", "crashy.ipynb", "same.duckdb", "--log", "same.duckdb"], "is the log"),
    (["run", "crashy.ipynb", "--log", "notes.txt"], "not a DuckDB database"),
    (["runs", "--log", "typo.duckdb"], "there is no log at"),
    (["log", "r0", "--log", "sub/typo.duckdb"], "there is no log at"),
])
def test_bad_input_is_one_line_and_changes_nothing(ran_once, tmp_path, args, message):
    work = tmp_path / "work"
    shutil.copytree(ran_once, work)
    files = {"{foreign}": _foreign_log(work), "{newer}": _newer_log(work)}
    args = [str(files.get(a, a)) for a in args]
    before = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    out = nbdurable(*args, cwd=work)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    after = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    changed = [p for p in before if after.get(p) != before[p]]
    ours = (".nbdurable", ".lock", ".wait")  # the default log; lock files beside DuckDB files
    assert [p for p in changed if not any(o in str(p) for o in ours)] == []  # user files
    assert not (work / "crashy.out.ipynb").exists()
    created = {p for p in work.rglob("*") if p.is_file()} - set(before)
    assert [p for p in created if not any(o in str(p) for o in ours)] == []  # nothing else


@pytest.mark.parametrize("args", [["run"], ["run", "x.ipynb", "--max-restarts", "-1"],
                                  ["run", "x.ipynb", "-p", "n"], ["reset"], ["frobnicate"]])
def test_malformed_commands_exit_2_without_traceback(work, args):
    out = nbdurable(*args, cwd=work)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "usage:" in out.stderr


def test_a_crash_after_a_reset_never_reuses_calls_from_before_it(tmp_path):
    """After `reset`, the step's next attempt runs its @step calls anew; if that attempt
    dies, the one after reuses *its* calls, never those recorded before the reset."""
    from kernels import Kernel, count

    cell = ("%%durable s\nimport os, signal, pathlib, nbdurable\n"
            "@nbdurable.step\ndef f(x):\n    open('f.log', 'a').write('f\\n'); return x\n"
            "@nbdurable.step\ndef g(x):\n    open('g.log', 'a').write('g\\n'); return x\n"
            "a = f(1)\n"
            "if pathlib.Path('crash-now').exists():\n"
            "    pathlib.Path('crash-now').unlink(); os.kill(os.getpid(), signal.SIGKILL)\n"
            "b = g(2)")
    with Kernel(tmp_path) as k:
        k.execute("%load_ext nbdurable")
        assert k.execute(cell).status == "ok"
    assert (count(tmp_path / "f.log"), count(tmp_path / "g.log")) == (1, 1)
    out = nbdurable("reset", "test-run", "--log", tmp_path / "log.duckdb", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (tmp_path / "crash-now").touch()
    with Kernel(tmp_path) as k:
        k.execute("%load_ext nbdurable")
        k.execute_until_death(cell)
    assert (count(tmp_path / "f.log"), count(tmp_path / "g.log")) == (2, 1)  # f ran anew
    with Kernel(tmp_path) as k:
        k.execute("%load_ext nbdurable")
        assert k.execute(cell).status == "ok"
    # f reused from the attempt after the reset; g ran: its record predates the reset
    assert (count(tmp_path / "f.log"), count(tmp_path / "g.log")) == (2, 2)


def test_a_notebook_that_checkpoints_nothing_gets_a_note(work):
    write_notebook(work / "plain.ipynb", ["x = 1", "print(x)"])
    write_notebook(work / "noload.ipynb", ["import nbdurable", "%%durable s\nx = 1"])
    plain = nbdurable("run", "plain.ipynb", cwd=work)
    assert plain.returncode == 0
    assert "nbdurable: note: plain.ipynb has no %%durable cell" in plain.stderr
    noload = nbdurable("run", "noload.ipynb", cwd=work)
    assert noload.returncode == 1  # the cell magic does not exist without the extension
    assert "no `%load_ext nbdurable` before them" in noload.stderr
    fine = nbdurable("run", "crashy.ipynb", "--max-restarts", "1", cwd=work)
    assert fine.returncode == 0 and "note:" not in fine.stderr


def test_status_of_runs_without_a_driver(tmp_path):
    """An interactive kernel's run: running while a cell executes, crashed once its kernel
    died in a cell, completed after a fresh kernel finished that cell."""
    from kernels import Kernel

    cell = ("%%durable slow\nimport pathlib, time\npathlib.Path('started').touch()\n"
            "while not pathlib.Path('go').exists():\n    time.sleep(0.05)")
    log = tmp_path / "log.duckdb"
    with Kernel(tmp_path) as k:
        k.execute("%load_ext nbdurable")
        k.send(cell)
        wait_for_file(tmp_path / "started")
        assert runs_json(tmp_path, "--log", log)["test-run"]["status"] == "running"
        k.sigkill()
    assert runs_json(tmp_path, "--log", log)["test-run"]["status"] == "crashed"
    (tmp_path / "go").touch()
    with Kernel(tmp_path) as k:
        k.execute("%load_ext nbdurable")
        assert k.execute(cell).status == "ok"
    row = runs_json(tmp_path, "--log", log)["test-run"]
    assert (row["status"], row["steps_completed"], row["attempts"]) == ("completed", 1, 2)


def test_a_reused_pid_does_not_pass_for_the_kernel_that_died(tmp_path):
    """A kernel dies in a cell; another process later gets its PID (a restarted container often
    hands the old PID out again). The run is still crashed, and a ``once`` it left in flight is
    in doubt, not "running in process N": the start time recorded with the PID tells them apart."""
    import subprocess

    from kernels import Kernel

    from nbdurable.store import journal
    from nbdurable.store.logdb import open_log

    cell = ("%%durable slow\nimport nbdurable, pathlib, time\n"
            "def hang():\n    pathlib.Path('started').touch()\n    time.sleep(600)\n"
            "nbdurable.once('charge', hang)")
    log = tmp_path / "log.duckdb"
    with Kernel(tmp_path) as k:
        k.execute("%load_ext nbdurable")
        k.send(cell)
        wait_for_file(tmp_path / "started")
        k.sigkill()
    stranger = subprocess.Popen(["sleep", "600"])
    try:
        db = open_log(log)
        with db.transaction() as con:  # the dead kernel's rows into the log, its PID reused
            journal.gather(con, db.path)
            con.execute("UPDATE events SET body = json_merge_patch(body, ?) "
                        "WHERE kind IN ('attempt_started', 'once_started')",
                        [json.dumps({"pid": stranger.pid})])
        db.close()
        assert runs_json(tmp_path, "--log", log)["test-run"]["status"] == "crashed"
        with Kernel(tmp_path) as k:
            k.execute("%load_ext nbdurable")
            again = k.execute("import nbdurable\nnbdurable.once('charge', lambda: 1)")
        assert again.ename == "OnceInDoubtError", again.evalue
    finally:
        stranger.kill()
        stranger.wait()


def test_a_set_from_a_plain_cell_does_not_rerun_its_readers(tmp_path):
    """`nbdurable run` kernels use one hash seed, so a set of strings built in a plain cell
    fingerprints the same in the next kernel and the durable cell reading it replays."""
    write_notebook(tmp_path / "sets.ipynb", [
        "%load_ext nbdurable",
        "tags = {'alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta', 'theta'}",
        "%%durable count\n" + effect("count") + "n = len(tags)"])
    for _ in range(3):
        out = nbdurable("run", "sets.ipynb", "--run-id", "s", "--json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["replayed"] == ["count"]
    assert effects(tmp_path) == Counter(count=1)


def test_odd_but_legal_notebooks(work):
    """sys.exit(0) ends a run as completed (as papermill says); %%time above %%durable and a
    quoted step name are durable steps; -p run_id with digits; nan parameters in --json."""
    write_notebook(work / "odd.ipynb", [
        "%load_ext nbdurable",
        ("x = 1.0\nrun_id = None", ["parameters"]),
        "%%time\n%%durable timed\n" + effect("timed") + "y = 1",
        '%%durable "two words"\n' + effect("quoted") + "z = 2",
        "import sys\nsys.exit(0)",
        "print('not reached')"])
    for _ in range(2):
        out = nbdurable("run", "odd.ipynb", "-p", "run_id", "20240101", "-p", "x", "nan",
                        "--json", cwd=work)
        assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["run"], result["status"]) == ("20240101", "completed")
    assert result["replayed"] == ["timed", "two words"] and result["notes"] == []
    assert effects(work) == Counter(timed=1, quoted=1)
    log = nbdurable("log", "20240101", "--json", cwd=work)
    assert json.loads(log.stdout)["parameters"] == {"run_id": 20240101, "x": "nan"}


def test_a_notebook_may_run_another_notebook(work):
    """nbdurable.run() inside a driven kernel starts its own run (it does not inherit the
    parent's NBDURABLE_RUN, which would make it wait for itself)."""
    write_notebook(work / "child.ipynb", ["%load_ext nbdurable", "%%durable c\n" + effect("child")])
    write_notebook(work / "parent.ipynb", [
        "%load_ext nbdurable\nimport nbdurable",
        "%%durable spawn\nr = nbdurable.run('child.ipynb', 'child.out.ipynb')\n"
        "print(r.status, r.run)"])
    out = nbdurable("run", "parent.ipynb", "--run-id", "P", cwd=work)
    assert out.returncode == 0, out.stderr
    text = "".join(outputs(work / "parent.out.ipynb"))
    assert "completed child-" in text
    assert effects(work) == Counter(child=1)


def test_run_uses_the_log_that_configure_set(work):
    write_notebook(work / "nb.ipynb", ["%load_ext nbdurable", "%%durable c\n" + effect("c")])
    script = ("import nbdurable\nnbdurable.configure(log='custom/log.duckdb')\n"
              "r = nbdurable.run('nb.ipynb', 'out.ipynb', run_id='c')\nprint(r.status)")
    out = subprocess.run([sys.executable, "-c", script], cwd=work, env=clean_env(),
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.stdout == "completed\n", out.stderr
    assert not (work / ".nbdurable").exists()
    runs = nbdurable("runs", "--json", "--log", "custom/log.duckdb", cwd=work)
    assert [(r["run"], r["status"]) for r in json.loads(runs.stdout)] == [("c", "completed")]


def test_papermill_engine_with_cwd_finds_the_same_run(work):
    """`papermill --engine nbdurable NB OUT --cwd DIR` derives the run id from NB's real path
    (papermill calls the engine after changing to DIR), so it resumes `nbdurable run`'s run."""
    (work / "sub").mkdir()
    (work / "sub" / "crashed.once").touch()
    first = nbdurable("run", "crashy.ipynb", "a.ipynb", "--cwd", "sub", "--json", cwd=work)
    assert first.returncode == 0, first.stderr
    run = json.loads(first.stdout)["run"]
    again = papermill("--engine", "nbdurable", "crashy.ipynb", "b.ipynb", "--cwd", "sub",
                      cwd=work, env=clean_env(PWD=str(work)))
    assert again.returncode == 0, again.stderr[-2000:]
    assert effects(work / "sub") == Counter(first=1, crashy=1, last=1)  # all replayed
    assert list(runs_json(work / "sub")) == [run]
