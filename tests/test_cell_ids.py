"""Which cell is which: the front end's cell ids (``metadata.cellId``, as JupyterLab sends it),
recorded with each attempt; a copied ``%%durable NAME`` cell is refused instead of silently
sharing the step; ``%%durable`` without a NAME is named after its cell; batch runs send the
notebook's ids. Real kernels, real logs, real papermill runs."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
from kernels import Kernel, count, kernel_env
from test_batch import clean_env, effect, effects, nbdurable as run_cli, outputs, write_notebook

import nbdurable

LOAD = "%load_ext nbdurable"
X, Y = "5c1f0a2e-0000-4000-8000-00000000000a", "5c1f0a2e-0000-4000-8000-00000000000b"


def counted(name: str, path, rest: str = "", header: str | None = None) -> str:
    return (f"%%durable {name if header is None else header}\n"
            f"open({str(path)!r}, 'a').write('x\\n')\n{rest}")


def attempts(log) -> list[tuple[str, str | None]]:
    """(step, cell id) of each attempt, in order."""
    rows = nbdurable.sql("SELECT step, json_extract_string(body, '$.cell_id') AS cell FROM "
                         "events WHERE kind = 'attempt_started' ORDER BY rowid", log=log)
    return [(r["step"], r["cell"]) for r in rows.to_dict("records")]


def saved_notebook(path, *cells: tuple[str, str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source, id=cell_id) for cell_id, source in cells]
    nbformat.write(nb, path)


def test_a_copied_cell_is_refused_naming_both_and_both_replay_once_renamed(tmp_path):
    ca, cb = tmp_path / "a.count", tmp_path / "b.count"
    original = counted("a", ca, "x = 1")
    copy = counted("a", cb, "y = 2")  # copied, body edited, not renamed
    renamed = counted("b", cb, "y = 2")
    with Kernel(tmp_path, env=kernel_env(tmp_path)) as k:
        k.execute(LOAD)
        assert k.execute(original, cell_id=X).status == "ok"
        refused = k.execute(copy, cell_id=Y)
        assert refused.ename == "StepCollisionError", refused
        assert X in refused.evalue and Y in refused.evalue and "rename" in refused.evalue
        assert "--replace" in refused.evalue and "\n" not in refused.evalue
        assert count(cb) == 0  # nothing executed ...
        assert k.execute(original, cell_id=X).notices()[0]["kind"] == "replayed"  # ... or lost
        assert k.execute(renamed, cell_id=Y).status == "ok"
    with Kernel(tmp_path, env=kernel_env(tmp_path)) as k:  # restart, Run All
        k.execute(LOAD)
        assert k.execute(original, cell_id=X).notices()[0]["kind"] == "replayed"
        assert k.execute(renamed, cell_id=Y).notices()[0]["kind"] == "replayed"
        assert k.execute("print(x, y)").stream() == "1 2\n"
    assert (count(ca), count(cb)) == (1, 1)
    assert attempts(tmp_path / "log.duckdb") == [("a", X), ("b", Y)]


def test_the_saved_notebook_tells_a_copy_from_a_moved_cell_and_replace_takes_over(tmp_path):
    counter = tmp_path / "a.count"
    cell = counted("a", counter, "x = 1")
    env = kernel_env(tmp_path, JPY_SESSION_NAME="work/report.ipynb")  # as Jupyter gives it
    with Kernel(tmp_path, env=env) as k:
        k.execute(LOAD)
        assert k.execute(cell, cell_id=X).status == "ok"
    saved_notebook(tmp_path / "report.ipynb", ("p", LOAD), (X, cell), (Y, cell))
    with Kernel(tmp_path, env=env) as k:  # a new kernel: the copy runs first
        k.execute(LOAD)
        refused = k.execute(cell, cell_id=Y)
        assert refused.ename == "StepCollisionError", refused
        assert "cell 2 of report.ipynb" in refused.evalue, refused.evalue
        replaced = k.execute(counted("a", counter, "x = 1", header="a --replace"), cell_id=Y)
        assert replaced.notices()[0]["kind"] == "replayed"  # the same step, taken over
    saved_notebook(tmp_path / "report.ipynb", ("p", LOAD), (Y, cell))  # X was cut and pasted
    with Kernel(tmp_path, env=env) as k:
        k.execute(LOAD)
        assert k.execute(cell, cell_id=Y).notices()[0]["kind"] == "replayed"
        edited = k.execute(counted("a", counter, "x = 2"), cell_id=Y)
        assert edited.notices()[0]["reason"] == "source edited"
    assert count(counter) == 2
    assert attempts(tmp_path / "log.duckdb") == [("a", X), ("a", Y)]


def test_an_unnamed_durable_cell_is_named_after_its_cell_and_replays(tmp_path):
    counter = tmp_path / "u.count"
    cell = counted("", counter, "z = 3", header="")
    with Kernel(tmp_path, env=kernel_env(tmp_path)) as k:
        k.execute(LOAD)
        first = k.execute(cell, cell_id=X)
        assert first.status == "ok", first
        assert k.execute("print(z)").stream() == "3\n"
        no_id = k.execute(cell)  # a front end that sends no cell id
        assert no_id.ename == "UsageError" and "%%durable NAME" in no_id.evalue, no_id
    with Kernel(tmp_path, env=kernel_env(tmp_path)) as k:
        k.execute(LOAD)
        again = k.execute(cell, cell_id=X)
        assert again.notices()[0]["kind"] == "replayed"
        assert f"cell-{X}" in again.stream() or f"cell-{X}" in json.dumps(again.notices())
    assert count(counter) == 1
    log = subprocess.run([sys.executable, "-m", "nbdurable.cli", "log", "test-run", "--log",
                          str(tmp_path / "log.duckdb")], capture_output=True, text=True,
                         env=clean_env())
    assert f"cell-{X}" in log.stdout, (log.stdout, log.stderr)


def test_a_batch_run_sends_the_notebooks_cell_ids_and_an_unnamed_cell_resumes(tmp_path):
    path = write_notebook(tmp_path / "nb.ipynb", [
        "%load_ext nbdurable",
        "%%durable\n" + effect("unnamed") + "v = 41",
        "import os, pathlib\nif not pathlib.Path('crashed').exists():\n"
        "    pathlib.Path('crashed').touch()\n    os.kill(os.getpid(), 9)",
        "%%durable last\n" + effect("last") + "print('v is', v + 1)"])
    ids = [c.id for c in nbformat.read(path, as_version=4).cells]
    first = run_cli("run", "nb.ipynb", "out.ipynb", "--run-id", "b1", cwd=tmp_path)
    assert first.returncode == 3, (first.stdout, first.stderr)  # the kernel died
    second = run_cli("run", "nb.ipynb", "out.ipynb", "--run-id", "b1", cwd=tmp_path)
    assert second.returncode == 0, (second.stdout, second.stderr)
    assert effects(tmp_path) == {"unnamed": 1, "last": 1}  # the unnamed cell replayed
    assert "v is 42" in outputs(tmp_path / "out.ipynb")[3]
    assert attempts(tmp_path / ".nbdurable" / "log.duckdb") == [
        (f"cell-{ids[1]}", ids[1]), ("last", ids[3])]


def test_a_batch_run_refuses_two_cells_with_one_step_name_before_running(tmp_path):
    write_notebook(tmp_path / "dup.ipynb", ["%load_ext nbdurable", "%%durable a\nx = 1",
                                            "%%durable a\ny = 2"])
    out = run_cli("run", "dup.ipynb", "out.ipynb", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "cells 2 and 3 of dup.ipynb are both step 'a'" in out.stderr
    assert not (tmp_path / "out.ipynb").exists() and not (tmp_path / ".nbdurable").exists()
