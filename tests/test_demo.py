"""The README's demo, end to end: a real notebook run by nbclient, killed, resumed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
from kernels import kernel_env, notebook, run_notebook

ROOT = Path(__file__).resolve().parent.parent


def test_nbdurable_demo_kills_resumes_and_reports(tmp_path):
    env = kernel_env(tmp_path)
    del env["NBDURABLE_LOG"], env["NBDURABLE_RUN"]  # the demo uses the default log
    out = subprocess.run([sys.executable, "-m", "nbdurable.cli", "demo",
                          str(ROOT / "notebooks" / "01-quickstart.ipynb"),
                          "--dir", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert ("1st run: kernel SIGKILLed during `summarize`, while its LLM call #3 was running "
            "(2 finished)") in text
    assert "fetch      replayed" in text
    assert "summarize  executed  the previous attempt did not finish (the kernel died)" in text
    effects = (tmp_path / "demo" / "side_effects.log").read_text().split()
    assert effects.count("fetch") == 1 and effects.count("email") == 1
    # 5 summaries are needed; at most the one in flight at the kill ran twice
    assert 5 <= effects.count("summarize") <= 6
    assert (tmp_path / "demo" / ".nbdurable" / "log.duckdb").is_file()
    resumed = nbformat.read(tmp_path / "demo" / "run2-resumed.ipynb", as_version=4)
    table = [c for c in resumed.cells if c.source.startswith("%%durable summarize")][0]
    assert any("execute_result" == o["output_type"] for o in table.outputs)


def test_run_all_with_nbclient_after_a_kill(tmp_path):
    marker, counter = tmp_path / "killed", tmp_path / "count"
    nb = notebook(
        "%load_ext nbdurable",
        f"%%durable a\nopen({str(counter)!r}, 'a').write('a\\n')\nx = 1",
        "%%durable b\nimport os, signal, pathlib\n"
        f"if not pathlib.Path({str(marker)!r}).exists():\n"
        f"    pathlib.Path({str(marker)!r}).touch(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "y = x + 1\ny")
    try:
        run_notebook(nb, tmp_path)
    except Exception as exc:  # nbclient's DeadKernelError
        assert "DeadKernel" in type(exc).__name__
    else:
        raise AssertionError("the kernel should have died")
    done = run_notebook(notebook(*[c.source for c in nb.cells]), tmp_path)
    a_outputs = done.cells[1].outputs
    assert a_outputs[0]["metadata"]["nbdurable"]["kind"] == "replayed"
    assert done.cells[2].outputs[-1]["data"]["text/plain"] == "2"
    assert counter.read_text() == "a\n"
    assert json.loads(json.dumps(done.cells[2].outputs[0]["metadata"]))["nbdurable"]["kind"] == "executing"


def test_nbdurable_demo_json_and_log(tmp_path):
    env = kernel_env(tmp_path)
    del env["NBDURABLE_LOG"], env["NBDURABLE_RUN"]
    log = tmp_path / "elsewhere" / "demo.duckdb"
    log.parent.mkdir()
    out = subprocess.run([sys.executable, "-m", "nbdurable.cli", "demo", "--json", "--log",
                          str(log), "--dir", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)  # nothing but the JSON on stdout
    assert report["killed"] and report["completed"]
    assert report["total_effects"]["fetch"] == 1 and report["total_effects"]["email"] == 1
    assert log.is_file() and not (tmp_path / "demo" / ".nbdurable" / "log.duckdb").exists()
    runs = subprocess.run([sys.executable, "-m", "nbdurable.cli", "runs", "--json", "--log",
                           str(log)], capture_output=True, text=True, timeout=120, env=env)
    assert [r["run"] for r in json.loads(runs.stdout)] == [report["run"]]
