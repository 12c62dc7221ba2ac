"""Make ``tests/data/log-0.1/``: a log written by nbdurable 0.1 (the release before the store
redesign), which every later version must open and replay unchanged (``tests/test_compat.py``).

Run it with that release installed, from the repository's root:
``python tests/data/make_log_0_1.py``. It runs ``fixture.ipynb`` once with ``nbdurable run``
(durable cells with an array kept in a blob file, a ``@step`` call, a ``once`` key, a wait
released by an event pushed from the CLI) under a fixed signing secret, then keeps the log and
its blobs; caches and empty folders are left out.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
TARGET = HERE / "log-0.1"
SECRET = "nbdurable-test-fixture-secret-0.1"  # only for this fixture: a test must sign alike
RUN = "fixture"

CELLS = [
    "%load_ext nbdurable",
    "%%durable load\nimport numpy as np\nopen('effects.log', 'a').write('load\\n')\n"
    "data = np.arange(20_000, dtype='int64')\nconfig = {'name': 'fixture', 'n': 3}",
    "%%durable call\nimport nbdurable\nopen('effects.log', 'a').write('call\\n')\n\n"
    "@nbdurable.step\ndef square(x):\n    open('effects.log', 'a').write('square\\n')\n"
    "    return x * x\n\ntotal = square(int(data[:3].sum()))\n"
    "token = nbdurable.once('send-email', lambda: 'sent-42')",
    "%%durable notify\nimport nbdurable\nnbdurable.push_event('go', {'by': 'ann'}, id='go-1')",
    "%%durable approve\nimport nbdurable\nopen('effects.log', 'a').write('approve\\n')\n"
    "answer = nbdurable.wait_for_event('go', timeout=60)",
    "%%durable final\nopen('effects.log', 'a').write('final\\n')\n"
    "summary = f\"{config['name']} {total} {token} {answer['by']} {int(data.sum())}\"\n"
    "print(summary)",
]


def notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    return nb


def main() -> None:
    env = {"PATH": "/usr/bin:/bin", "NBDURABLE_SECRET": SECRET, "HOME": str(Path.home())}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        nbformat.write(notebook(), work / "fixture.ipynb")
        subprocess.run([sys.executable, "-m", "nbdurable.cli", "run", "fixture.ipynb",
                        "out.ipynb", "--run-id", RUN, "--log", "log.duckdb"], cwd=work,
                       env=env, check=True, timeout=300)
        assert (work / "effects.log").read_text().split() == [
            "load", "call", "square", "approve", "final"]
        shutil.rmtree(TARGET, ignore_errors=True)
        TARGET.mkdir()
        shutil.copy(work / "fixture.ipynb", TARGET)
        shutil.copy(work / "log.duckdb", TARGET)
        shutil.copytree(work / "log.duckdb.blobs", TARGET / "log.duckdb.blobs")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
