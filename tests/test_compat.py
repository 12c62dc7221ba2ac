"""Logs written by earlier releases open and replay unchanged.

``tests/data/log-0.1/`` was written by nbdurable 0.1 (``tests/data/make_log_0_1.py``): five
durable cells, an array kept in a blob file, a ``@step`` call, a ``once`` key, a wait released
by an event. Run again with today's code it must replay every cell (no side effect again) with
the same values, and every reading command must understand it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

DATA = Path(__file__).parent / "data"
SECRET = "nbdurable-test-fixture-secret-0.1"  # the fixture's signing secret (make_log_0_1.py)


@pytest.fixture
def release_0_1(tmp_path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(DATA / "log-0.1", work)
    return work


def cli(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "NBDURABLE_SECRET": SECRET, "HOME": str(work)}
    return subprocess.run([sys.executable, "-m", "nbdurable.cli", *args, "--log", "log.duckdb"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)


def test_a_0_1_log_replays_every_cell_with_its_values(release_0_1):
    out = cli(release_0_1, "run", "fixture.ipynb", "out.ipynb", "--run-id", "fixture")
    assert out.returncode == 0, out.stderr
    assert "5 durable cell(s) replayed, 0 executed" in out.stdout, out.stdout
    assert not (release_0_1 / "effects.log").exists()  # no cell body ran again
    final = nbformat.read(release_0_1 / "out.ipynb", as_version=4).cells[-1]
    printed = "".join(o.get("text", "") for o in final.outputs)
    assert "fixture 9 sent-42 ann 199990000" in printed


def test_a_0_1_log_reads_in_every_command(release_0_1):
    runs = json.loads(cli(release_0_1, "runs", "--json").stdout)
    assert [(r["run"], r["status"]) for r in runs] == [("fixture", "completed")]
    log = json.loads(cli(release_0_1, "log", "fixture", "--json").stdout)
    steps = {s["step"]: s for s in log["steps"]}
    assert list(steps) == ["load", "call", "notify", "approve", "final"]
    assert all(s["status"] == "completed" for s in steps.values())
    assert [w["status"] for w in steps["approve"]["waits"]] == ["completed"]
    events = json.loads(cli(release_0_1, "event", "list", "fixture", "--json").stdout)
    assert [(e["id"], e["status"]) for e in events] == [("go-1", "consumed")]


def test_the_kinds_and_statuses_0_1_stored_are_those_of_the_enums(release_0_1):
    """Event kinds and statuses are enums in the code and the same text in the file."""
    import duckdb

    from nbdurable.store.schema import Kind, Status

    con = duckdb.connect(str(release_0_1 / "log.duckdb"), read_only=True)
    try:
        kinds = {k for (k,) in con.execute("SELECT DISTINCT kind FROM events").fetchall()}
        statuses = {s for (s,) in con.execute(
            "SELECT DISTINCT body ->> 'status' FROM events WHERE body ->> 'status' <> ''"
            ).fetchall() if s is not None}
    finally:
        con.close()
    assert len(kinds) >= 8 and kinds <= set(Kind), kinds - set(Kind)
    assert statuses and statuses <= set(Status), statuses - set(Status)
