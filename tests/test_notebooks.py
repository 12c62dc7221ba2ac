"""The example notebooks run headless, as people would run them (nbclient, real kernels)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import nbformat
from kernels import kernel_env, run_notebook

import nbdurable
from nbdurable.errors import UnknownRunError

ROOT = Path(__file__).resolve().parent.parent


def _push_when_possible(key, payload, log, deadline):
    while True:
        try:
            return nbdurable.push_event(key, payload, run="approval", log=log)
        except UnknownRunError:  # the notebook has not reached its first durable cell yet
            assert time.monotonic() < deadline
            time.sleep(0.05)


def _consumed(log) -> int:
    frame = nbdurable.list_events("approval", log=log)
    return int((frame["status"] == "consumed").sum())


def test_approval_notebook_waits_for_people_then_replays(tmp_path):
    log = tmp_path / "log.duckdb"
    env = kernel_env(tmp_path, NBDURABLE_RUN="approval")
    nb = nbformat.read(ROOT / "notebooks" / "02-approval.ipynb", as_version=4)
    errors = []

    def run():
        try:
            run_notebook(nb, tmp_path, env)
        except Exception as exc:  # reported below
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 120
    _push_when_possible("reject", "more numbers", log, deadline)
    while _consumed(log) < 1:  # the first draft was rejected
        assert time.monotonic() < deadline
        time.sleep(0.05)
    nbdurable.push_event("approve", run="approval", log=log)
    runner.join(timeout=120)
    assert not runner.is_alive() and not errors, errors
    review = next(c for c in nb.cells if c.source.startswith("%%durable review"))
    text = "".join(o.get("text", "") for o in review.outputs if o["output_type"] == "stream")
    assert "rejected: more numbers" in text and "revised after 'more numbers'" in text
    result = [o for o in review.outputs if o["output_type"] == "execute_result"]
    assert result[0]["data"]["text/plain"] == "'approved'"
    publish = next(c for c in nb.cells if c.source.startswith("%%durable publish"))
    assert "published" in publish.outputs[-1]["text"]

    # Run All again in a fresh kernel: everything replays, nothing waits
    again = nbformat.read(ROOT / "notebooks" / "02-approval.ipynb", as_version=4)
    t = time.monotonic()
    run_notebook(again, tmp_path, env)
    assert time.monotonic() - t < 60
    review = next(c for c in again.cells if c.source.startswith("%%durable review"))
    assert review.outputs[0]["metadata"]["nbdurable"]["kind"] == "replayed"


def test_batch_notebook_resumes_after_its_kernel_dies(tmp_path):
    """notebooks/03-batch.ipynb as its README command runs it, with crash_once: the first
    invocation dies in `summarise`, the same command again finishes the run."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NBDURABLE_", "PYTEST_", "JPY_"))}
    cmd = [sys.executable, "-m", "nbdurable.cli", "run", str(ROOT / "notebooks" / "03-batch.ipynb"),
           "report.ipynb", "--run-id", "nightly", "-p", "regions", "eu,us,asia",
           "-p", "crash_once", "True", "--json"]
    results = [subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300) for _ in range(2)]
    assert [r.returncode for r in results] == [3, 0], results[1].stderr
    first, second = (json.loads(r.stdout) for r in results)
    assert first["status"] == "crashed" and first["error"]["step"] == "summarise"
    assert first["error"]["position"] == 7  # as the author counts, injected cell not counted
    assert "kernel died in cell 7 (summarise)" in results[0].stderr
    assert second["replayed"] == ["fetch_all"] and second["executed"] == ["summarise", "publish"]
    report = nbformat.read(tmp_path / "report.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in report.cells for o in c.get("outputs", []))
    assert "fetched 9 rows for eu,us,asia" in text
    assert "report for 2026-11-25 published: 1053 orders across 3 regions" in text


def test_fanout_notebook_resumes_a_killed_map(tmp_path):
    """notebooks/04-fanout.ipynb: the kernel is SIGKILLed while its map runs; Run All in a new
    kernel finishes the map without calling again the LLM for the documents already done."""
    import os

    from kernels import Kernel, count, wait_for_file

    nb = nbformat.read(ROOT / "notebooks" / "04-fanout.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    calls = tmp_path / "llm_calls.log"
    with Kernel(tmp_path) as k:
        for source in code[:2]:
            assert k.execute(source).status == "ok"
        k.send(code[2])  # the map
        wait_for_file(calls)
        deadline = time.monotonic() + 60
        while count(calls) < 12:
            assert time.monotonic() < deadline, "the map made no progress"
            time.sleep(0.01)
        k.sigkill()
    before = count(calls)
    assert before < 40
    done = run_notebook(nb, tmp_path)
    text = ["".join(o.get("text", "") for o in c.get("outputs", [])) for c in done.cells
            if c.cell_type == "code"]
    assert "40 summaries; summary of document-00" in text[2]
    assert "10 summaries on Dask" in text[5]
    reruns = count(calls) - 40 - 10
    assert 0 <= reruns <= 2 * (os.cpu_count() or 2), (before, count(calls))
    assert f"{40 + reruns} LLM calls for 40 documents" in text[3]
